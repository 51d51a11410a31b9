"""Plan: the job's fingerprint, what the whole cache knows of its requests, what to send, and
the batches that carries them.

``survey`` reads, for the job's distinct requests, every result of every attempt anywhere in the
cache, and every batch of any job that holds one of them in flight (or whose results must be
downloaded again). ``View.open_ids`` asks the policy which requests to send; the caller does
both under the cache-wide lock, then writes the intents before releasing it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from dsbatch._arrow import whole
from dsbatch._bodies import Bodies
from dsbatch._errors import LedgerError, RequestTooLargeError
from dsbatch._ledger import RESULT_SCHEMA, Ledger
from dsbatch._limits import MAX_BATCH_BYTES, MAX_BATCH_REQUESTS
from dsbatch._policy import LOST_ERROR, latest_rows, open_mask
from dsbatch._records import IN_FLIGHT, BatchRecord, BatchState
from dsbatch._recovery import all_records, batch_origins

__all__ = [
    "BatchPlan",
    "View",
    "batch_body",
    "check_sizes",
    "chunk_requests",
    "job_fingerprint",
    "queued",
    "stand_in_results",
    "survey",
]

log = logging.getLogger("dsbatch")

_BODY_OPEN = b'{"requests":['
_BODY_CLOSE = b"]}"


def job_fingerprint(
    row_custom_ids: Mapping[str, Sequence[str | None]], origin: str, samples: int = 1
) -> str:
    """A job is what it asks of each row of each split, how many times, and where
    (``_origin``): the same splits, rows, requests, samples and origin give the same
    fingerprint; moving a row to another split, asking for more samples, or running against
    another server, gives another."""
    h = xxhash.xxh3_128(b"dsbatch-job-3\x00" + origin.encode())
    if samples != 1:  # one sample is the job a plain run always was
        h.update(b"\x00samples\x00" + str(samples).encode())
    for split, ids in row_custom_ids.items():
        h.update(b"\x00split\x00" + split.encode() + b"\x00")
        for custom_id in ids:
            h.update(b"\x01" + (custom_id.encode() if custom_id else b"-"))
    return h.hexdigest()


# -- what the cache knows ------------------------------------------------------------------------


@dataclass
class View:
    """What the cache knows of a job's requests at one moment."""

    records: list[BatchRecord]
    needed: pa.Array  # the job's distinct custom_ids
    # Every result of every attempt of the needed requests (lost batches' stand-ins included),
    # and the position in ``needed`` of each one's custom_id: changed together (``add``).
    results: pa.Table
    at: np.ndarray
    # Batches that may hold needed requests and are in flight, or whose stored results are
    # missing or unreadable (downloaded again): record -> the needed custom_ids it may hold
    # (when its own ids file is lost: those its job asks for), and their positions in
    # ``needed`` (``waiting_at``: all of them, each once).
    waiting: list[tuple[BatchRecord, pa.Array]] = field(default_factory=list)
    waiting_at: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # ``latest()``'s answer, and its rows' positions, for the ``results`` it was made from.
    _latest: tuple[pa.Table, pa.Table, np.ndarray] | None = field(default=None, repr=False)

    def add(self, results: pa.Table, at: np.ndarray) -> None:
        """More results (stand-ins) of the needed requests, each of request ``at``."""
        self.results = pa.concat_tables([self.results, results])
        self.at = np.concatenate([self.at, at])

    def wait_for(self, record: BatchRecord, ids: pa.Array, at: np.ndarray) -> None:
        """``record`` may hold the needed ``ids``, at ``at`` in ``needed``."""
        self.waiting.append((record, ids))
        self.waiting_at = np.union1d(self.waiting_at, at[at >= 0])

    @property
    def waiting_array(self) -> pa.Array:
        """The needed custom_ids some batch may hold, once each."""
        return self.needed.take(pa.array(self.waiting_at, pa.int64()))

    @property
    def waiting_ids(self) -> set[str]:
        return set(self.waiting_array.to_pylist())

    def latest(self) -> pa.Table:
        """``latest_results`` of ``results``: the decision and the standing of a step both
        read it, and on a large job it is the step's largest piece of work."""
        return self._latest_rows()[0]

    def _latest_rows(self) -> tuple[pa.Table, np.ndarray]:
        if self._latest is None or self._latest[0] is not self.results:
            rows = latest_rows(self.results, self.at)
            if rows is None:
                self._latest = (self.results, self.results, self.at)
            else:
                self._latest = (self.results, self.results.take(rows), self.at[rows])
        return self._latest[1], self._latest[2]

    def open_ids(self, *, max_attempts: int, resend_canceled: bool) -> pa.Array:
        """The needed custom_ids to send now, in their order: none that any batch of the cache
        may hold in flight."""
        latest, latest_at = self._latest_rows()
        mask = open_mask(
            len(self.needed),
            self.results,
            self.at,
            latest,
            latest_at,
            self.waiting_at,
            max_attempts=max_attempts,
            resend_canceled=resend_canceled,
        )
        return self.needed.filter(pa.array(mask))


