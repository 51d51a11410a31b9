"""Submit: create a batch without ever paying twice.

The ledger holds the intent (custom_ids, and the moment by the server's clock) before the create
call, and the batch id right after it. A create that got no answer (or a 5xx) may have made the
batch: we look for it with ``list`` before creating again. A create refused outright (a 4xx: a
bad key, a rate limit) made nothing: its intent binds nothing and is marked unsent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

from dsbatch._backend import Backend, BatchInfo, CreateOutcomeUnknown, is_transient
from dsbatch._errors import BatchAPIError
from dsbatch._ledger import JobLedger, Ledger, StaleRecord
from dsbatch._records import BatchRecord
from dsbatch._recovery import claimed_batch_ids
from dsbatch._retry import Retrying

__all__ = ["adopt", "reconcile", "same_workspace", "submit"]

log = logging.getLogger("dsbatch")

# A batch created this long before the intent (by the server's clock) may still be ours: the
# Date header has a one-second resolution, and an intent dated from an older answer drifts.
_SLACK = 60.0
# With no server time for the intent, how far before it (local clock) a batch may be ours.
_UNKNOWN_SKEW = 300.0
# A key the API does not know, or that may not create batches, created nothing.
_NO_SUCH_KEY = (401, 403)


def submit(
    backend: Backend,
    job: JobLedger,
    record: BatchRecord,
    body: bytes,
    *,
    betas: Sequence[str],
    retrying: Retrying,
    resumed: bool = False,
    renew: Callable[[], None] | None = None,
) -> BatchInfo:
    """Create the batch of an intent record (``resumed``: an earlier process may have created
    it before dying, so look for it first). Returns the batch, recorded as submitted.

    ``renew`` runs before every attempt: it renews the intent's lease, and raises
    ``StaleRecord`` (never retried) when another call took the intent over."""
    maybe_created = resumed
    adopted = False

    def attempt() -> BatchInfo:
        nonlocal maybe_created, adopted
        if renew is not None:
            renew()
        if maybe_created:
            # One list per attempt: the retries around `attempt` wait out a list outage too.
            found = reconcile(backend, job, record)
            if found is not None:
                adopted = True
                return found
            maybe_created = False
        if record.key_hash != backend.key_hash:
            # Who tries, written before trying: a create cut short by a crash may have been
            # made with this key. It binds nothing once a create is refused.
            key = backend.key_hash
            job.change(
                record, lambda fresh: setattr(fresh, "key_hash", key), expect=("state", "holder")
            )
        try:
            return backend.create(body, betas)
        except CreateOutcomeUnknown as e:
            maybe_created = True
            log.warning("dsbatch: the answer to a create was lost (%s); reconciling", e)
            raise

    try:
        info = retrying.call(attempt)
    except BatchAPIError as e:
        if maybe_created and e.status_code not in _NO_SUCH_KEY:
            raise BatchAPIError(
                f"could not create batch #{record.seq} of job {job.fingerprint} "
                f"({record.request_count} requests): {e}. It may exist: run the same call "
                "again, and dsbatch looks for it before creating anything.",
                status_code=e.status_code,
            ) from e
        job.mark_unsent(record, f"the create was refused: {e}")
        retried = " after several tries" if is_transient(e) else ""
        raise BatchAPIError(
            f"could not create batch #{record.seq} of job {job.fingerprint} "
            f"({record.request_count} requests){retried}: {e}. Nothing was bought: fix the "
            "cause and run the same call again.",
            status_code=e.status_code,
        ) from e
    try:
        adopt(job, record, info, adopted=adopted)
    except StaleRecord:
        # Another call took the intent over while this create was on its way (this process
        # was stopped past its lease): the batch is paid for all the same, so it is recorded
        # and read; what it holds was bought twice, so it is canceled if it can still be.
        late = _record_late_batch(job, record, info)
        log.warning(
            "dsbatch: batch %s was created after another call took batch #%d of job %s over: "
            "its %d requests were bought twice; it is recorded as batch #%d and canceled if it "
            "is still running (what it answered is kept)",
            info.id,
            record.seq,
            job.fingerprint,
            record.request_count,
            late.seq,
        )
        with contextlib.suppress(BatchAPIError):
            backend.cancel(info.id)
        return info
    log.info("dsbatch: created %s (%d requests)", info.id, record.request_count)
    return info


def _record_late_batch(job: JobLedger, record: BatchRecord, info: BatchInfo) -> BatchRecord:
    """Record a batch that ``record``'s create made after another call had taken the intent
    over (so it cannot be that record's): a new record of the same requests, in a slot of its
    own, journaled like any batch: a batch paid for is never forgotten."""
    ids = job.record_ids(record) or []
    with job.ledger.locked():
        late = job.new_record(
            ids, intent_at=record.intent_at, key_hash=record.key_hash, origin=record.origin
        )
    job.mark_submitted(late, info.id, info.created_at)
    return late


def adopt(job: JobLedger, record: BatchRecord, info: BatchInfo, *, adopted: bool) -> None:
    """Record ``info`` as the batch of ``record`` (and in the cache's journal)."""
    job.mark_submitted(record, info.id, info.created_at, adopted=adopted)


def reconcile(
    backend: Backend, job: JobLedger, record: BatchRecord, *, retrying: Retrying | None = None
) -> BatchInfo | None:
    """The batch this record's create made, if the API has one; None if nothing was created.

    Batches carry no metadata, so a batch is ours when it holds exactly our number of requests,
    is held by no record of the cache (nor was already found to hold someone else's requests),
    and was created after our intent by the server's clock: the first such batch, else the
    closest one created just before it (within a minute). A wrong match is found out when its
    results come in, and given back.
    """
    intent = record.intent_server_at
    if intent is None:  # an intent from before the server's time was known: date it now
        server = backend.server_now()
        intent = None if server is None else record.intent_at + (server - backend.clock())
    since = None if intent is None else intent - _SLACK
    action = f"looking for batch #{record.seq} of job {job.fingerprint} among the newest batches"
    batches = (
        retrying.call(backend.recent, since, action=action)
        if retrying
        else backend.recent(since, action=action)
    )
    if intent is None:
        server = backend.server_now()
        if server is None:
            log.warning("dsbatch: the API sent no Date header; matching batches by local time")
            intent = record.intent_at - _UNKNOWN_SKEW + _SLACK
        else:
            intent = record.intent_at + (server - backend.clock())
    taken = claimed_batch_ids(job.ledger) | set(record.rejected)
    fits = [b for b in batches if b.id not in taken and b.size == record.request_count]
    after = [b for b in fits if b.created_at >= intent]
    if after:
        return min(after, key=lambda b: b.created_at)
    before = [b for b in fits if b.created_at >= intent - _SLACK]
    return max(before, key=lambda b: b.created_at) if before else None


def same_workspace(backend: Backend, ledger: Ledger, key_hash: str) -> bool | None:
    """Whether this client sees the batches of the key with ``key_hash`` (one workspace):
    asked of a batch that key created, if the journal knows one; None if it knows none."""
    for entry in reversed(ledger.journal()):
        batch_id = entry.get("batch_id")
        if entry.get("key_hash") != key_hash or entry.get("released") or not batch_id:
            continue
        try:
            backend.retrieve(batch_id)
        except BatchAPIError as e:
            if e.status_code == 404:
                return False
            raise
        return True
    return None
