"""The job loop: plan what is left, submit it, poll until it ends, ingest, retry what may succeed.

Every step is written to the ledger before the next begins, so a process that dies anywhere can
be replaced by a new one running the same call: it finds the batches in flight and picks up.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from dsbatch._backend import Backend, BatchInfo, is_transient
from dsbatch._errors import BatchAPIError
from dsbatch._ingest import parse_results
from dsbatch._join import final_results
from dsbatch._ledger import BatchRecord, JobLedger, Ledger
from dsbatch._plan import chunk_requests
from dsbatch._poll import PollSchedule
from dsbatch._render import Rendered
from dsbatch._submit import send_batch, submit_batch

__all__ = [
    "DOWNLOAD_ATTEMPTS",
    "MAX_POLL_FAILURES",
    "MISSING_POLLS",
    "JobRun",
    "Outcome",
    "RunOptions",
]

log = logging.getLogger("dsbatch")

DOWNLOAD_ATTEMPTS = 5
# Consecutive failed polls (5xx, 429, no connection) before the job gives up; it can resume.
MAX_POLL_FAILURES = 10
# Consecutive polls answering 404 before a batch counts as deleted and its requests are resent.
MISSING_POLLS = 3
# Errors that mean the request itself must change: sending it again would fail again.
_FINAL_ERRORS = ("invalid_request_error",)


@dataclass
class RunOptions:
    max_attempts: int
    max_batch_requests: int
    max_batch_bytes: int
    schedule: PollSchedule
    progress: bool


@dataclass
class Outcome:
    """Where a job's requests stand: one result per custom_id, and attempts per custom_id."""

    results: pa.Table
    attempts: dict[str, int]


