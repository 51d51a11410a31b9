"""The ledger: everything dsbatch keeps in the cache directory, and the only code that knows
where it is kept. It stores and reads; what to make of a missing or damaged record is
``_recovery``'s, what to send ``_plan``'s.

The ledger's modules, each the only one to touch its part of the cache:

- ``_ledger`` (this one): the root, its format and migration (``_migrate``), the cache lock, the
  journal, the rerun and origin indexes, and housekeeping;
- ``_ledger_job``: a job's manifest and batch records (``JobLedger``);
- ``_ledger_data``: a job's data files: requests, row maps, prefix groups, inputs, outputs;
- ``_store``: the results of every batch, their downloads, and the previews;
- ``_files``: how each file is written (atomically) and read, and how a lock file is held.

Layout under the cache root (``cache_dir`` > ``DSBATCH_CACHE`` > ``$HF_HOME/dsbatch``)::

    FORMAT                                the on-disk format number (3)
    lock                                  held briefly while a job decides what to send
    lock.turns                            how many times it was held (a step's second look)
    journal.jsonl                         every batch id ever created: never forgotten
    origins.json                          base URL -> where its answers come from (``_origin``)
    previews.jsonl                        answers bought by ``dsbatch.preview`` (``_store``)
    reruns/<key>.json                     a call's key -> the finished job it made (``_rerun``)
    results/<batch_id>.parquet            every result of a batch, one row per custom_id
    downloads/<batch_id>.<tag>.jsonl      raw result bytes while they are being ingested
    jobs/<fingerprint>/                   one job: ``_ledger_job`` and ``_ledger_data`` say what

Every write is atomic (temporary file + ``os.replace``); temporary files a killed process left
behind are swept when the cache is next opened. Results are shared by all jobs under one root:
a request is never paid for twice. The API key is never written: only a short hash of it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from dsbatch._errors import LedgerError
from dsbatch._files import (
    append_entry,
    atomic_write,
    hold_lock,
    read_entries,
    read_json,
    write_json,
)
from dsbatch._ledger_job import JobLedger, StaleRecord, ids_digest
from dsbatch._records import BatchRecord
from dsbatch._store import RESULT_SCHEMA, ResultsStore

__all__ = [
    "FORMAT_VERSION",
    "RESULT_SCHEMA",
    "JobLedger",
    "Ledger",
    "StaleRecord",
    "ids_digest",
    "resolve_cache_dir",
]

FORMAT_VERSION = 3

# A temporary file untouched this long belongs to a process that died.
_STALE_TMP_SECONDS = 600.0
# A finished download not stored this long was left by a process that died while ingesting.
_STALE_DOWNLOAD_SECONDS = 86400.0


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: the argument, else ``DSBATCH_CACHE``, else ``$HF_HOME/dsbatch``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DSBATCH_CACHE")
    if env:
        return Path(env).expanduser()
    from huggingface_hub.constants import HF_HOME

    return Path(HF_HOME).expanduser() / "dsbatch"


def _tree_bytes(path: Path) -> int:
    total = 0
    for child in path.rglob("*") if path.is_dir() else []:
        with suppress(OSError):
            if child.is_file():
                total += child.stat().st_size
    return total


class Ledger:
    """The cache root: shared results, the journal of batch ids, one directory per job."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = resolve_cache_dir(cache_dir)
        self.jobs_dir = self.root / "jobs"
        self.store = ResultsStore(self.root)
        # job fingerprint -> its ids files checked by this process (``JobLedger``): each step
        # reads the ids of the batches in flight through a new ``job()``.
        self.ids_checked: dict[str, dict[int, tuple[tuple[int, int, int], str]]] = {}
        self._open()

    def _open(self) -> None:
        fmt = self.root / "FORMAT"
        try:
            found = fmt.read_text().strip() if fmt.exists() else None
        except OSError as e:
            raise LedgerError(f"cannot read {fmt}: {e}", path=str(fmt)) from e
        if found == "":
            raise LedgerError(
                f"the cache format file {fmt} is empty; it should hold the number "
                f"{FORMAT_VERSION}. Write {FORMAT_VERSION} into it if this cache was made by "
                "this dsbatch, or use another cache_dir.",
                path=str(fmt),
            )
        if found in ("1", "2"):
            from dsbatch._migrate import migrate_format_1, migrate_format_2

            with self.locked():
                # Another process may have migrated it while we waited for the lock.
                found = fmt.read_text().strip()
                if found == "1":
                    migrate_format_1(self)
                    atomic_write(fmt, b"2\n")
                    found = "2"
                if found == "2":
                    migrate_format_2(self)
                    atomic_write(fmt, f"{FORMAT_VERSION}\n".encode())
        elif found is not None and found != str(FORMAT_VERSION):
            raise LedgerError(
                f"the cache at {self.root} is in format {found!r}; this dsbatch reads format "
                f"{FORMAT_VERSION}: use another cache_dir or a matching dsbatch version",
                path=str(self.root),
            )
        elif found is None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise LedgerError(
                    f"cannot create the cache directory {self.root}: {e}", path=str(self.root)
                ) from e
            atomic_write(fmt, f"{FORMAT_VERSION}\n".encode())
        self._sweep()

    def _sweep(self) -> None:
        """Remove temporary files a killed process left behind (never a live writer's)."""
        cutoff = time.time() - _STALE_TMP_SECONDS
        for path in self.root.rglob(".*.tmp"):
            with suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
        # A download left by a process that died before storing it (stored ones are removed).
        for path in (self.root / "downloads").glob("*.jsonl"):
            with suppress(OSError):
                if path.stat().st_mtime < time.time() - _STALE_DOWNLOAD_SECONDS:
                    path.unlink()

    def job(self, fingerprint: str) -> JobLedger:
        return JobLedger(self, fingerprint)

    def record_job(self, path: Path) -> str:
        """The fingerprint of the job a batch record file (``JobLedger.record_files``) is of."""
        return path.parent.parent.name

    def job_fingerprints(self) -> list[str]:
        jobs = self.jobs_dir
        return sorted(p.name for p in jobs.iterdir() if p.is_dir()) if jobs.is_dir() else []

    # -- housekeeping: what the cache holds, and removing what may go -------------------------
    def job_bytes(self, fingerprint: str) -> int:
        """Bytes on disk of one job's folder."""
        return _tree_bytes(self.jobs_dir / fingerprint)

    def results_files(self) -> dict[str, int]:
        """batch_id -> bytes of its stored results (and their index)."""
        return self.store.sizes()

    def other_bytes(self) -> int:
        """Bytes of what is neither a job nor stored results (journal, downloads, locks...)."""
        total = _tree_bytes(self.root)
        return total - _tree_bytes(self.jobs_dir) - _tree_bytes(self.root / "results")

    def remove_job(self, fingerprint: str) -> None:
        """Delete what one job keeps (its manifest, requests, row maps, inputs and finished
        columns), but not its batch records: they are what lets any job find those batches
        again (download their results when they are gone from the cache, count their
        attempts). The caller checked that nothing of it is in flight."""
        job = self.job(fingerprint)
        path = job.dir
        try:
            for child in path.iterdir() if path.is_dir() else []:
                if child == job.records_dir:
                    continue
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        except OSError as e:
            raise LedgerError(f"cannot remove {path}: {e}", path=str(path)) from e

    def remove_results(self, batch_id: str) -> None:
        """Delete one batch's stored results (downloaded again, or bought again, if needed)."""
        self.store.remove(batch_id)

    @contextmanager
    def locked(self) -> Iterator[int | None]:
        """The cache-wide lock: deciding what to send and writing the intent happen under it.
        Yields its turn: each holding of the lock counts one more (None when the count cannot
        be kept, in a read-only cache), so a holder can tell whether anyone held it since."""
        with hold_lock(self.root / "lock", f"the cache {self.root}", "waiting for the cache lock"):
            yield self._next_turn()

    def _next_turn(self) -> int | None:
        path = self.root / "lock.turns"
        try:
            with open(path, "a+b") as f:
                f.seek(0)
                try:
                    turn = int(f.read() or b"0") + 1
                except ValueError:  # torn by a crash: a fresh start no one's turn can match
                    turn = secrets.randbits(62)
                f.seek(0)
                f.truncate()
                f.write(b"%d" % turn)
            return turn
        except OSError:
            return None

    # -- the journal: every batch id ever created in this cache -------------------------------
    def journal_append(self, record: BatchRecord, *, released: str = "") -> None:
        """Remember the record's batch (or, ``released``, that it gave that batch back)."""
        entry = {
            "batch_id": released or record.batch_id,
            "released": bool(released),
            "job": record.job,
            "seq": record.seq,
            "created_at": record.created_at,
            "adopted": record.adopted,
            "intent_at": record.intent_at,
            "intent_server_at": record.intent_server_at,
            "key_hash": record.key_hash,
            "request_count": record.request_count,
            "ids_digest": record.ids_digest,
            "origin": record.origin,
        }
        append_entry(self.root / "journal.jsonl", entry)

    def journal(self) -> list[dict[str, Any]]:
        """Every journal entry that can be read (a line torn by a crash is skipped)."""
        return read_entries(self.root / "journal.jsonl")

    # -- a call's key -> the job that answered it, so a rerun need not render (``_rerun``) --
    def rerun_job(self, key: str) -> str | None:
        """The fingerprint of the job a call with this key finished, if one did."""
        try:
            found = read_json(self.root / "reruns" / f"{key}.json")
        except LedgerError:  # missing or damaged: the call renders, as without the index
            return None
        job = found.get("job") if isinstance(found, dict) else None
        return job if isinstance(job, str) and job else None

    def remember_rerun(self, key: str, fingerprint: str) -> None:
        """Remember that the call with this key was answered by this job."""
        write_json(self.root / "reruns" / f"{key}.json", {"job": fingerprint})

    # -- base URL -> origin, as the servers' answers identified them (see ``_origin``) -------
    def known_origin(self, base_url: str) -> str | None:
        try:
            known = read_json(self.root / "origins.json")
        except LedgerError:
            return None
        found = known.get(base_url) if isinstance(known, dict) else None
        return found if isinstance(found, str) and found else None

    def remember_origin(self, base_url: str, origin: str) -> None:
        path = self.root / "origins.json"
        with self.locked():
            try:
                known = read_json(path)
            except LedgerError:
                known = None
            known = known if isinstance(known, dict) else {}
            known[base_url] = origin
            write_json(path, known)