def survey(
    ledger: Ledger, own: str, needed: pa.Array, origin: str, skip: Collection[str] = ()
) -> View:
    """Everything the cache knows of ``needed`` (the custom_ids of job ``own``) from batches
    made at ``origin`` (or at an origin no one recorded: see ``_origin``), but the batches in
    ``skip`` (untagged ones this server turned out not to know)."""
    scan = all_records(ledger, own)
    store = ledger.store
    results, at, unreadable = store.results_for(needed)
    others = {b for b, o in batch_origins(ledger, scan).items() if o not in ("", origin)}
    if others:
        mine = pc.invert(
            pc.is_in(results["batch_id"], value_set=pa.array(sorted(others), pa.string()))
        )
        results, at = results.filter(mine), at[whole(mine).to_numpy(zero_copy_only=False)]
    view = View(scan.records, needed, results, at)
    for record in scan.records:
        if record.origin not in ("", origin) or record.batch_id in skip:
            continue
        refetch = record.state is BatchState.INGESTED and (
            record.batch_id in unreadable or not store.has(record.batch_id or "")
        )
        lost = record.state is BatchState.LOST and not store.has(record.batch_id or "")
        if not (record.state in IN_FLIGHT or refetch or lost):
            continue
        try:
            ids = _record_ids(ledger, record)
        except LedgerError as e:
            if record.job == own:
                raise
            log.warning("dsbatch: %s", e)  # another job's damaged ids: bounded below
            ids = None
        if ids is None:
            if lost:
                continue
            ids = _bound(ledger, record.job, needed)
        # A batch of this job holds only its requests (the job's fingerprint fixes them).
        mine = ids if record.job == own else pc.filter(ids, pc.is_in(ids, value_set=needed))
        if len(mine) == 0 and record.job != own:
            continue
        if lost:
            view.add(_lost_results(record, mine), store.locate(mine, needed))
        else:
            view.wait_for(record, mine, store.locate(mine, needed))
    for path in scan.damaged:
        _refuse_if_needed(ledger, path, needed)
    return view


def _record_ids(ledger: Ledger, record: BatchRecord) -> pa.Array | None:
    return ledger.job(record.job).record_id_array(record)


def _bound(ledger: Ledger, job: str, needed: pa.Array) -> pa.Array:
    """What a batch of ``job`` whose own list is lost may hold: what its job asks for (all of
    ``needed`` if even that is unreadable). Its requests wait until its results tell."""
    asked = ledger.job(job).request_ids()
    return needed if asked is None else asked


def _refuse_if_needed(ledger: Ledger, path: Path, needed: pa.Array) -> None:
    """Another job's batch record that cannot be read and that the journal does not know (an
    intent whose create may have gone out): never send what it may hold."""
    job = ledger.record_job(path)
    bound = _bound(ledger, job, needed)
    overlap = pc.sum(pc.is_in(bound, value_set=needed)).as_py() or 0
    if overlap:
        raise LedgerError(
            f"this job needs {overlap} requests that job {job} may have in flight, but its "
            f"batch record {path} is damaged. Run job {job}'s call again (it says what to do), "
            f"or delete {path}: its requests are then sent again, and paid again if that batch "
            "was created.",
            path=str(path),
        )


