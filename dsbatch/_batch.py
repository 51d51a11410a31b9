"""One batch's life after its intent: create it (or find the one a lost answer made), watch it,
read its results whole, and give it back if it is someone else's or up if it is gone for good.

Any call advances any batch it needs, whichever job made it and whatever that job's process is
doing (running, stopped, dead): every move is checked against the record as stored
(``JobLedger.change``), and a move another call made first is simply read at the next step. Only
an intent is held, by a lease (``_lease``): a call takes over another's intent only once that
lease is free, and then looks for its batch before creating anything.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from dsbatch._arrow import whole
from dsbatch._backend import Backend, BatchInfo, is_transient
from dsbatch._clock import Clock
from dsbatch._errors import BatchAPIError, LedgerError
from dsbatch._ingest import fetch_results, retry_download
from dsbatch._lease import LEASE_SECONDS, Holder, holder_gone
from dsbatch._ledger import JobLedger, StaleRecord
from dsbatch._plan import batch_body
from dsbatch._poll import (
    MISSING_SECONDS,
    PollSchedule,
    call_retrying,
    create_retrying,
    first_contact_retrying,
    poll_batch,
)
from dsbatch._records import BatchRecord, BatchState
from dsbatch._recovery import job_records
from dsbatch._submit import adopt, reconcile, same_workspace, submit

__all__ = ["BatchKeeper"]

log = logging.getLogger("dsbatch")


class BatchKeeper:
    """Advances the batches one job waits for, as one call (``holder``) against ``origin``."""

    def __init__(
        self,
        backend: Backend,
        job: JobLedger,
        bodies: Mapping[str, bytes],
        *,
        betas: Sequence[str],
        schedule: PollSchedule,
        clock: Clock,
        holder: Holder,
        origin: str,
    ) -> None:
        self.backend = backend
        self.job = job
        self.ledger = job.ledger
        self.bodies = bodies
        self.betas = betas
        self.clock = clock
        self.holder = str(holder)
        self.origin = origin
        self.retrying = call_retrying(schedule, clock, is_transient)
        self.first_contact = first_contact_retrying(schedule, clock, is_transient)
        # A create waits out rate limits (a full processing queue) without spending attempts.
        self.creating = create_retrying(schedule, clock, is_transient)
        self.downloading = call_retrying(schedule, clock, retry_download)
        self._held: dict[tuple[str, int], BatchRecord] = {}  # intents this call has held
        # Untagged batches (recorded before origins were kept) this server does not know.
        self.unseen: set[str] = set()
        # What ``advance`` did besides moving the record: results stored, an intent resolved.
        self._changes = 0
        # Batches of this job seen ended by ``advance(..., later=True)``, whose results are
        # downloaded by ``take_ended`` (their requests stay in flight until then).
        self.ended: dict[tuple[str, int], tuple[JobLedger, BatchRecord, BatchInfo]] = {}

    def lease_until(self) -> float:
        return self.clock.now() + LEASE_SECONDS

    def held(self, record: BatchRecord) -> BatchRecord:
        """Note an intent this call holds (to give it up when the call stops)."""
        self._held[record.job, record.seq] = record
        return record

    def advance(self, record: BatchRecord, *, later: bool = False) -> bool:
        """Bring one batch forward, whichever job it belongs to (see the module's docstring).
        Returns whether the cache may now show something else: False only when the batch was
        found as it was (still running, or an intent another call holds), or, with ``later``,
        found ended: a batch of this job that ended is then noted in ``ended`` and its results
        are downloaded by ``take_ended``, so that the step creates the next batches first."""
        job = self.job if record.job == self.job.fingerprint else self.ledger.job(record.job)
        before = record.to_json(), len(self.unseen), self._changes
        try:
            self._advance(job, record, later=later and job is self.job)
        except StaleRecord as e:
            log.info("dsbatch: %s; reading what that call did", e)
            return True  # another call moved it
        return (record.to_json(), len(self.unseen), self._changes) != before

    def take_ended(self) -> bool:
        """Download and store the results of the batches ``advance`` found ended (``later``);
        returns whether there were any. Each is parsed on one core: the API works on the
        batches the step just created meanwhile, and this call would only wait for them (an
        emulator on this machine keeps the other core)."""
        ended, self.ended = list(self.ended.values()), {}
        for job, record, info in ended:
            try:
                self._take_results(job, record, info, use_threads=False)
            except StaleRecord as e:
                log.info("dsbatch: %s; reading what that call did", e)
        return bool(ended)

    def create(self, record: BatchRecord, *, resumed: bool) -> None:
        """Create an intent of this job that this call holds (``resumed``: an earlier call may
        have created it before it stopped). An intent another call took over is left to it."""
        try:
            self._create(record, resumed=resumed)
        except StaleRecord as e:
            if _canceled(self.job) and record.state is BatchState.INTENT:
                with contextlib.suppress(StaleRecord):
                    self.job.mark_unsent(record, "the job was canceled before it was created")
                return
            log.warning("dsbatch: %s; not creating it here", e)

    def _create(self, record: BatchRecord, *, resumed: bool) -> None:
        mine = self.backend.key_hash
        if resumed and record.key_hash and record.key_hash != mine:
            self._check_other_key(record)
        if not resumed and record.intent_server_at is None:
            # Dated by the server's clock before the create: reconcile matches by it.
            try:
                server_at = self._server_now()
            except BatchAPIError as e:
                self.job.mark_unsent(record, f"the API could not be reached: {e}")
                raise BatchAPIError(
                    f"could not create batch #{record.seq} of job {self.job.fingerprint}: {e}. "
                    "Nothing was bought: fix the cause and run the same call again.",
                    status_code=e.status_code,
                ) from e
            self.job.change(
                record,
                lambda fresh: setattr(fresh, "intent_server_at", server_at),
                expect=("state", "holder"),
            )

        def renew() -> None:
            # Before every attempt: an intent whose lease ran out may have been taken over; a
            # job canceled meanwhile creates nothing more.
            if _canceled(self.job):
                raise StaleRecord(f"job {self.job.fingerprint} was canceled")
            self.job.hold(record, self.holder, self.lease_until())

        info = submit(
            self.backend,
            self.job,
            record,
            batch_body(self.job.record_ids(record) or [], self.bodies),
            betas=self.betas,
            retrying=self.creating,
            resumed=resumed,
            renew=renew,
        )
        if _canceled(self.job):
            # Canceled while the create was on its way: stop it before it answers more.
            log.warning("dsbatch: job %s was canceled: canceling %s", self.job.fingerprint, info.id)
            self.retrying.call(self.backend.cancel, info.id)

    def release(self) -> None:
        """Give up this call's leases on intents it leaves (it stops): another call may take
        them over at once, and looks for their batches before creating anything."""
        for record in self._held.values():
            if record.state is BatchState.INTENT and record.holder == self.holder:
                try:
                    self.ledger.job(record.job).hold(record, "", None)
                except (StaleRecord, LedgerError) as e:
                    log.info("dsbatch: could not give up batch %s: %s", record.name, e)

    # -- one batch ------------------------------------------------------------------------------
    def _refetch(self, record: BatchRecord) -> bool:
        return record.state is BatchState.INGESTED and not self.ledger.store.has(
            record.batch_id or ""
        )

    def _lease_free(self, record: BatchRecord) -> bool:
        """Whether this call may take over an intent: no one holds it, its lease ran out, or
        its holder's process is gone."""
        return (
            not record.holder
            or record.holder == self.holder
            or record.lease_until is None
            or self.clock.now() >= record.lease_until
            or holder_gone(record.holder)
        )

    def _advance(self, job: JobLedger, record: BatchRecord, *, later: bool = False) -> None:
        if record.state is BatchState.INTENT:
            if self._lease_free(record):
                self._changes += 1  # its batch is created, adopted or given up
                job.hold(self.held(record), self.holder, self.lease_until(), takeover=True)
                self._resolve_intent(job, record)
            return
        batch_id = record.batch_id or ""
        if record.state is BatchState.SUBMITTED and self.ledger.store.has(batch_id):
            # Stored before a crash, not yet recorded.
            table = self.ledger.store.table(batch_id)
            if self._ours(job, record, table["custom_id"]):
                job.mark_ingested(record, _counts(table), self.origin)
            return
        info = poll_batch(self.backend, batch_id, self.retrying)
        if info is None and not record.origin:
            # A batch recorded before origins were kept, that this server does not know: it is
            # another server's, never lost for that. This call leaves it alone (and sends what
            # it needs itself: another origin's answers would not serve it anyway).
            self.unseen.add(batch_id)
            return
        if info is None:
            self._missing(job, record, "the API does not know it")
            return
        if not record.origin:
            origin = self.origin  # found here: it is this server's
            job.change(record, lambda fresh: setattr(fresh, "origin", origin))
        if info.size != record.request_count:
            self._not_ours(job, record, f"it holds {info.size} requests")
            return
        if not info.ended:
            job.note_missing(record, None)  # found again; its results are not due yet
            return
        if later and record.state is BatchState.SUBMITTED:
            self.ended[record.job, record.seq] = (job, record, info)
            return
        self._take_results(job, record, info)

    def _take_results(
        self, job: JobLedger, record: BatchRecord, info: BatchInfo, *, use_threads: bool = True
    ) -> None:
        """Download an ended batch's results and store them, if they are its requests'
        (parsed on every core, or on one: ``parse_results``)."""
        table = fetch_results(
            self.backend,
            self.ledger.store,
            info,
            retrying=self.downloading,
            use_threads=use_threads,
        )
        if table is None:
            self._missing(job, record, "its results can no longer be downloaded")
        elif self._ours(job, record, table["custom_id"]):
            # Written before the record moves (atomically: a call reading the same batch at the
            # same moment writes the same rows); the move itself is checked (``change``).
            self.ledger.store.write(info.id, table)
            self._changes += 1
            if record.state is BatchState.SUBMITTED:
                job.mark_ingested(record, info.counts, self.origin)
            else:
                job.note_missing(record, None)
            self.ledger.store.discard_download(info.id)

    def _ours(self, job: JobLedger, record: BatchRecord, custom_ids: pa.ChunkedArray) -> bool:
        """Whether results hold exactly the record's requests (its ids file is rebuilt from
        them when lost); if not, the batch is given back (or the mismatch reported)."""
        ids = whole(custom_ids)
        known = self._ids(job, record)
        if known is None and job.restore_ids(record, ids):
            return True
        if known is not None and _sorted(known).equals(_sorted(ids)):
            return True
        self._not_ours(job, record, f"its {len(ids)} results are not this batch's requests")
        return False

    def _ids(self, job: JobLedger, record: BatchRecord) -> pa.Array | None:
        """The record's custom_ids; another job's damaged ids file counts as lost (it is
        rewritten from the batch's results), this job's is a LedgerError saying what to do."""
        try:
            return job.record_id_array(record)
        except LedgerError:
            if job is self.job:
                raise
            return None

    def _resolve_intent(self, job: JobLedger, record: BatchRecord) -> None:
        """An intent left by a process that stopped: its batch may exist."""
        if job is self.job and not _canceled(job) and self._ids(job, record) is not None:
            self.create(record, resumed=True)
            return
        if record.key_hash and record.key_hash != self.backend.key_hash:
            self._check_other_key(record)
        found = reconcile(self.backend, job, record, retrying=self.retrying)
        if found is not None:
            adopt(job, record, found, adopted=True)
        else:
            job.mark_unsent(record, "its process stopped before creating it")

    def _check_other_key(self, record: BatchRecord) -> None:
        """An intent whose create was tried with another key: this key may look for its batch
        only if it sees that key's batches (one workspace)."""
        if same_workspace(self.backend, self.ledger, record.key_hash):
            return
        path = self.ledger.job(record.job).record_path(record.seq)
        raise BatchAPIError(
            f"batch #{record.seq} of job {record.job} may have been created with another API "
            f"key (key hash {record.key_hash}; this client's is {self.backend.key_hash}), whose "
            "batches this key cannot see. Run the same call with that key; or, if that key is "
            f"gone, delete {path}: its requests are then sent again (paid again if that batch "
            "was created)."
        )

    def _missing(self, job: JobLedger, record: BatchRecord, why: str) -> None:
        """The batch, or its results, was not found: gone only once missing for a while, as the
        stored record says (any call that found it again in between restarted that clock)."""
        now = self.clock.now()
        job.note_missing(record, now)
        since = record.missing_since if record.missing_since is not None else now
        mine = self.backend.key_hash
        if now - since < MISSING_SECONDS:
            log.warning(
                "dsbatch: batch %s was not found (%s); looking again (it counts as gone once "
                "missing for %.0f minutes)",
                record.batch_id,
                why,
                MISSING_SECONDS / 60,
            )
            return
        if record.key_hash and mine and record.key_hash != mine:
            # Not gone: out of this key's sight (another workspace). Never bought again for that.
            raise BatchAPIError(
                f"batch {record.batch_id} (job {record.job}) was created with another API key "
                f"(key hash {record.key_hash}; this client's is {mine}) that this client cannot "
                "read: run the same call with the key that created it",
                batch_id=record.batch_id,
                status_code=404,
            )
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

    def _not_ours(self, job: JobLedger, record: BatchRecord, why: str) -> None:
        """A batch whose requests are not the record's: given back if a reconcile adopted it
        (ours may still exist), never bought again if our own create made it."""
        self.ledger.store.discard_download(record.batch_id or "")
        if not record.adopted or record.state is not BatchState.SUBMITTED:
            raise BatchAPIError(
                f"batch {record.batch_id} (#{record.seq} of job {record.job}) does not hold the "
                f"requests it was created with ({why}); nothing is sent again for it. Report "
                "this: the API answered with another batch's data.",
                batch_id=record.batch_id,
            )
        log.warning(
            "dsbatch: batch %s is not batch #%d of job %s (%s): it is someone else's; "
            "looking for ours again",
            record.batch_id,
            record.seq,
            record.job,
            why,
        )
        job.mark_rejected(record, self.holder, self.lease_until())

    def _server_now(self) -> float | None:
        """The server's time, asked of the API if no answer has told it yet (None if the API
        sends no Date header)."""
        if self.backend.server_now() is None:
            # Before the job ever created a batch, an API that cannot be reached at all is more
            # likely a wrong base URL than an outage: fail within seconds, naming it.
            first = not any(r.batch_id for r in job_records(self.job, strict=False))
            retrying = self.first_contact if first else self.retrying
            what = "the first batch" if first else "a new batch"
            retrying.call(
                self.backend.recent, None, limit=1, action=f"checking the API before {what}"
            )
        return self.backend.server_now()


def _canceled(job: JobLedger) -> bool:
    """A canceled job creates nothing more: its intents are only looked for."""
    manifest = job.read_manifest()
    return manifest is not None and manifest.state == "canceled"


def _counts(table: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(table["type"].combine_chunks())
    return dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )


def _sorted(ids: pa.Array) -> pa.Array:
    """The ids in order, as strings (a multiset compared with ``equals``)."""
    ids = ids.cast(pa.string())
    return ids.take(pc.sort_indices(ids))
