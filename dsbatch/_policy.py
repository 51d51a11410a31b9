"""What is final and what is sent again: the one place that decides, for plan, join and status.

Every send of a request is an attempt, whatever became of it::

    result of an attempt                     disposition
    succeeded                                final: the answer
    errored, invalid_request_error           final: the request itself must change
    errored, any other type                  retried while attempts remain
    expired                                  retried while attempts remain
    canceled                                 final (someone canceled it); resend_canceled=True
                                             sends it again, and canceled sends are not counted
    lost (batch gone before it was read)     retried while attempts remain
    anything else                            final

A request with no attempt yet is sent. A request already in flight anywhere in the cache is never
sent: the job waits for that batch instead.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dsbatch._arrow import whole

__all__ = [
    "FAILED_STATUSES",
    "LOST_ERROR",
    "attempts",
    "latest_results",
    "open_requests",
]

# Row statuses that mean "no answer": what on_error applies to. `skipped` is not a failure.
FAILED_STATUSES = ("errored", "expired", "canceled", "parse_error")
# The error type of the stand-in result of a request whose batch was lost.
LOST_ERROR = "batch_lost"

_INVALID = "invalid_request_error"


def _retry_mask(results: pa.Table, resend_canceled: bool) -> pa.ChunkedArray:
    """Whether each result row may succeed if sent again (the module's table)."""
    kind = results["type"]
    retry = pc.or_(
        pc.and_(
            pc.equal(kind, "errored"),
            pc.invert(pc.equal(results["error_type"], _INVALID).fill_null(False)),
        ),
        pc.equal(kind, "expired"),
    )
    if resend_canceled:
        retry = pc.or_(retry, pc.equal(kind, "canceled"))
    return retry.fill_null(False)


def latest_results(results: pa.Table) -> pa.Table:
    """One result per custom_id: a success if there is one anywhere, else the latest attempt
    (of two attempts made at one moment, the first listed). Rows keep their order in
    ``results``; a table whose every custom_id occurs once is returned as it is.

    ``results`` needs ``custom_id``, ``type`` and ``batch_created_at`` (the order of attempts).
    """
    if results.num_rows == 0:
        return results
    rows = _latest_rows(results)
    return results if rows is None else results.take(pa.array(rows))


def _latest_rows(results: pa.Table) -> np.ndarray | None:
    """The rows ``latest_results`` keeps, in order; None for all of them. The ids are
    numbered by a hash pass and sorted as integers: a job's results are a million rows, and
    sorting their strings cost seconds on every step."""
    encoded = whole(results["custom_id"]).dictionary_encode()
    if len(encoded.dictionary) == len(encoded):
        return None  # one attempt each (the usual case): every row is the latest
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    rank = pc.if_else(pc.equal(results["type"], "succeeded"), 0, 1).fill_null(1)
    when = results["batch_created_at"].fill_null(0.0)
    # lexsort is stable and sorts by its last key first: id, then success, then newest first.
    order = np.lexsort(
        (
            -whole(when).to_numpy(zero_copy_only=False),
            whole(rank).to_numpy(zero_copy_only=False),
            codes,
        )
    )
    grouped = codes[order]
    first = np.empty(len(order), dtype=bool)
    first[0] = True
    np.not_equal(grouped[1:], grouped[:-1], out=first[1:])
    return np.sort(order[first])


def attempts(results: pa.Table, *, count_canceled: bool = True) -> dict[str, int]:
    """custom_id -> how many times it was sent, from every result of every attempt."""
    ids = results["custom_id"]
    if not count_canceled:
        ids = pc.filter(ids, pc.invert(pc.equal(results["type"], "canceled").fill_null(False)))
    counts = pc.value_counts(whole(ids))
    return dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )


def open_requests(
    needed: pa.Array,
    results: pa.Table,
    *,
    in_flight: Collection[str] | pa.Array,
    max_attempts: int,
    resend_canceled: bool = False,
    latest: pa.Table | None = None,
) -> pa.Array:
    """The custom_ids among ``needed`` to send now, in their order.

    ``results`` holds every result of every attempt for these ids (lost ones included);
    ``latest``, when given, is ``latest_results(results)``.
    """
    if latest is None:
        latest = latest_results(results)
    # The ids alone are filtered: a filter of the table would copy every answer, each step.
    final = pc.filter(latest["custom_id"], pc.invert(_retry_mask(latest, resend_canceled)))
    if latest.num_rows == results.num_rows and max_attempts > 1:
        # One attempt each (the usual job): none has spent its attempts, nothing to count.
        spent = pa.array([], pa.string())
    else:
        counted = results["custom_id"]
        if resend_canceled:  # canceled sends are not counted
            counted = pc.filter(
                counted, pc.invert(pc.equal(results["type"], "canceled").fill_null(False))
            )
        counts = pc.value_counts(whole(counted))
        spent = pc.filter(
            counts.field("values"), pc.greater_equal(counts.field("counts"), max_attempts)
        )
    if not isinstance(in_flight, pa.Array):
        in_flight = pa.array(list(in_flight), pa.string())
    closed = pa.concat_arrays(
        [whole(final).cast(pa.string()), spent.cast(pa.string()), in_flight.cast(pa.string())]
    )
    return pc.filter(needed, pc.invert(pc.is_in(needed, value_set=closed)))