def _lost_results(record: BatchRecord, custom_ids: pa.Array) -> pa.Table:
    """Stand-in results for the requests of a lost batch: each was an attempt, with no answer."""
    return stand_in_results(
        custom_ids,
        kind="errored",
        error_type=LOST_ERROR,
        error_message=f"batch {record.batch_id}: {record.note}",
        batch_id=record.batch_id,
        created_at=record.created_at,
    )


def stand_in_results(
    custom_ids: pa.Array,
    *,
    kind: str,
    error_type: str | None = None,
    error_message: str | None = None,
    batch_id: str | None = None,
    created_at: float | None = None,
) -> pa.Table:
    """Results (without ``raw``) of requests that got none from the API: a lost batch's, or
    those a canceled job never sent."""
    n = len(custom_ids)
    columns = {name: pa.nulls(n, RESULT_SCHEMA.field(name).type) for name in RESULT_SCHEMA.names}
    columns.update(
        custom_id=pa.array(custom_ids, pa.string()),
        type=pa.array([kind] * n, pa.string()),
        error_type=pa.array([error_type] * n, pa.string()),
        error_message=pa.array([error_message] * n, pa.string()),
        batch_id=pa.array([batch_id] * n, pa.string()),
        batch_created_at=pa.array([created_at] * n, pa.float64()),
    )
    return pa.table(columns, schema=RESULT_SCHEMA).drop_columns(["raw"])


def queued(records: Sequence[BatchRecord], origin: str) -> list[BatchRecord]:
    """The batches of the cache in the processing queue at ``origin``, as far as the cache
    knows: intents (being created) and batches not yet seen ended, of every job. The queue limit
    is the organisation's; the cache is the best view of it dsbatch has."""
    return [r for r in records if r.state in IN_FLIGHT and r.origin in ("", origin)]


# -- batches -------------------------------------------------------------------------------------


def _item(custom_id: str, body: bytes) -> bytes:
    # Byte-for-byte what the SDK itself would send (compact separators, UTF-8 kept).
    return b'{"custom_id":"' + custom_id.encode() + b'","params":' + body + b"}"


@runtime_checkable
class ParamsStore(Protocol):
    """Bodies read from disk as Arrow (a job's requests file): a step's hundred thousand are
    found at once, never made Python bytes one at a time."""

    def params(self, custom_ids: Sequence[str]) -> pa.Array: ...

    def sizes(self, custom_ids: Sequence[str]) -> np.ndarray: ...


# Requests whose params are read at once from a ``ParamsStore``.
_WINDOW = 16_384


def batch_body(custom_ids: Sequence[str], bodies: Mapping[str, bytes]) -> bytes:
    """The create body for these requests: ``{"requests":[{"custom_id":..,"params":..},..]}``."""
    if not isinstance(bodies, ParamsStore):
        return _BODY_OPEN + b",".join(_item(c, bodies[c]) for c in custom_ids) + _BODY_CLOSE
    parts: list[bytes | memoryview] = [_BODY_OPEN]
    for start in range(0, len(custom_ids), _WINDOW):
        window = custom_ids[start : start + _WINDOW]
        # Each item as _item makes it, and its comma, joined in Arrow: the window's items are
        # then one buffer.
        items = pc.binary_join_element_wise(
            _ITEM_OPEN,
            pa.array(window, pa.string()).cast(pa.binary()),
            _ITEM_PARAMS,
            bodies.params(window).cast(pa.binary()),
            _ITEM_CLOSE,
            _NO_SEPARATOR,
        )
        offsets = np.frombuffer(items.buffers()[1], dtype=np.int32)
        first, last = offsets[items.offset], offsets[items.offset + len(items)]
        parts.append(memoryview(items.buffers()[2])[first:last])
    if len(parts) > 1:
        parts[-1] = parts[-1][:-1]  # less the last item's comma
    parts.append(_BODY_CLOSE)
    return b"".join(parts)  # the body's one copy


_ITEM_OPEN = pa.scalar(b'{"custom_id":"', pa.binary())
_ITEM_PARAMS = pa.scalar(b'","params":', pa.binary())
_ITEM_CLOSE = pa.scalar(b"},", pa.binary())
_NO_SEPARATOR = pa.scalar(b"", pa.binary())


