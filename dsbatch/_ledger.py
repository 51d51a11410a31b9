"""The ledger: the only module that touches the cache directory.

Layout under the cache root (``cache_dir`` > ``DSBATCH_CACHE`` > ``$HF_HOME/dsbatch``)::

    FORMAT                              the on-disk format number
    requests/<batch_id>.parquet         every result ever downloaded, one row per custom_id
    jobs/<fingerprint>/manifest.json    what the job is (model, rows, options, state)
    jobs/<fingerprint>/requests.parquet custom_id -> canonical params, the exact bodies sent
    jobs/<fingerprint>/batches/*.json   one record per batch: intent first, then its batch_id
    jobs/<fingerprint>/downloads/       raw result bytes while they are being ingested
    jobs/<fingerprint>/output/*.arrow   the finished new columns, one file per split
    jobs/<fingerprint>/lock             held while a process works on the job

Every write is atomic (temporary file + ``os.replace``), so a crash leaves either the old file or
the new one. Results are shared by all jobs under one root: a request is never paid for twice.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from filelock import FileLock, Timeout

from dsbatch._errors import LedgerError

__all__ = [
    "FORMAT_VERSION",
    "RESULT_SCHEMA",
    "BatchRecord",
    "JobLedger",
    "Ledger",
    "resolve_cache_dir",
]

log = logging.getLogger("dsbatch")

FORMAT_VERSION = 1

# One row per downloaded result. `raw` keeps the whole result line, so anything derived later
# (a new parse function, structured columns) never needs the request to be paid again.
RESULT_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        ("type", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("stop_reason", pa.string()),
        ("text", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cache_read_input_tokens", pa.int64()),
        ("cache_creation_input_tokens", pa.int64()),
        ("batch_id", pa.string()),
        ("raw", pa.large_string()),
    ]
)

_JOIN_COLUMNS = [name for name in RESULT_SCHEMA.names if name != "raw"]


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: the argument, else ``DSBATCH_CACHE``, else ``$HF_HOME/dsbatch``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DSBATCH_CACHE")
    if env:
        return Path(env).expanduser()
    from huggingface_hub.constants import HF_HOME

    return Path(HF_HOME).expanduser() / "dsbatch"


def _atomic_write(path: Path, data: bytes | pa.Buffer | Iterable[bytes]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in [data] if isinstance(data, (bytes, pa.Buffer)) else data:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise LedgerError(f"cannot write {path}: {e}", path=str(path)) from e


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LedgerError(f"cannot read {path}: {e}", path=str(path)) from e


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def _write_table(path: Path, table: pa.Table) -> None:
    """Write a table atomically as Parquet."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    _atomic_write(path, sink.getvalue())


@dataclass
class BatchRecord:
    """What the ledger knows of one batch: written before create, completed after."""

    seq: int
    request_count: int
    intent_at: float
    key_hash: str
    custom_ids_file: str
    batch_id: str | None = None
    created_at: float | None = None
    # intent -> submitted (has a batch_id) -> ingested (results stored); or lost (the batch is
    # gone before its results were read: its requests are planned again).
    state: str = "intent"
    counts: dict[str, int] = field(default_factory=dict)
    # Batches a reconcile adopted that turned out to hold another job's requests.
    rejected: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class JobLedger:
    """The files of one job, under ``jobs/<fingerprint>/``."""

    def __init__(self, ledger: Ledger, fingerprint: str) -> None:
        self.ledger = ledger
        self.fingerprint = fingerprint
        self.dir = ledger.root / "jobs" / fingerprint

    # -- manifest ---------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        path = self.dir / "manifest.json"
        manifest = _read_json(path)
        if manifest is not None and not isinstance(manifest, dict):
            raise LedgerError(f"{path} is not a job manifest", path=str(path))
        if manifest is not None and manifest.get("format") != FORMAT_VERSION:
            raise LedgerError(
                f"job {self.fingerprint} was written in cache format {manifest.get('format')}, "
                f"this dsbatch reads format {FORMAT_VERSION}",
                path=str(self.dir),
            )
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        _write_json(self.dir / "manifest.json", {**manifest, "format": FORMAT_VERSION})

    # -- requests ---------------------------------------------------------------------------
    def has_requests(self) -> bool:
        return (self.dir / "requests.parquet").exists()

    def write_requests(self, custom_ids: Sequence[str], bodies: Sequence[bytes]) -> None:
        table = pa.table(
            {
                "custom_id": pa.array(custom_ids, pa.string()),
                "params": pa.array(bodies, pa.binary()),
            }
        )
        _write_table(self.dir / "requests.parquet", table)

    # -- batch records ----------------------------------------------------------------------
    def batch_records(self) -> list[BatchRecord]:
        records = []
        bdir = self.dir / "batches"
        if bdir.is_dir():
            for path in sorted(bdir.glob("*.json")):
                data = _read_json(path)
                try:
                    records.append(BatchRecord(**data))
                except TypeError as e:  # not a dict, or fields missing or unknown
                    raise LedgerError(f"unreadable batch record {path}: {e}", path=str(path)) from e
        return sorted(records, key=lambda r: r.seq)

    def new_batch_record(
        self, custom_ids: Sequence[str], *, key_hash: str, intent_at: float
    ) -> BatchRecord:
        existing = self.batch_records()
        seq = existing[-1].seq + 1 if existing else 0
        ids_file = f"{seq:06d}.ids"
        _atomic_write(self.dir / "batches" / ids_file, "\n".join(custom_ids).encode())
        record = BatchRecord(
            seq=seq,
            request_count=len(custom_ids),
            intent_at=intent_at,
            key_hash=key_hash,
            custom_ids_file=ids_file,
        )
        self.save_batch_record(record)
        return record

    def save_batch_record(self, record: BatchRecord) -> None:
        _write_json(self.dir / "batches" / f"{record.seq:06d}.json", record.to_json())

    def batch_custom_ids(self, record: BatchRecord) -> list[str]:
        path = self.dir / "batches" / record.custom_ids_file
        try:
            text = path.read_text()
        except OSError as e:
            raise LedgerError(f"cannot read {path}: {e}", path=str(path)) from e
        return text.split("\n") if text else []

    # -- downloads and output ---------------------------------------------------------------
    def store_download(self, batch_id: str, chunks: Iterable[bytes]) -> pa.Buffer:
        """Write a results download to disk as it streams in; once complete, returns it
        memory-mapped (a large download is never held in memory twice).

        A download that fails midway leaves no file behind.
        """
        path = self.dir / "downloads" / f"{batch_id}.jsonl"
        _atomic_write(path, chunks)
        try:
            if path.stat().st_size == 0:
                return pa.py_buffer(b"")
            with pa.memory_map(str(path)) as source:
                return source.read_buffer()
        except OSError as e:
            raise LedgerError(f"cannot read {path}: {e}", path=str(path)) from e

    def discard_download(self, batch_id: str) -> None:
        """Forget a download once its results are stored for good."""
        (self.dir / "downloads" / f"{batch_id}.jsonl").unlink(missing_ok=True)

    def output_path(self, split: str) -> Path:
        return self.dir / "output" / f"{split}.arrow"

    def write_output(self, split: str, table: pa.Table) -> str:
        """Store a split's finished columns as a memory-mappable Arrow file; returns a digest
        of its bytes, which changes whenever the answers do."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue()
        _atomic_write(self.output_path(split), data)
        return xxhash.xxh3_64_hexdigest(memoryview(data))

    def read_output(self, split: str) -> pa.Table | None:
        path = self.output_path(split)
        if not path.exists():
            return None
        try:
            return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        except (OSError, pa.ArrowInvalid) as e:
            raise LedgerError(f"cannot read finished output {path}: {e}", path=str(path)) from e

    @contextmanager
    def locked(self, timeout: float = -1) -> Iterator[None]:
        """Hold the job's lock: two processes never submit the same job at once."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.dir / "lock"), timeout=timeout)
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.warning(
                    "dsbatch: job %s is being run by another process; waiting for it",
                    self.fingerprint,
                )
                lock.acquire()
            try:
                yield
            finally:
                lock.release()
        except Timeout as e:
            raise LedgerError(
                f"job {self.fingerprint} is being run by another process (lock {lock.lock_file})",
                path=str(self.dir),
            ) from e


