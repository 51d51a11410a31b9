"""Part of the ledger: the results store shared by every job of a cache, and downloads.

    results/<batch_id>.parquet     every result line of a batch (``RESULT_SCHEMA``)
    results/<batch_id>.keys.arrow  its index: a 64-bit hash of each custom_id, sorted, and the
                                   row it is on (rebuilt from the Parquet file when missing)
    downloads/<batch_id>.<tag>.jsonl  raw result bytes while they are being ingested (one
                                   file per download: two calls may read one batch at once)
    previews.jsonl                 answers bought by ``dsbatch.preview``, stored as results
                                   under a batch id of their own (``preview_...``): that id,
                                   its origin, when, how many

A preview's answers come from the Messages API, not from a batch: nothing can download them
again, and they serve only runs at their origin (recorded before they are stored).

A request is never paid for twice anywhere in the cache: every job looks in every batch's
results. The index makes that look cost the same whatever the cache holds: a job's custom_ids
are hashed once and searched (binary search, memory-mapped) in each batch's index; only the
batches that hold some of them are read. What a process has read is remembered while the files
are unchanged (their size and modification time), so a job's steps do not read it again.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from dsbatch._arrow import whole
from dsbatch._errors import LedgerError
from dsbatch._files import append_entry, arrow_bytes, atomic_write, read_arrow, read_entries

__all__ = [
    "PREVIEW_PREFIX",
    "RESULT_SCHEMA",
    "Found",
    "ResultsStore",
    "custom_id_key",
    "custom_id_keys",
    "is_preview",
]

log = logging.getLogger("dsbatch")

# One row per result of one attempt. `raw` keeps the whole result line, so anything derived
# later (a new parse function, structured columns) never needs the request to be paid again.
RESULT_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        ("type", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("stop_reason", pa.string()),
        ("text", pa.string()),  # the text blocks joined; null when there is none
        ("tool_input", pa.string()),  # the first tool call's input as JSON text, if any
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cache_read_input_tokens", pa.int64()),
        ("cache_creation_input_tokens", pa.int64()),
        ("batch_id", pa.string()),
        ("batch_created_at", pa.float64()),
        ("problem", pa.string()),  # why part of the line could not be read, if it could not
        ("raw", pa.large_string()),
    ]
)
_KEY_COLUMNS = [name for name in RESULT_SCHEMA.names if name != "raw"]
# The batch id under which a preview's answers are stored (no batch of the API starts so).
PREVIEW_PREFIX = "preview_"


def is_preview(batch_id: str | None) -> bool:
    """Whether results under ``batch_id`` were bought by ``dsbatch.preview`` (standard price,
    through the Messages API), not in a batch."""
    return bool(batch_id) and str(batch_id).startswith(PREVIEW_PREFIX)


_INDEX_SCHEMA = pa.schema([("key", pa.uint64()), ("row", pa.int64())])
_INDEX_SUFFIX = ".keys.arrow"


def custom_id_keys(custom_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The 64-bit index key of each custom_id, the same whatever array it comes in: an id of
    dsbatch's form (``dsb_`` + 32 hex digits, a hash already, and any suffix, e.g. a sample's)
    gives its first 16 hex digits, read in bulk; any other id its xxh3. Ids sharing a key
    (a request and its samples) are told apart by the ids themselves."""
    ids = whole(custom_ids).cast(pa.string())
    n = len(ids)
    keys = np.zeros(n, dtype=np.uint64)
    if n == 0:
        return keys
    ours = np.zeros(n, dtype=bool)
    buffers = ids.buffers()
    if ids.null_count == 0 and buffers[2] is not None and buffers[2].size >= _ID_LENGTH:
        offsets = np.frombuffer(buffers[1], dtype=np.int32)[ids.offset : ids.offset + n + 1]
        data = np.frombuffer(buffers[2], dtype=np.uint8)
        starts = offsets[:-1].astype(np.int64)
        long_enough = np.diff(offsets) >= _ID_LENGTH
        if (np.diff(offsets) == _ID_LENGTH).all():  # the usual case: a (n, 36) block of bytes
            block = data[int(starts[0]) : int(starts[0]) + n * _ID_LENGTH].reshape(n, _ID_LENGTH)
        else:
            at = np.where(long_enough, starts, 0)
            block = data[np.minimum(at[:, None] + np.arange(_ID_LENGTH), len(data) - 1)]
        nibbles = _NIBBLE[block[:, len(_ID_PREFIX) : len(_ID_PREFIX) + 16]]
        ours = (
            long_enough
            & (nibbles != 255).all(axis=1)
            & (block[:, : len(_ID_PREFIX)] == _PREFIX_BYTES).all(axis=1)
        )
        packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
        keys = np.ascontiguousarray(packed).view(">u8").ravel().astype(np.uint64)
    if not ours.all():
        digest = xxhash.xxh3_64_intdigest
        others = np.flatnonzero(~ours)
        values = ids.take(pa.array(others)).to_pylist()
        keys[others] = [digest((v or "").encode()) for v in values]
    return keys


