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
    "latest_rows",
    "open_mask",
    "open_requests",
    "positions",
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
    rows = latest_rows(results)
    return results if rows is None else results.take(pa.array(rows))


def latest_rows(results: pa.Table, codes: np.ndarray | None = None) -> np.ndarray | None:
    """The rows ``latest_results`` keeps, in order; None for all of them. ``codes`` numbers
    each row's custom_id (the same id, the same number >= 0; e.g. its position among a job's
    ids); without them the ids are numbered by a hash pass. Numbers are sorted as integers: a
    job's results are a million rows, and sorting their strings cost seconds on every step."""
    if results.num_rows == 0:
        return None
    if codes is None:
        encoded = whole(results["custom_id"]).dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
    if np.bincount(codes).max() <= 1:
        return None  # one attempt each (the usual case): every row is the latest
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
) -> pa.Array:
    """The custom_ids among ``needed`` (each once) to send now, in their order.

    ``results`` holds every result of every attempt for these ids (lost ones included; rows of
    other ids are ignored); ``in_flight``: the ids some batch may hold in flight.
    """
    if not isinstance(in_flight, pa.Array):
        in_flight = pa.array(list(in_flight), pa.string())
    at = positions(needed, results["custom_id"])
    if (at < 0).any():
        results, at = results.filter(pa.array(at >= 0)), at[at >= 0]
    rows = latest_rows(results, at)
    latest, latest_at = (results, at) if rows is None else (results.take(rows), at[rows])
    mask = open_mask(
        len(needed),
        results,
        at,
        latest,
        latest_at,
        positions(needed, in_flight),
        max_attempts=max_attempts,
        resend_canceled=resend_canceled,
    )
    return needed.filter(pa.array(mask))


def open_mask(
    n: int,
    results: pa.Table,
    at: np.ndarray,
    latest: pa.Table,
    latest_at: np.ndarray,
    in_flight_at: np.ndarray,
    *,
    max_attempts: int,
    resend_canceled: bool,
) -> np.ndarray:
    """Whether each of a job's ``n`` requests (numbered 0 to n - 1) is to be sent now.

    ``results``: every result of every attempt of them, each of request ``at``; ``latest``:
    the rows of ``latest_rows(results, at)``, each of request ``latest_at``; ``in_flight_at``:
    the requests some batch may hold in flight (-1: not one of the job's)."""
    closed = np.zeros(n, dtype=bool)
    # The ids alone are marked: a filter of the table would copy every answer, each step.
    final = ~whole(_retry_mask(latest, resend_canceled)).to_numpy(zero_copy_only=False)
    closed[latest_at[final]] = True
    if latest.num_rows != results.num_rows or max_attempts <= 1:
        # Not one attempt each (the usual job, where none has spent its attempts): count them.
        counted = at
        if resend_canceled:  # canceled sends are not counted
            canceled = pc.equal(results["type"], "canceled").fill_null(False)
            counted = at[~whole(canceled).to_numpy(zero_copy_only=False)]
        closed |= np.bincount(counted, minlength=n) >= max_attempts
    closed[in_flight_at[in_flight_at >= 0]] = True
    return ~closed


def positions(ids: pa.Array, of: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The position in ``ids`` (distinct) of each of ``of``; -1 where it is not there."""
    at = pc.index_in(of, value_set=ids).fill_null(-1)
    return whole(at).to_numpy(zero_copy_only=False).astype(np.int64)