class Ledger:
    """The cache root: shared results plus one directory per job."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = resolve_cache_dir(cache_dir)
        try:
            (self.root / "requests").mkdir(parents=True, exist_ok=True)
            (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LedgerError(
                f"cannot create the cache directory {self.root}: {e}", path=str(self.root)
            ) from e
        fmt = self.root / "FORMAT"
        if fmt.exists():
            found = fmt.read_text().strip()
            if found != str(FORMAT_VERSION):
                raise LedgerError(
                    f"the cache at {self.root} is in format {found}; this dsbatch reads format "
                    f"{FORMAT_VERSION}: use another cache_dir or a matching dsbatch version",
                    path=str(self.root),
                )
        else:
            _atomic_write(fmt, f"{FORMAT_VERSION}\n".encode())

    def job(self, fingerprint: str) -> JobLedger:
        return JobLedger(self, fingerprint)

    def job_fingerprints(self) -> list[str]:
        return sorted(p.name for p in (self.root / "jobs").iterdir() if p.is_dir())

    def claimed_batch_ids(self) -> set[str]:
        """Every batch id a job in this cache has recorded as its own."""
        return {
            r.batch_id
            for fingerprint in self.job_fingerprints()
            for r in self.job(fingerprint).batch_records()
            if r.batch_id
        }

    # -- shared results ---------------------------------------------------------------------
    def write_results(self, batch_id: str, table: pa.Table) -> None:
        # A batch downloaded twice (a crash between write and record) rewrites the same rows.
        _write_table(self.root / "requests" / f"{batch_id}.parquet", table.cast(RESULT_SCHEMA))

    def results_for(self, custom_ids: pa.Array, *, batch_ids: Sequence[str] = ()) -> pa.Table:
        """Every stored result for these custom_ids: all ``succeeded`` ones anywhere in the cache,
        plus every result (any type) of the given batches. The (large) raw lines stay on disk:
        the table has every column of ``RESULT_SCHEMA`` but ``raw``."""
        wanted_batches = set(batch_ids)
        value_set = pa.array(custom_ids, pa.string())
        parts = []
        for path in sorted((self.root / "requests").glob("*.parquet")):
            try:
                # Look at the two small columns first: most files hold nothing for this job.
                keys = pq.read_table(path, columns=["custom_id", "type"])
                mask = pc.is_in(keys["custom_id"], value_set=value_set)
                if path.stem not in wanted_batches:
                    mask = pc.and_(mask, pc.equal(keys["type"], "succeeded"))
                if not pc.any(mask).as_py():
                    continue
                table = pq.read_table(path, columns=_JOIN_COLUMNS, schema=RESULT_SCHEMA)
                parts.append(table.filter(mask))
            except (OSError, pa.ArrowInvalid) as e:
                raise LedgerError(f"cannot read results file {path}: {e}", path=str(path)) from e
        if not parts:
            return RESULT_SCHEMA.empty_table().drop_columns(["raw"])
        return pa.concat_tables(parts)
