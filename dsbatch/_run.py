"""The job loop: one ``step`` looks once at what is in flight, ingests what ended, decides what
to send and submits it, then says where the job stands; ``run`` is steps and waits.

Every change is written to the ledger before the next begins, so a process that dies anywhere
is replaced by a new one running the same call: it finds the batches in flight and picks up.
The batches a job waits for may be another job's (one view of the whole cache): a batch whose
job has no live process is advanced by whichever job needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from dsbatch._backend import Backend, is_transient
from dsbatch._errors import BatchAPIError
from dsbatch._ingest import Fetched, fetch_results, retry_download
from dsbatch._ledger import JobLedger, Ledger
from dsbatch._plan import View, batch_body, chunk_requests, decide, survey
from dsbatch._policy import latest_results
from dsbatch._poll import MISSING_SECONDS, PollSchedule, call_retrying, poll_batch
from dsbatch._progress import ProgressBar
from dsbatch._records import BatchRecord, BatchState
from dsbatch._submit import adopt, reconcile, submit

__all__ = ["JobLoop", "RunOptions", "Standing"]

log = logging.getLogger("dsbatch")


@dataclass(frozen=True)
class RunOptions:
    max_attempts: int
    max_batch_requests: int
    max_batch_bytes: int
    betas: tuple[str, ...]
    resend_canceled: bool
    schedule: PollSchedule
    progress: bool


@dataclass(frozen=True)
class Standing:
    """Where a job stands after a step, in distinct requests."""

    needed: int
    succeeded: int
    waiting: int  # in batches in flight (this job's or another's), or being downloaded again
    sent: int  # just sent in new batches
    batches: int  # batches waited for (one of them may hold requests not known yet)

    @property
    def ended(self) -> int:
        return self.needed - self.waiting - self.sent

    @property
    def done(self) -> bool:
        return self.batches == 0 and self.sent == 0


class JobLoop:
    """Runs one job: ``step()`` once, or ``run()`` to the end."""

    def __init__(
        self,
        backend: Backend,
        job: JobLedger,
        bodies: Mapping[str, bytes],
        options: RunOptions,
        first_row: Mapping[str, tuple[str | None, int]] | None = None,
    ) -> None:
        self.backend = backend
        self.job = job
        self.ledger: Ledger = job.ledger
        self.bodies = bodies
        self.options = options
        self.first_row = first_row
        self.needed = pa.array(list(bodies), pa.string())
        self.clock = options.schedule.clock
        self.retrying = call_retrying(options.schedule, is_transient)
        self.downloading = call_retrying(options.schedule, retry_download)

    def run(self) -> None:
        bar = ProgressBar(self.options.progress, total=len(self.needed))
        try:
            while True:
                standing = self.step()
                bar.show(standing)
                if standing.done:
                    return
                if standing.sent:
                    self.options.schedule.reset()
                self.options.schedule.wait()
        finally:
            bar.close()

    def step(self) -> Standing:
        for record, _ in survey(self.ledger, self.job.fingerprint, self.needed).waiting:
            self._advance(record)
        with self.ledger.locked():
            view = survey(self.ledger, self.job.fingerprint, self.needed)
            pending = decide(
                view,
                self.needed,
                max_attempts=self.options.max_attempts,
                resend_canceled=self.options.resend_canceled,
            )
            # The whole plan first: a request too large fails before any batch is paid.
            plans = list(
                chunk_requests(
                    pending,
                    self.bodies,
                    max_requests=self.options.max_batch_requests,
                    max_bytes=self.options.max_batch_bytes,
                    first_row=self.first_row,
                )
            )
            key = self.backend.key_hash if plans else ""
            intents = [
                self.job.new_record(plan.custom_ids, intent_at=self.clock(), key_hash=key)
                for plan in plans
            ]
        for record in intents:
            self._create(record, resumed=False)
        return self._standing(view, len(pending))

    def results(self) -> pa.Table:
        """Every result of every attempt of the job's requests (no raw lines)."""
        return survey(self.ledger, self.job.fingerprint, self.needed).results

    # -- one batch ------------------------------------------------------------------------------
    def _advance(self, record: BatchRecord) -> None:
        if record.job == self.job.fingerprint:
            self._advance_record(self.job, record)
            return
        owner = self.ledger.job(record.job)
        with owner.taken_over() as ours:
            # A live owner advances its own batches; we only read what it writes.
            if ours:
                self._advance_record(owner, record)

    def _advance_record(self, job: JobLedger, record: BatchRecord) -> None:
        if record.state is BatchState.INTENT:
            self._resolve_intent(job, record)
            return
        batch_id = record.batch_id or ""
        if record.state is BatchState.SUBMITTED and self.ledger.has_results(batch_id):
            # Stored before a crash, not yet recorded.
            table = self.ledger.results_table(batch_id)
            if job.record_ids(record) is None:
                job.restore_ids(record, table["custom_id"].to_pylist())
            self._ingested(job, record, counts=_counts(table))
            return
        info = poll_batch(self.backend, batch_id, self.retrying)
        if info is None:
            self._missing(job, record, "the API does not know it")
            return
        if info.size != record.request_count:
            self._reject(job, record, f"it holds {info.size} requests, not {record.request_count}")
            return
        if not info.ended:
            job.note_missing(record, None)  # found again; its results are not due yet
            return
        expected = job.record_ids(record)
        fetch = fetch_results(self.backend, self.ledger, info, expected, retrying=self.downloading)
        if fetch.kind is Fetched.GONE:
            self._missing(job, record, "its results can no longer be downloaded")
        elif fetch.kind is Fetched.FOREIGN:
            self._reject(job, record, fetch.detail)
        elif fetch.table is not None:
            self.ledger.write_results(info.id, fetch.table)
            if expected is None:
                job.restore_ids(record, fetch.table["custom_id"].to_pylist())
            self._ingested(job, record, counts=info.counts)

    def _ingested(self, job: JobLedger, record: BatchRecord, *, counts: dict[str, int]) -> None:
        if record.state is BatchState.SUBMITTED:
            job.mark_ingested(record, counts)
        else:
            job.note_missing(record, None)
        self.ledger.discard_download(record.batch_id or "")

    def _resolve_intent(self, job: JobLedger, record: BatchRecord) -> None:
        """An intent left by a process that stopped: its batch may exist."""
        ids = job.record_ids(record)
        if job is self.job and ids is not None:
            self._create(record, resumed=True)
            return
        found = reconcile(self.backend, job, record, clock=self.clock, retrying=self.retrying)
        if found is not None:
            adopt(job, record, found)
        else:
            job.mark_unsent(record, "its process stopped before creating it")

    def _create(self, record: BatchRecord, *, resumed: bool) -> None:
        if resumed and record.key_hash and record.key_hash != self.backend.key_hash:
            found = reconcile(self.backend, self.job, record, clock=self.clock)
            if found is None:
                raise BatchAPIError(
                    f"batch {record.name} may have been created with another API key (key hash "
                    f"{record.key_hash}; this client's is {self.backend.key_hash}) and this "
                    "key cannot see it: run the same call with the key that created it"
                )
            adopt(self.job, record, found)
            return
        ids = self.job.record_ids(record) or []
        submit(
            self.backend,
            self.job,
            record,
            batch_body(ids, self.bodies),
            betas=self.options.betas,
            retrying=self.retrying,
            clock=self.clock,
            resumed=resumed,
        )

    def _missing(self, job: JobLedger, record: BatchRecord, why: str) -> None:
        """The batch, or its results, was not found: gone only once missing for a while."""
        now = self.clock()
        since = record.missing_since if record.missing_since is not None else now
        job.note_missing(record, since)
        mine = self.backend.key_hash
        if record.key_hash and mine and record.key_hash != mine and now - since >= MISSING_SECONDS:
            # Not gone: out of this key's sight (another workspace). Never bought again for that.
            raise BatchAPIError(
                f"batch {record.batch_id} (job {record.job}) was created with another API key "
                f"(key hash {record.key_hash}; this client's is {mine}) that this client cannot "
                "read: run the same call with the key that created it",
                batch_id=record.batch_id,
                status_code=404,
            )
        if now - since < MISSING_SECONDS:
            log.warning(
                "dsbatch: batch %s was not found (%s); looking again (it counts as gone once "
                "missing for %.0f minutes)",
                record.batch_id,
                why,
                MISSING_SECONDS / 60,
            )
            return
        log.warning(
            "dsbatch: batch %s (job %s) has been missing for %.0f minutes (%s): its %d requests "
            "will be sent again in a new batch, and paid for again",
            record.batch_id,
            record.job,
            (now - since) / 60,
            why,
            record.request_count,
        )
        job.mark_lost(record, why)

    def _reject(self, job: JobLedger, record: BatchRecord, why: str) -> None:
        """A reconcile adopted a batch that is not ours: give it back and look again."""
        log.warning(
            "dsbatch: batch %s is not batch #%d of job %s (%s): it is someone else's; "
            "looking for ours again",
            record.batch_id,
            record.seq,
            record.job,
            why,
        )
        self.ledger.discard_download(record.batch_id or "")
        job.mark_rejected(record)

    def _standing(self, view: View, sent: int) -> Standing:
        latest = latest_results(view.results)
        succeeded = pc.sum(pc.equal(latest["type"], "succeeded")).as_py() or 0
        return Standing(len(self.needed), succeeded, len(view.waiting_ids), sent, len(view.waiting))


def _counts(table: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(table["type"].combine_chunks())
    return dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )
