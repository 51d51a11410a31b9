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

from dsbatch._backend import Backend, BatchInfo
from dsbatch._errors import BatchAPIError
from dsbatch._ingest import parse_results
from dsbatch._join import final_results
from dsbatch._ledger import BatchRecord, JobLedger, Ledger
from dsbatch._plan import chunk_requests
from dsbatch._poll import PollSchedule
from dsbatch._render import Rendered
from dsbatch._submit import send_batch, submit_batch

__all__ = ["DOWNLOAD_ATTEMPTS", "MAX_POLL_FAILURES", "JobRun", "Outcome", "RunOptions"]

log = logging.getLogger("dsbatch")

DOWNLOAD_ATTEMPTS = 3
# Consecutive failed polls (5xx, 429, no connection) before the job gives up; it can resume.
MAX_POLL_FAILURES = 10
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
                for plan in chunk_requests(
                    pending,
                    self.rendered.bodies,
                    max_requests=self.options.max_batch_requests,
                    max_bytes=self.options.max_batch_bytes,
                    first_row=self.rendered.first_row,
                ):
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
        """The custom_ids to send (again): never answered, or failed in a way a retry may fix."""
        results = outcome.results
        done = results.filter(
            pc.or_(
                pc.equal(results["type"], "succeeded"),
                pc.is_in(results["error_type"], value_set=pa.array(_FINAL_ERRORS)).fill_null(False),
            )
        )["custom_id"]
        open_ids = pc.filter(
            self.custom_ids, pc.invert(pc.is_in(self.custom_ids, value_set=done))
        ).to_pylist()
        limit = self.options.max_attempts
        return [c for c in open_ids if outcome.attempts.get(c, 0) < limit]

    # -- batches in flight ------------------------------------------------------------------
    def _finish_in_flight(self) -> None:
        """Create what was only intended, then poll and ingest every batch not yet ingested."""
        for record in self.job.batch_records():
            if record.state == "intent":
                self._check_key(record)
                send_batch(
                    self.backend,
                    self.job,
                    record,
                    self.rendered.bodies,
                    schedule=self.options.schedule,
                    resumed=True,
                )
        waiting = [r for r in self.job.batch_records() if r.state == "submitted"]
        for record in waiting:
            self._check_key(record)
        while waiting:
            still = []
            for record in waiting:
                info = self._retrieve(record)
                if info is not None and info.ended:
                    self._ingest(record, info)
                else:
                    still.append(record)
            waiting = still
            if waiting:
                self.options.schedule.wait()

    def _retrieve(self, record: BatchRecord) -> BatchInfo | None:
        """The batch now, or None after a passing failure (a long wait outlives an outage)."""
        assert record.batch_id is not None
        try:
            info = self.backend.retrieve(record.batch_id)
        except BatchAPIError as e:
            transient = e.status_code is None or e.status_code == 429 or e.status_code >= 500
            self._poll_failures += 1
            if not transient or self._poll_failures >= MAX_POLL_FAILURES:
                raise
            log.warning("dsbatch: %s; polling again later", e)
            return None
        self._poll_failures = 0
        return info

    def _check_key(self, record: BatchRecord) -> None:
        if record.key_hash and self.backend.key_hash and record.key_hash != self.backend.key_hash:
            raise BatchAPIError(
                f"batch #{record.seq} ({record.batch_id or 'not yet created'}) of job "
                f"{self.job.fingerprint} belongs to another API key (key hash {record.key_hash}, "
                f"this client's is {self.backend.key_hash}); use the key that created it",
                batch_id=record.batch_id,
            )

    def _ingest(self, record: BatchRecord, info: BatchInfo) -> None:
        ours = self.job.batch_custom_ids(record)
        table = self._download(info, ours)
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

    def _download(self, info: BatchInfo, ours: list[str]) -> pa.Table:
        error: BatchAPIError | None = None
        for _ in range(DOWNLOAD_ATTEMPTS):
            try:
                data = self.job.store_download(info.id, self.backend.download(info))
                table = parse_results(data, batch_id=info.id)
            except BatchAPIError as e:
                error = e
                log.warning("dsbatch: %s; downloading again", e)
                continue
            missing = pc.invert(pc.is_in(pa.array(ours, pa.string()), table["custom_id"]))
            n_missing = pc.sum(missing).as_py() or 0
            if n_missing == 0:
                return table
            error = BatchAPIError(
                f"results of batch {info.id} hold {table.num_rows} lines but {n_missing} of its "
                f"{len(ours)} requests are missing: the download was incomplete",
                batch_id=info.id,
            )
        assert error is not None
        raise error

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