def _sizes(custom_ids: Sequence[str], bodies: Mapping[str, bytes]) -> np.ndarray:
    """The bytes of each request's body, in order; from a ``ParamsStore``, read a window at
    once (never as Python bytes)."""
    if not isinstance(bodies, ParamsStore):
        return np.fromiter((len(bodies[c]) for c in custom_ids), np.int64, len(custom_ids))
    parts = [np.zeros(0, np.int64)]
    for start in range(0, len(custom_ids), _WINDOW):
        parts.append(bodies.sizes(custom_ids[start : start + _WINDOW]))
    return np.concatenate(parts)


_OVERHEAD = len(_BODY_OPEN) + len(_BODY_CLOSE)
_ITEM_FRAME = len(b'{"custom_id":"","params":}')  # an item's bytes around its id and body


def _item_size(
    custom_id: str,
    size: int,
    max_bytes: int,
    first_row: Mapping[str, tuple[str | None, int]] | None,
) -> int:
    """The bytes a request whose body is ``size`` bytes takes in a create body;
    RequestTooLargeError, naming its row, when it alone is over the batch limit."""
    item = len(custom_id) + size + _ITEM_FRAME
    if _OVERHEAD + item > max_bytes:
        # Looked up, not tested for truth: a lazy map (``Rendered.first_row``) would count itself.
        split, row = (None, None) if first_row is None else first_row.get(custom_id, (None, None))
        raise RequestTooLargeError(
            f"the request is {item:,} bytes, over the {max_bytes:,}-byte limit of a whole "
            f"batch (custom_id {custom_id})",
            row=row,
            split=split,
        )
    return item


def check_sizes(
    bodies: Mapping[str, bytes],
    *,
    max_bytes: int = MAX_BATCH_BYTES,
    first_row: Mapping[str, tuple[str | None, int]] | None = None,
) -> None:
    """Refuse, before any call, a request too large for any batch (its row named)."""
    largest = bodies.largest if isinstance(bodies, Bodies) else None
    if largest is not None and bodies:
        longest_id = max(map(len, bodies))
        if _OVERHEAD + longest_id + largest + _ITEM_FRAME <= max_bytes:
            return  # the largest body with the longest id fits: every request does
    for custom_id, body in bodies.items():
        _item_size(custom_id, len(body), max_bytes, first_row)


@dataclass(frozen=True)
class BatchPlan:
    """One batch to create: its custom_ids and the exact size of its body."""

    custom_ids: tuple[str, ...]
    nbytes: int


def chunk_requests(
    custom_ids: Sequence[str],
    bodies: Mapping[str, bytes],
    *,
    max_requests: int = MAX_BATCH_REQUESTS,
    max_bytes: int = MAX_BATCH_BYTES,
    first_row: Mapping[str, tuple[str | None, int]] | None = None,
) -> Iterator[BatchPlan]:
    """Split requests into batches under both limits, in order: each batch as many of the next
    requests as fit (worked out on the cumulative sizes, not a request at a time)."""
    n = len(custom_ids)
    if n == 0:
        return
    ids = list(custom_ids)
    items = np.fromiter(map(len, ids), np.int64, n) + _sizes(ids, bodies) + _ITEM_FRAME
    over = np.flatnonzero(_OVERHEAD + items > max_bytes)
    if len(over):  # raises, naming the row
        at = int(over[0])
        _item_size(ids[at], int(items[at]) - len(ids[at]) - _ITEM_FRAME, max_bytes, first_row)
    # ends[k]: the bytes of the first k items, each with the comma after it.
    ends = np.concatenate([np.zeros(1, np.int64), np.cumsum(items + 1)])
    start = 0
    while start < n:
        fits = int(np.searchsorted(ends, ends[start] + max_bytes - _OVERHEAD + 1, side="right"))
        stop = min(fits - 1, start + max_requests, n)
        yield BatchPlan(tuple(ids[start:stop]), _OVERHEAD + int(ends[stop] - ends[start]) - 1)
        start = stop
