"""An ended batch's results file: its JSONL lines encoded once, then served as stored bytes.

The real API writes a batch's results file once, when the batch ends, and every download
streams that file. The emulator does the same: a download reads stored bytes and builds no
Message, so the cost of a download is the client's, as it is against the API. Small files stay
in memory; a file past ``SPOOL_BYTES`` goes to an anonymous temporary file (already unlinked:
the operating system frees it when the batch is deleted or the emulator is gone), so a 100k
batch costs the emulator's process a few hundred KB of line offsets, not its bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = ["SPOOL_BYTES", "ResultsFile"]

SPOOL_BYTES = 1 << 20  # a results file larger than this lives on disk, not in memory
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class ResultsFile:
    """The encoded lines of one form (standard or beta) of one batch's results."""

    def __init__(self, lines: Iterable[tuple[str, dict[str, Any]]]) -> None:
        self._ends = array("q")  # byte offset just past each line's newline
        self._memory: bytes | None = None
        self._file: IO[bytes] | None = None
        buffer: list[bytes] = []
        pending = size = 0
        for custom_id, result in lines:
            line = (_encode({"custom_id": custom_id, "result": result}) + "\n").encode()
            buffer.append(line)
            pending += len(line)
            size += len(line)
            self._ends.append(size)
            if pending >= SPOOL_BYTES:
                self._spill(buffer)
                buffer, pending = [], 0
        if self._file is None:
            self._memory = b"".join(buffer)
        else:
            self._spill(buffer)
            self._file.flush()
        self.size = size

    def _spill(self, buffer: list[bytes]) -> None:
        if self._file is None:
            # Kept open for the life of the batch; closed when it is dropped.
            self._file = tempfile.TemporaryFile(prefix="dsbatch-emulator-results-")  # noqa: SIM115
        self._file.write(b"".join(buffer))

    @property
    def lines(self) -> int:
        return len(self._ends)

    def end_of(self, lines: int) -> int:
        """The byte offset just past the first ``lines`` lines."""
        return self._ends[lines - 1] if lines > 0 else 0

    def read(self, start: int, stop: int, chunk: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``stop`` in pieces of at most ``chunk``; safe from any thread
        (a positioned read: downloads of one batch share no file position)."""
        for at in range(start, stop, chunk):
            n = min(chunk, stop - at)
            if self._memory is not None:
                yield self._memory[at : at + n]
            else:
                assert self._file is not None
                data = os.pread(self._file.fileno(), n, at)
                if len(data) != n:
                    raise OSError(f"results file read {len(data)} of {n} bytes at {at}")
                yield data

    def body(self) -> bytes:
        """The whole file (tests and introspection)."""
        return b"".join(self.read(0, self.size, 1 << 24))
