"""Submit: create a batch without ever paying twice.

The ledger holds the intent (custom_ids, time) before the create call, and the batch id right
after it. A create that got no answer (or a 5xx) may have made the batch: we look for it with
``list`` before creating again. A create refused outright (4xx: a bad key, a rate limit) made
nothing: its intent binds nothing and is marked unsent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from dsbatch._backend import Backend, BatchInfo, CreateOutcomeUnknown, is_transient
from dsbatch._errors import BatchAPIError
from dsbatch._ledger import JobLedger
from dsbatch._records import BatchRecord
from dsbatch._retry import Retrying

__all__ = ["adopt", "reconcile", "submit"]

log = logging.getLogger("dsbatch")

_LIST_LIMIT = 1000
# Slack for the server Date header's one-second resolution and the list call's own latency.
_DATE_SLACK = 60.0
# With no server time to go by, how far before the intent (local clock) a batch may be ours.
_UNKNOWN_SKEW = 300.0


def submit(
    backend: Backend,
    job: JobLedger,
    record: BatchRecord,
    body: bytes,
    *,
    betas: Sequence[str],
    retrying: Retrying,
    clock: Callable[[], float],
    resumed: bool = False,
) -> BatchInfo:
    """Create the batch of an intent record (``resumed``: an earlier process may have created
    it before dying, so look for it first). Returns the batch, recorded as submitted."""
    maybe_created = resumed

    def attempt() -> BatchInfo:
        nonlocal maybe_created
        if maybe_created:
            # One list per attempt: the retries around `attempt` wait out a list outage too.
            found = reconcile(backend, job, record, clock=clock)
            if found is not None:
                return found
            maybe_created = False
        record.key_hash = backend.key_hash  # who tried; binds nothing until a batch exists
        try:
            return backend.create(body, betas)
        except CreateOutcomeUnknown as e:
            maybe_created = True
            log.warning("dsbatch: the answer to a create was lost (%s); reconciling", e)
            raise

    try:
        info = retrying.call(attempt)
    except BatchAPIError as e:
        if maybe_created:
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
    adopt(job, record, info)
    log.info("dsbatch: created %s (%d requests)", info.id, record.request_count)
    return info


def adopt(job: JobLedger, record: BatchRecord, info: BatchInfo) -> None:
    """Record ``info`` as the batch of ``record`` (and in the cache's journal)."""
    job.mark_submitted(record, info.id, info.created_at)


def reconcile(
    backend: Backend,
    job: JobLedger,
    record: BatchRecord,
    *,
    clock: Callable[[], float],
    retrying: Retrying | None = None,
) -> BatchInfo | None:
    """The batch this record's create made, if the API has one; None if nothing was created.

    Batches carry no metadata, so a batch is ours when it holds exactly our number of requests,
    was created after our intent (by the server's clock: local clocks drift), and is not known
    to the cache as any job's (nor was already found to hold someone else's requests).
    """
    batches, server_now = (
        retrying.call(backend.recent, _LIST_LIMIT) if retrying else backend.recent(_LIST_LIMIT)
    )
    taken = job.ledger.claimed_batch_ids() | set(record.rejected)
    candidates = [b for b in batches if b.id not in taken and b.size == record.request_count]
    if server_now is not None:
        intent = record.intent_at + (server_now - clock())
        after = [b for b in candidates if b.created_at >= intent - _DATE_SLACK]
    else:
        log.warning("dsbatch: the API sent no Date header; matching batches by the local clock")
        after = [b for b in candidates if b.created_at >= record.intent_at - _UNKNOWN_SKEW]
    if not after:
        return None
    # The oldest match is the one closest to our intent.
    return min(after, key=lambda b: b.created_at)
