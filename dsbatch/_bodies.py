"""The rendered requests of a job while it is prepared: custom_id -> canonical params (bytes).

A job's bodies are held in memory until they pass ``SPILL_BYTES``; past that they go to an
unnamed temporary file (removed by the system when it is closed, or the process ends), and only
where each one is stays in memory: a million requests of 400 bytes hold about 60 MB of
positions rather than about 420 MB of params. The job writes them to its requests file once
rendered (``JobLedger.write_requests``) and reads them back from there as its steps send them.

Reading every body (checks, the requests file) goes through the file in large sequential reads
(bodies are appended in the order they are rendered), so a pass costs about what a pass over
the bytes in memory costs.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import ItemsView, Iterator, MutableMapping, ValuesView
from typing import IO, Any

import numpy as np
import pyarrow as pa

__all__ = ["SPILL_BYTES", "Bodies"]

# Past this many bytes of params, bodies go to a temporary file (a job of 100,000 short
# requests stays in memory; one of a million does not).
SPILL_BYTES = 64 * 2**20

_WINDOW = 8 * 2**20  # bytes read at a time by a pass over every body
_LENGTH_BITS = 32  # a body is at most 256 MB (a batch's limit): its length fits 32 bits


class Bodies(MutableMapping[str, bytes]):
    """custom_id -> params, in the order first set, in memory or in a temporary file."""

    def __init__(self, spill_bytes: int | None = None) -> None:
        self._spill_bytes = SPILL_BYTES if spill_bytes is None else spill_bytes
        self._memory: dict[str, bytes] = {}
        self._held = 0  # bytes of params in memory
        # Once spilled: custom_id -> offset << 32 | length in the file, in the order first set.
        self._where: dict[str, int] | None = None
        self._file: IO[bytes] | None = None
        self._end = 0  # the file's size
        # No body ever set was longer (a bound: a body replaced by a shorter one leaves it).
        self.largest = 0

    @property
    def spilled(self) -> bool:
        return self._where is not None

    def empty_like(self) -> Bodies:
        """A new, empty store that spills past the same size."""
        return Bodies(self._spill_bytes)

    # -- the mapping ------------------------------------------------------------------------------
    def __setitem__(self, custom_id: str, body: bytes) -> None:
        if len(body) > self.largest:
            self.largest = len(body)
        if self._where is None:
            old = self._memory.get(custom_id)
            self._held += len(body) - (0 if old is None else len(old))
            self._memory[custom_id] = body
            if self._held > self._spill_bytes:
                self._spill()
            return
        self._where[custom_id] = self._append(body)

    def add(self, custom_id: str, body: bytes) -> bool:
        """Set a body not yet held (True), or leave the one held (False): render's one call per
        row for its check and its store."""
        if len(body) > self.largest:
            self.largest = len(body)
        if self._where is None:
            memory = self._memory
            if custom_id in memory:
                return False
            memory[custom_id] = body
            self._held += len(body)
            if self._held > self._spill_bytes:
                self._spill()
            return True
        if custom_id in self._where:
            return False
        self._where[custom_id] = self._append(body)
        return True

    def __getitem__(self, custom_id: str) -> bytes:
        if self._where is None:
            return self._memory[custom_id]
        at = self._where[custom_id]
        return self._read(at >> _LENGTH_BITS, at & _LENGTH_MASK)

    def __delitem__(self, custom_id: str) -> None:
        if self._where is None:
            self._held -= len(self._memory.pop(custom_id))
        else:
            del self._where[custom_id]  # its bytes stay in the file until it is closed

    def __iter__(self) -> Iterator[str]:
        return iter(self._memory if self._where is None else self._where)

    def __len__(self) -> int:
        return len(self._memory if self._where is None else self._where)

    def __contains__(self, custom_id: object) -> bool:
        return custom_id in (self._memory if self._where is None else self._where)

    def values(self) -> ValuesView[bytes]:
        return _Values(self)

    def items(self) -> ItemsView[str, bytes]:
        return _Items(self)

    def pairs(self) -> Iterator[tuple[str, bytes]]:
        """(custom_id, body) in order, read from the file in large sequential pieces."""
        if self._where is None:
            yield from self._memory.items()
            return
        window, start = b"", 0
        for custom_id, at in self._where.items():
            offset, length = at >> _LENGTH_BITS, at & _LENGTH_MASK
            if not (start <= offset and offset + length <= start + len(window)):
                start = offset
                window = self._read(offset, max(length, _WINDOW))
            yield custom_id, window[offset - start : offset - start + length]

    def column_groups(self, rows: int) -> Iterator[tuple[list[str], pa.Array]]:
        """(custom_ids, params as one Arrow binary array) of ``rows`` bodies at a time, in order.
        Spilled bodies written one after another (the usual: none replaced) are one read each
        group, made an array without a Python object per body."""
        ids_left = iter(self)
        if self._where is None:
            bodies_left = iter(self._memory.values())
            while ids := list(itertools.islice(ids_left, rows)):
                yield ids, pa.array(list(itertools.islice(bodies_left, len(ids))), pa.binary())
            return
        places = iter(self._where.values())
        while ids := list(itertools.islice(ids_left, rows)):
            at = np.fromiter(itertools.islice(places, len(ids)), np.int64, len(ids))
            offsets, lengths = at >> _LENGTH_BITS, at & _LENGTH_MASK
            first, size = int(offsets[0]), int(lengths.sum())
            if size < 2**31 and bool(np.all(offsets[1:] == offsets[:-1] + lengths[:-1])):
                ends = np.concatenate([np.zeros(1, np.int32), np.cumsum(lengths, dtype=np.int32)])
                data = self._read(first, size)
                if len(data) != size:
                    raise OSError(f"the bodies' temporary file read {len(data)} of {size} bytes")
                yield (
                    ids,
                    pa.Array.from_buffers(
                        pa.binary(), len(ids), [None, pa.py_buffer(ends), pa.py_buffer(data)]
                    ),
                )
            else:  # replaced bodies, or over what one array's offsets hold
                yield ids, pa.array([self[c] for c in ids], pa.binary())

    def __reduce__(self) -> tuple[Any, ...]:
        # To another process (``num_proc``): the bodies themselves, spilled again there.
        return (_rebuilt, (self._spill_bytes, list(self.pairs())))

    # -- the file ---------------------------------------------------------------------------------
    def _spill(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="dsbatch-bodies-")  # noqa: SIM115 - closed by close()
        self._where = {}
        for custom_id, body in self._memory.items():
            self._where[custom_id] = self._append(body)
        self._memory, self._held = {}, 0

    def _append(self, body: bytes) -> int:
        assert self._file is not None
        self._file.write(body)
        at = self._end << _LENGTH_BITS | len(body)
        self._end += len(body)
        return at

    def _read(self, offset: int, length: int) -> bytes:
        assert self._file is not None
        self._file.flush()
        return os.pread(self._file.fileno(), length, offset)

    def close(self) -> None:
        """Let the temporary file go (also done when the store is collected)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:
        self.close()


_LENGTH_MASK = (1 << _LENGTH_BITS) - 1


def _rebuilt(spill_bytes: int, pairs: list[tuple[str, bytes]]) -> Bodies:
    bodies = Bodies(spill_bytes)
    for custom_id, body in pairs:
        bodies[custom_id] = body
    return bodies


class _Values(ValuesView[bytes]):
    _mapping: Bodies

    def __iter__(self) -> Iterator[bytes]:
        return (body for _, body in self._mapping.pairs())


class _Items(ItemsView[str, bytes]):
    _mapping: Bodies

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return self._mapping.pairs()
