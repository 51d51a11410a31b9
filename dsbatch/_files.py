"""Part of the ledger: how every file of the cache is written and read (atomically, and with
errors that name the file), and how its lock files are held."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
from filelock import FileLock, Timeout

from dsbatch._errors import LedgerError

__all__ = [
    "append_entry",
    "arrow_bytes",
    "atomic_write",
    "atomic_write_named",
    "hold_lock",
    "read_arrow",
    "read_entries",
    "read_json",
    "stamp",
    "write_json",
]

log = logging.getLogger("dsbatch")


def atomic_write(
    path: Path,
    data: bytes | pa.Buffer | Iterable[bytes] | Callable[[BinaryIO], object],
    *,
    sync: bool = True,
) -> None:
    """Write a file whole or not at all: a temporary file, fsynced, then ``os.replace``.
    ``data`` is the bytes, chunks of them, or a function that writes them to a file.
    ``sync=False`` for a file read once by this process and never after a crash (a results
    download: what is stored from it is synced); syncing hundreds of MB only waits for the
    disk."""

    def write(f: BinaryIO) -> str:
        if callable(data):
            data(f)
        else:
            for chunk in [data] if isinstance(data, (bytes, pa.Buffer)) else data:
                f.write(chunk)
        return path.name

    _write(path.parent, f".{path.name}.", write, sync=sync, target=path)


def atomic_write_named(folder: Path, write: Callable[[BinaryIO], str]) -> Path:
    """Write a file of ``folder`` whole or not at all, named once written: ``write`` writes it
    and returns its name (a digest of what it wrote: one pass makes the file and its name)."""
    return _write(folder, ".named.", write, sync=True)


def _write(
    folder: Path,
    prefix: str,
    write: Callable[[BinaryIO], str],
    *,
    sync: bool,
    target: Path | None = None,
) -> Path:
    path = target or folder  # what an error names: the file, once its name is known
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                path = folder / write(f)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise LedgerError(f"cannot write {path}: {e}", path=str(path)) from e
    return path


def stamp(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime_ns) of a file: a file replaced (written anew) gets another."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def read_json(path: Path) -> Any:
    """The file's JSON; None when it does not exist; LedgerError when it cannot be read."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LedgerError(f"cannot read {path}: {e}", path=str(path)) from e


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def arrow_bytes(table: pa.Table) -> pa.Buffer:
    """A table as an Arrow IPC file (memory-mappable)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def read_arrow(path: Path) -> pa.Table:
    """A memory-mapped Arrow file; raises OSError / ArrowInvalid for the caller to name."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def append_entry(path: Path, entry: dict[str, Any]) -> None:
    """Add one JSON line to an append-only log, on disk before this returns (fsync)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(json.dumps(entry, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise LedgerError(f"cannot write {path}: {e}", path=str(path)) from e


def read_entries(path: Path) -> list[dict[str, Any]]:
    """Every entry of an append-only log that names a ``batch_id`` (a line torn by a crash is
    skipped); none when the log does not exist."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise LedgerError(f"cannot read {path}: {e}", path=str(path)) from e
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("batch_id"), str):
            entries.append(entry)
    return entries


@contextmanager
def hold_lock(path: Path, what: str, waiting: str, *, patience: float = 0.0) -> Iterator[None]:
    """Hold the lock file ``path``; after ``patience`` seconds of waiting, say so and wait on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=patience)
        except Timeout:
            log.warning("dsbatch: %s", waiting)
            lock.acquire()
    except OSError as e:
        raise LedgerError(f"cannot lock {what} ({path}): {e}", path=str(path)) from e
    try:
        yield
    finally:
        lock.release()
