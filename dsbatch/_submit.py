"""Submit: create a batch without ever paying twice.

The ledger records the intent (custom_ids, time, key hash) before the create call, and the
batch id right after it. If the answer is lost, the batch may exist: we look for it with
``list`` before creating again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from dsbatch._backend import Backend, BatchInfo, CreateOutcomeUnknown, RateLimited, is_transient
from dsbatch._errors import BatchAPIError
from dsbatch._ledger import BatchRecord, JobLedger
from dsbatch._plan import BatchPlan, batch_body
from dsbatch._poll import PollSchedule

__all__ = ["CREATE_ATTEMPTS", "reconcile", "send_batch", "submit_batch"]

log = logging.getLogger("dsbatch")

CREATE_ATTEMPTS = 5
# How far before our intent a batch's created_at may be and still be ours (clock skew).
_SKEW_SECONDS = 300.0
_LIST_LIMIT = 1000


def submit_batch(
    backend: Backend,
    job: JobLedger,
    plan: BatchPlan,
    bodies: Mapping[str, bytes],
    *,
    schedule: PollSchedule,
    now: Callable[[], float] = time.time,
) -> BatchRecord:
    """Record the intent, then create the batch; returns the record with its batch id."""
    record = job.new_batch_record(plan.custom_ids, key_hash=backend.key_hash, intent_at=now())
    return send_batch(backend, job, record, bodies, schedule=schedule)


def send_batch(
    backend: Backend,
    job: JobLedger,
    record: BatchRecord,
    bodies: Mapping[str, bytes],
    *,
    schedule: PollSchedule,
    resumed: bool = False,
) -> BatchRecord:
    """Create the batch of a record that has no batch id yet.

    ``resumed``: the record comes from an earlier process that may have created the batch
    before dying, so look for it first.
    """
    body = batch_body(job.batch_custom_ids(record), bodies)
    # Whether a create may have landed without our hearing of it: only then is `list` asked.
    maybe_created = resumed
    last_error = ""
    for attempt in range(CREATE_ATTEMPTS):
        if maybe_created:
            try:
                found = reconcile(backend, job, record)
            except BatchAPIError as e:
                if not is_transient(e):
                    raise
                last_error = str(e)
                schedule.backoff(attempt)
                continue
            if found is not None:
                return _adopt(job, record, found)
            maybe_created = False
        try:
            info = backend.create(body)
        except RateLimited as e:
            # Refused: nothing was created.
            last_error = str(e)
            if e.retry_after is not None:
                schedule.sleep(e.retry_after)
            else:
                schedule.backoff(attempt)
            continue
        except CreateOutcomeUnknown as e:
            last_error = str(e)
            maybe_created = True
            log.warning("dsbatch: the answer to a create was lost (%s); reconciling", e)
            schedule.backoff(attempt)
            continue
        return _adopt(job, record, info)
    if maybe_created:
        found = reconcile(backend, job, record)
        if found is not None:
            return _adopt(job, record, found)
    raise BatchAPIError(
        f"could not create batch #{record.seq} of job {job.fingerprint} "
        f"({record.request_count} requests) after {CREATE_ATTEMPTS} attempts: {last_error}. "
        "Nothing was lost: run the same call again to resume."
    )


def reconcile(backend: Backend, job: JobLedger, record: BatchRecord) -> BatchInfo | None:
    """The batch this record's create made, if the API has one; None if nothing was created.

    Batches carry no metadata, so a batch is ours when it was created after our intent, holds
    exactly our number of requests, and no record of any job in the cache claims it (nor did
    this record already find it to hold someone else's requests).
    """
    taken = job.ledger.claimed_batch_ids() | set(record.rejected)
    candidates = [
        b
        for b in backend.recent(limit=_LIST_LIMIT)
        if b.id not in taken
        and b.created_at >= record.intent_at - _SKEW_SECONDS
        and b.size == record.request_count
    ]
    if not candidates:
        return None
    # The oldest match is the one closest to our intent.
    return min(candidates, key=lambda b: b.created_at)


def _adopt(job: JobLedger, record: BatchRecord, info: BatchInfo) -> BatchRecord:
    record.batch_id = info.id
    record.created_at = info.created_at
    record.state = "submitted"
    job.save_batch_record(record)
    return record