class JobRun:
    """Runs one job to the end. One instance per ``dsbatch.map`` call."""

    def __init__(
        self,
        backend: Backend,
        ledger: Ledger,
        job: JobLedger,
        rendered: Rendered,
        options: RunOptions,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        self.job = job
        self.rendered = rendered
        self.options = options
        self.custom_ids = pa.array(list(rendered.bodies), pa.string())
        self._bar: Any = None
        self._poll_failures = 0
        self._missing: dict[int, int] = {}  # record seq -> consecutive 404s
        self._tally: dict[str, int] = {"succeeded": 0, "errored": 0}

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> Outcome:
        try:
            while True:
                self._finish_in_flight()
                outcome = self.outcome()
                pending = self.pending(outcome)
                self._progress(outcome, len(pending))
                if not pending:
                    return outcome
                # The whole plan first: a request too large fails before any batch is paid.
                plans = list(
                    chunk_requests(
                        pending,
                        self.rendered.bodies,
                        max_requests=self.options.max_batch_requests,
                        max_bytes=self.options.max_batch_bytes,
                        first_row=self.rendered.first_row,
                    )
                )
                for plan in plans:
                    record = submit_batch(
                        self.backend,
                        self.job,
                        plan,
                        self.rendered.bodies,
                        schedule=self.options.schedule,
                    )
                    log.info(
                        "dsbatch: created %s (%d requests)", record.batch_id, record.request_count
                    )
                self.options.schedule.reset()
        finally:
            if self._bar is not None:
                self._bar.close()

    def outcome(self) -> Outcome:
        """Everything known about this job's requests, from the ledger alone."""
        records = [r for r in self.job.batch_records() if r.state == "ingested"]
        results = self.ledger.results_for(
            self.custom_ids, batch_ids=[r.batch_id for r in records if r.batch_id]
        )
        order = {r.batch_id: r.seq for r in records if r.batch_id}
        attempts: Counter[str] = Counter()
        for record in records:
            attempts.update(self.job.batch_custom_ids(record))
        return Outcome(final_results(results, order), dict(attempts))

    def pending(self, outcome: Outcome) -> list[str]:
        """The custom_ids to send: those with no stored result at all (never sent, or their
        results were lost), and failures a retry may fix while attempts remain."""
        results = outcome.results
        final = pc.or_(
            pc.equal(results["type"], "succeeded"),
            pc.is_in(results["error_type"], value_set=pa.array(_FINAL_ERRORS)).fill_null(False),
        )
        done = results.filter(final)["custom_id"]
        retryable = set(results.filter(pc.invert(final))["custom_id"].to_pylist())
        open_ids = pc.filter(
            self.custom_ids, pc.invert(pc.is_in(self.custom_ids, value_set=done))
        ).to_pylist()
        limit = self.options.max_attempts
        return [c for c in open_ids if c not in retryable or outcome.attempts.get(c, 0) < limit]

    # -- batches in flight ------------------------------------------------------------------
    def _finish_in_flight(self) -> None:
        """Bring every batch record to an end: create what was only intended (reconciling
        first), poll what was created, ingest what ended. Returns when none is in flight."""
        while True:
            records = self.job.batch_records()
            for record in records:
                if record.state in ("intent", "submitted"):
                    self._check_key(record)
            intents = [r for r in records if r.state == "intent"]
            for record in intents:
                send_batch(
                    self.backend,
                    self.job,
                    record,
                    self.rendered.bodies,
                    schedule=self.options.schedule,
                    resumed=True,
                )
            waiting = [r for r in records if r.state == "submitted"] + intents
            if not waiting:
                return
            while waiting:
                waiting = [r for r in waiting if not self._settle(r)]
                if waiting:
                    self.options.schedule.wait()

    def _settle(self, record: BatchRecord) -> bool:
        """Look at one batch in flight; True once it no longer is (ingested, lost or found
        to be someone else's)."""
        assert record.batch_id is not None
        try:
            info = self.backend.retrieve(record.batch_id)
        except BatchAPIError as e:
            if e.status_code == 404:
                # Only a batch that stays missing is gone: a passing 404 must not make us pay
                # for its requests twice.
                self._missing[record.seq] = self._missing.get(record.seq, 0) + 1
                if self._missing[record.seq] >= MISSING_POLLS:
                    self._lose(record, "it no longer exists")
                    return True
                log.warning("dsbatch: %s; looking again later", e)
                return False
            self._poll_failures += 1
            if not is_transient(e) or self._poll_failures >= MAX_POLL_FAILURES:
                raise
            log.warning("dsbatch: %s; polling again later", e)
            return False
        self._poll_failures = 0
        self._missing.pop(record.seq, None)
        if not info.ended:
            return False
        self._ingest(record, info)
        return True

    def _lose(self, record: BatchRecord, why: str) -> None:
        log.warning(
            "dsbatch: batch %s (#%d of job %s) cannot be read: %s. Its %d requests will be "
            "sent again.",
            record.batch_id,
            record.seq,
            self.job.fingerprint,
            why,
            record.request_count,
        )
        record.state = "lost"
        self.job.save_batch_record(record)

    def _check_key(self, record: BatchRecord) -> None:
        if record.key_hash and self.backend.key_hash and record.key_hash != self.backend.key_hash:
            raise BatchAPIError(
                f"batch #{record.seq} ({record.batch_id or 'not yet created'}) of job "
                f"{self.job.fingerprint} belongs to another API key (key hash {record.key_hash}, "
                f"this client's is {self.backend.key_hash}); use the key that created it",
                batch_id=record.batch_id,
            )

    def _ingest(self, record: BatchRecord, info: BatchInfo) -> None:
        table = self._download(record, info)
        if table is None:
            return
        self.ledger.write_results(info.id, table)
        record.state = "ingested"
        record.counts = dict(info.counts)
        self.job.save_batch_record(record)
        self.job.discard_download(info.id)
        if self._bar is not None:
            self._tally["succeeded"] += info.counts.get("succeeded", 0)
            self._tally["errored"] += record.request_count - info.counts.get("succeeded", 0)
            self._bar.set_postfix(self._tally, refresh=False)
            self._bar.update(record.request_count)

    def _download(self, record: BatchRecord, info: BatchInfo) -> pa.Table | None:
        """The batch's results, complete; None if the batch turned out not to be ours or its
        results are gone (the record says which, and its requests are planned again)."""
        ours = pa.array(self.job.batch_custom_ids(record), pa.string())
        error: BatchAPIError | None = None
        not_found = 0
        for attempt in range(DOWNLOAD_ATTEMPTS):
            if attempt:
                self.options.schedule.backoff(attempt - 1)
            try:
                data = self.job.store_download(info.id, self.backend.download(info))
                table = parse_results(data, batch_id=info.id)
            except BatchAPIError as e:
                not_found = not_found + 1 if e.status_code == 404 else 0
                if not_found >= MISSING_POLLS:
                    self._lose(record, "its results are no longer available")
                    return None
                if e.status_code not in (None, 404) and not is_transient(e):
                    raise
                error = e
                log.warning("dsbatch: %s; downloading again", e)
                continue
            present = pc.sum(pc.is_in(ours, table["custom_id"])).as_py() or 0
            if present == len(ours):
                return table
            if present == 0 and table.num_rows:
                self._reject(record, info)
                return None
            error = BatchAPIError(
                f"results of batch {info.id} hold {table.num_rows} lines but "
                f"{len(ours) - present} of its {len(ours)} requests are missing: "
                "the download was incomplete",
                batch_id=info.id,
            )
        assert error is not None
        raise error

    def _reject(self, record: BatchRecord, info: BatchInfo) -> None:
        """A reconcile adopted a batch of the right size that holds none of our requests:
        forget it and look again (our own batch, if the create landed, is still out there)."""
        log.warning(
            "dsbatch: batch %s holds none of the requests of batch #%d of job %s: it is "
            "someone else's; looking for ours again",
            info.id,
            record.seq,
            self.job.fingerprint,
        )
        record.rejected.append(info.id)
        record.batch_id = None
        record.created_at = None
        record.state = "intent"
        self.job.save_batch_record(record)
        self.job.discard_download(info.id)

    # -- progress ---------------------------------------------------------------------------
    def _progress(self, outcome: Outcome, n_pending: int) -> None:
        """The bar counts requests ended (a retry counts again), out of what has been or is
        about to be sent; ``errored`` includes failures that will be retried."""
        if not self.options.progress:
            return
        if self._bar is None:
            done = len(self.custom_ids) - n_pending
            types = outcome.results["type"]
            succeeded = pc.sum(pc.equal(types, "succeeded")).as_py() or 0
            self._tally = {"succeeded": succeeded, "errored": done - succeeded}
            self._bar = tqdm(
                total=done,
                initial=done,
                unit="req",
                desc="dsbatch",
                dynamic_ncols=True,
                postfix=self._tally,
            )
        self._bar.total = self._bar.n + n_pending
        self._bar.refresh()
