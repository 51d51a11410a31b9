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

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "FAILED_STATUSES",
    "LOST_ERROR",
    "attempts",
    "latest_results",
    "to_send",
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
    """One result per custom_id: a success if there is one anywhere, else the latest attempt.

    ``results`` needs ``custom_id``, ``type`` and ``batch_created_at`` (the order of attempts).
    """
    if results.num_rows == 0:
        return results
    rank = pc.if_else(pc.equal(results["type"], "succeeded"), 0, 1).fill_null(1)
    order = pc.negate(results["batch_created_at"].fill_null(0.0))
    keyed = results.append_column("_rank", rank).append_column("_order", order)
    keyed = keyed.sort_by(
        [("custom_id", "ascending"), ("_rank", "ascending"), ("_order", "ascending")]
    )
    ids = keyed["custom_id"].combine_chunks()
    first = pc.invert(pc.equal(ids[1:], ids[:-1]).fill_null(False))
    keep = pa.concat_arrays([pa.array([True]), first]) if len(ids) else pa.array([], pa.bool_())
    return keyed.filter(keep).drop_columns(["_rank", "_order"])


def attempts(results: pa.Table, *, count_canceled: bool = True) -> dict[str, int]:
    """custom_id -> how many times it was sent, from every result of every attempt."""
    ids = results["custom_id"]
    if not count_canceled:
        ids = pc.filter(ids, pc.invert(pc.equal(results["type"], "canceled").fill_null(False)))
    counts = pc.value_counts(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
    return dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )


def to_send(
    needed: pa.Array,
    results: pa.Table,
    *,
    in_flight: Collection[str],
    max_attempts: int,
    resend_canceled: bool = False,
) -> list[str]:
    """The custom_ids among ``needed`` to send now, in their order.

    ``results`` holds every result of every attempt for these ids (lost ones included).
    """
    latest = latest_results(results)
    final = latest.filter(pc.invert(_retry_mask(latest, resend_canceled)))["custom_id"]
    open_ids = pc.filter(needed, pc.invert(pc.is_in(needed, value_set=final.combine_chunks())))
    used = attempts(results, count_canceled=not resend_canceled)
    flying = set(in_flight)
    return [c for c in open_ids.to_pylist() if c not in flying and used.get(c, 0) < max_attempts]