def custom_id_key(custom_id: str) -> int:
    """``custom_id_keys`` of one custom_id, without making arrays of it."""
    data = custom_id.encode()
    head = data[len(_ID_PREFIX) : len(_ID_PREFIX) + 16]
    if len(data) >= _ID_LENGTH and data.startswith(_PREFIX) and _HEX.issuperset(head):
        return int(head, 16)
    return xxhash.xxh3_64_intdigest(data)


_ID_PREFIX = "dsb_"
_PREFIX = _ID_PREFIX.encode()
_HEX = frozenset(b"0123456789abcdef")
_ID_LENGTH = len(_ID_PREFIX) + 32
_PREFIX_BYTES = np.frombuffer(_ID_PREFIX.encode(), dtype=np.uint8)
_NIBBLE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _NIBBLE[_c] = _i


@dataclass
class _Seen:
    """What this process read of one results file, while the file is unchanged."""

    stamp: tuple[int, int]  # (size, mtime_ns) of the Parquet file
    keys: np.ndarray  # sorted uint64
    rows: np.ndarray  # the row of each key
    # needed's digest -> its rows, and the position in needed of each row's custom_id
    hits: dict[int, tuple[pa.Table, np.ndarray]] = field(default_factory=dict)


class Found(NamedTuple):
    """What ``ResultsStore.results_for`` found for a job's custom_ids."""

    results: pa.Table  # every stored result of every attempt of them (without ``raw``)
    at: np.ndarray  # the position of each result's custom_id among the ids asked for
    unreadable: set[str]  # batches whose results file cannot be read (downloaded again)


@dataclass
class _Wanted:
    """The custom_ids one survey asks for, by their 64-bit keys."""

    token: int  # the ids' digest
    ids: pa.Array
    keys: np.ndarray  # sorted, each once
    first: np.ndarray  # the first id of each key (its position in ``ids``)
    shared: np.ndarray  # whether several ids share the key (a request and its samples)
    sharing: pa.Array  # the ids whose key another id shares
    sharing_at: np.ndarray  # their positions in ``ids``
    # other ids' positions among these (``ResultsStore.locate``), by the other ids' digest
    located: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, ids: pa.Array, token: int) -> _Wanted:
        id_keys = custom_id_keys(ids)
        keys, first, counts = np.unique(id_keys, return_index=True, return_counts=True)
        shared = counts > 1
        if shared.any():
            sharing_at = np.flatnonzero(np.isin(id_keys, keys[shared]))
        else:
            sharing_at = np.zeros(0, dtype=np.int64)
        sharing = ids.take(pa.array(sharing_at, pa.int64()))
        return cls(token, ids, keys, first, shared, sharing, sharing_at)

    def positions(self, custom_ids: pa.ChunkedArray | pa.Array, which: np.ndarray) -> np.ndarray:
        """The position in ``ids`` of each of ``custom_ids``, found by the key ``keys[which]``;
        -1 where the id itself is not wanted (a 64-bit key may be another id's): compared with
        the one wanted id of its key, or looked up among the ids sharing their key. Never a
        lookup among all the wanted ids: a job wants a million, and each new results file was
        checked against them all."""
        first = self.first[which]
        same = pc.equal(custom_ids, self.ids.take(pa.array(first, pa.int64())))
        at = np.where(whole(same).to_numpy(zero_copy_only=False), first, -1)
        shared = np.flatnonzero(self.shared[which])
        if len(shared):
            among = pc.index_in(whole(custom_ids).take(pa.array(shared)), value_set=self.sharing)
            found = among.fill_null(-1).to_numpy(zero_copy_only=False)
            at[shared] = np.where(found >= 0, self.sharing_at[found], -1)
        return at.astype(np.int64)

    def locate(self, custom_ids: pa.Array) -> np.ndarray:
        """The position in ``ids`` of each of ``custom_ids`` (-1: not one of them)."""
        keys = custom_id_keys(custom_ids)
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        which = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        at = self.positions(custom_ids, which)
        at[self.keys[which] != keys] = -1
        return at


class ResultsStore:
    """The results of every batch of one cache, one Parquet file per batch."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen: dict[str, _Seen] = {}
        self._downloads: dict[str, list[Path]] = {}  # batch_id -> this store's downloads
        # The custom_ids last asked for, by their digest: a job asks for the same million ids on
        # every step.
        self._wanted: _Wanted | None = None
        # The rows (without ``raw``) of the results file this process wrote last, by batch id
        # and the file's stamp: the next survey finds its hits in them instead of reading back
        # what was just written. One file's at a time: batches ending together hold no more.
        self._written: tuple[str, tuple[int, int], pa.Table] | None = None

    def path(self, batch_id: str) -> Path:
        return self.root / "results" / f"{batch_id}.parquet"

    def has(self, batch_id: str) -> bool:
        """Whether the batch's results are stored and readable."""
        path = self.path(batch_id)
        try:
            stamp = _stamp(path)
        except OSError:
            return False
        seen = self._seen.get(batch_id)
        if seen is not None and seen.stamp == stamp:
            return True
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowInvalid):
            return False
        return True

    def sizes(self) -> dict[str, int]:
        """batch_id -> bytes of its stored results (and their index)."""
        rdir = self.root / "results"
        out = {}
        for path in sorted(rdir.glob("*.parquet")) if rdir.is_dir() else []:
            with suppress(OSError):
                index = path.with_name(path.stem + _INDEX_SUFFIX)
                out[path.stem] = path.stat().st_size + (
                    index.stat().st_size if index.exists() else 0
                )
        return out

    def remove(self, batch_id: str) -> None:
        """Delete one batch's stored results and their index."""
        self._seen.pop(batch_id, None)
        if self._written is not None and self._written[0] == batch_id:
            self._written = None
        for path in (self.path(batch_id), self.root / "results" / f"{batch_id}{_INDEX_SUFFIX}"):
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                raise LedgerError(f"cannot remove {path}: {e}", path=str(path)) from e

    def write(self, batch_id: str, table: pa.Table) -> None:
        # A batch downloaded twice (a crash between write and record) rewrites the same rows.
        table = table.cast(RESULT_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path = self.path(batch_id)
        atomic_write(path, sink.getvalue())
        stamp = _stamp(path)
        self._write_index(batch_id, table["custom_id"], stamp)
        self._written = (batch_id, stamp, table.select(_KEY_COLUMNS))

    def _write_index(
        self, batch_id: str, custom_ids: pa.ChunkedArray | pa.Array, stamp: tuple[int, int]
    ) -> _Seen:
        keys = custom_id_keys(custom_ids)
        order = np.argsort(keys, kind="stable")
        seen = _Seen(stamp, keys[order], order.astype(np.int64))
        index = pa.table(
            {"key": pa.array(seen.keys), "row": pa.array(seen.rows)}, schema=_INDEX_SCHEMA
        ).replace_schema_metadata({"parquet": json.dumps(list(stamp))})
        try:
            atomic_write(self.root / "results" / f"{batch_id}{_INDEX_SUFFIX}", arrow_bytes(index))
        except LedgerError as e:  # a read-only cache: kept in this process only
            log.info("dsbatch: could not write the index of %s: %s", batch_id, e)
        self._seen[batch_id] = seen
        return seen

    def _index(self, batch_id: str, stamp: tuple[int, int]) -> _Seen:
        """The batch's index: remembered, read from its file, or rebuilt from the results."""
        seen = self._seen.get(batch_id)
        if seen is not None and seen.stamp == stamp:
            return seen
        path = self.root / "results" / f"{batch_id}{_INDEX_SUFFIX}"
        try:
            index = read_arrow(path)
            written = json.loads((index.schema.metadata or {}).get(b"parquet", b"null"))
            if written == list(stamp):
                seen = _Seen(
                    stamp,
                    index["key"].to_numpy(zero_copy_only=False),
                    index["row"].to_numpy(zero_copy_only=False),
                )
                self._seen[batch_id] = seen
                return seen
        except (OSError, pa.ArrowInvalid, KeyError, ValueError):
            pass  # missing, damaged or stale: rebuilt below
        ids = pq.read_table(self.path(batch_id), columns=["custom_id"])["custom_id"]
        return self._write_index(batch_id, ids, stamp)

    def results_for(self, custom_ids: pa.Array) -> Found:
        """Every stored result of every attempt for these custom_ids (without ``raw``), where
        each result's id is among them, and the batches whose results file cannot be read.

        What was found for the same custom_ids in a file that has not changed is not read
        again (a job's steps ask the same every time)."""
        wanted = self._wanted_for(custom_ids)
        token = wanted.token
        parts, at, unreadable = [], [], set()
        rdir = self.root / "results"
        for path in sorted(rdir.glob("*.parquet")) if rdir.is_dir() else []:
            batch_id = path.stem
            try:
                stamp = _stamp(path)
                seen = self._index(batch_id, stamp)
                hit = seen.hits.get(token)
                if hit is None:
                    hit = self._hits(path, batch_id, seen, wanted)
                    seen.hits = {token: hit}  # one job's at a time
                if hit[0].num_rows:
                    parts.append(hit[0])
                    at.append(hit[1])
            except (OSError, pa.ArrowInvalid) as e:
                log.warning("dsbatch: the results file %s cannot be read (%s)", path, e)
                unreadable.add(batch_id)
                self._seen.pop(batch_id, None)
        if not parts:
            return Found(_EMPTY, np.zeros(0, dtype=np.int64), unreadable)
        return Found(pa.concat_tables(parts), np.concatenate(at), unreadable)

    def locate(self, custom_ids: pa.Array, among: pa.Array) -> np.ndarray:
        """The position of each of ``custom_ids`` in ``among`` (-1: not there), found by their
        keys as ``results_for`` finds results. A job asks for the same ids (those of its
        batches in flight) on every step: the answer is kept for the same ``among``."""
        wanted = self._wanted_for(among)
        digest = _digest(pa.array(custom_ids, pa.string()))
        at = wanted.located.get(digest)
        if at is None:
            if len(wanted.located) >= _LOCATED_KEPT:
                wanted.located.clear()
            at = wanted.located[digest] = wanted.locate(custom_ids)
        return at

    def _wanted_for(self, custom_ids: pa.Array) -> _Wanted:
        value_set = pa.array(custom_ids, pa.string())
        token = _digest(value_set)
        if self._wanted is None or self._wanted.token != token:
            self._wanted = _Wanted.of(value_set, token)
        return self._wanted

    def _hits(
        self, path: Path, batch_id: str, seen: _Seen, wanted: _Wanted
    ) -> tuple[pa.Table, np.ndarray]:
        """The rows of one results file whose custom_id is wanted, and its position among the
        wanted ids: taken from the rows this process just wrote to it when it is that file,
        unchanged."""
        written = self._written
        if written is not None and written[0] == batch_id:
            self._written = None  # read once: its rows are then kept as hits
        left = np.searchsorted(seen.keys, wanted.keys, side="left")
        right = np.searchsorted(seen.keys, wanted.keys, side="right")
        found = right > left
        if not found.any():
            return _EMPTY, np.zeros(0, dtype=np.int64)
        spans = _spans(left[found], right[found])
        # For each row found, the wanted key it was found by.
        which = np.repeat(np.flatnonzero(found), (right - left)[found])
        found_rows = seen.rows[spans]
        order = np.argsort(found_rows, kind="stable")
        rows, which = pa.array(found_rows[order]), which[order]
        if written is not None and written[:2] == (batch_id, seen.stamp):
            table = written[2].take(rows)
        else:
            table = pq.read_table(path, columns=_KEY_COLUMNS, schema=RESULT_SCHEMA).take(rows)
        at = wanted.positions(table["custom_id"], which)
        mine = at >= 0
        return table.filter(pa.array(mine)), at[mine]

    def table(self, batch_id: str, columns: Sequence[str] = ("custom_id", "type")) -> pa.Table:
        """Some columns of one batch's stored results."""
        path = self.path(batch_id)
        try:
            return pq.read_table(path, columns=list(columns))
        except (OSError, pa.ArrowInvalid) as e:
            raise LedgerError(f"cannot read results file {path}: {e}", path=str(path)) from e

    def raw_lines(self, batch_id: str, custom_ids: pa.Array) -> dict[str, str]:
        """The raw result lines of these custom_ids in one batch."""
        table = self.table(batch_id, ["custom_id", "raw"])
        table = table.filter(pc.is_in(table["custom_id"], value_set=custom_ids))
        return dict(zip(table["custom_id"].to_pylist(), table["raw"].to_pylist(), strict=True))

    # -- downloads ----------------------------------------------------------------------------
    def store_download(self, batch_id: str, chunks: Iterable[bytes]) -> pa.Buffer:
        """Write a results download to disk as it streams in; once complete, return it
        memory-mapped (a large download is never held in memory twice). A download that fails
        midway leaves no file behind. Each download has a file of its own: two calls reading
        one batch at once never remove each other's."""
        path = self.root / "downloads" / f"{batch_id}.{secrets.token_hex(6)}.jsonl"
        atomic_write(path, chunks, sync=False)
        self._downloads.setdefault(batch_id, []).append(path)
        try:
            if path.stat().st_size == 0:
                return pa.py_buffer(b"")
            with pa.memory_map(str(path)) as source:
                return source.read_buffer()
        except OSError as e:
            raise LedgerError(f"cannot read {path}: {e}", path=str(path)) from e

    def discard_download(self, batch_id: str) -> None:
        """Forget this store's downloads of a batch once its results are stored for good."""
        for path in self._downloads.pop(batch_id, []):
            path.unlink(missing_ok=True)

    # -- answers bought through the Messages API (``dsbatch.preview``) -------------------------
    def remember_preview(
        self, batch_id: str, origin: str, created_at: float, requests: int
    ) -> None:
        """Record where a preview's answers come from; called before they are stored (results
        that no one recorded would serve every origin)."""
        entry = {
            "batch_id": batch_id,
            "origin": origin,
            "created_at": created_at,
            "requests": requests,
        }
        append_entry(self.root / "previews.jsonl", entry)

    def previews(self) -> list[dict[str, Any]]:
        """Every preview recorded (a line torn by a crash is skipped)."""
        return read_entries(self.root / "previews.jsonl")


_EMPTY = RESULT_SCHEMA.empty_table().drop_columns(["raw"])
# Answers of ``ResultsStore.locate`` kept for one job's ids: its batches in flight, and more.
_LOCATED_KEPT = 64


def _digest(ids: pa.Array) -> int:
    """What a memo of hits is kept under: the ids themselves (their keys are not enough: a
    request and its samples share one, so jobs of 3 and 5 samples have the same keys)."""
    h = xxhash.xxh3_64(f"{ids.offset}:{len(ids)}".encode())
    for buffer in ids.buffers():
        if buffer is not None:
            h.update(memoryview(buffer))
    return h.intdigest()


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _spans(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Every position of the spans ``starts[i]:stops[i]`` (none empty), in order, made by
    numpy (a span per wanted id: a Python loop over them cost 0.2 s per 100,000)."""
    lengths = stops - starts
    ends = np.cumsum(lengths)
    # Position k of span i is starts[i] + (k - where span i begins in the output).
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0)
