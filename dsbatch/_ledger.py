"""The ledger: the only module that touches the cache directory.

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
    jobs/<fingerprint>/manifest.json      what the job is (splits, model, state, outputs)
    jobs/<fingerprint>/requests.parquet   custom_id -> canonical params, the exact bodies sent,
                                          and each one's model
    jobs/<fingerprint>/rows/<split>.arrow row -> custom_id of each split (null: skipped)
    jobs/<fingerprint>/prefix_groups.arrow custom_id -> its shared prompt prefix (``_priming``)
    jobs/<fingerprint>/batches/<seq>.json one record per batch (see ``_records``)
    jobs/<fingerprint>/batches/<seq>.ids.arrow   the custom_ids of that batch
    jobs/<fingerprint>/output/<split>.arrow      the finished new columns
    jobs/<fingerprint>/inputs/<split>.pkl        the input rows, or a reference to their files
    jobs/<fingerprint>/lock               held while one record or the manifest changes

Every write is atomic (temporary file + ``os.replace``); temporary files a killed process left
behind are swept when the cache is next opened. Results are shared by all jobs under one root:
a request is never paid for twice. The API key is never written: only a short hash of it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from filelock import FileLock, Timeout

from dsbatch._errors import LedgerError
from dsbatch._files import (
    append_entry,
    arrow_bytes,
    atomic_write,
    read_arrow,
    read_entries,
    read_json,
    write_json,
)
from dsbatch._records import BatchRecord, BatchState, Manifest, RecordError, record_from_journal
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

log = logging.getLogger("dsbatch")

_T = TypeVar("_T")

FORMAT_VERSION = 3

# Requests per row group of a job's requests file: what a step reads to send a batch's part.
REQUEST_GROUP_ROWS = 16_384

# A temporary file untouched this long belongs to a process that died.
_STALE_TMP_SECONDS = 600.0
# A finished download not stored this long was left by a process that died while ingesting.
_STALE_DOWNLOAD_SECONDS = 86400.0
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: the argument, else ``DSBATCH_CACHE``, else ``$HF_HOME/dsbatch``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DSBATCH_CACHE")
    if env:
        return Path(env).expanduser()
    from huggingface_hub.constants import HF_HOME

    return Path(HF_HOME).expanduser() / "dsbatch"


def ids_digest(custom_ids: Iterable[str]) -> str:
    """A digest of a batch's custom_ids in any order, stored in its record to check the ids
    file against (and ids rebuilt from results, which come in any order)."""
    return xxhash.xxh3_64_hexdigest("\n".join(sorted(custom_ids)).encode())


def _file_name(split: str) -> str:
    """A file name for a split: the name itself when it is safe, else a hash of it."""
    if _SAFE_NAME.fullmatch(split):
        return split
    return "split-" + xxhash.xxh3_64_hexdigest(split.encode())


@contextmanager
def _lock(path: Path, what: str, waiting: str, *, patience: float = 0.0) -> Iterator[None]:
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


def _tree_bytes(path: Path) -> int:
    total = 0
    for child in path.rglob("*") if path.is_dir() else []:
        with suppress(OSError):
            if child.is_file():
                total += child.stat().st_size
    return total


class StaleRecord(Exception):
    """A batch record moved under us: another call acted on the batch first."""


class JobLedger:
    """The files of one job, under ``jobs/<fingerprint>/``."""

    def __init__(self, ledger: Ledger, fingerprint: str) -> None:
        self.ledger = ledger
        self.fingerprint = fingerprint
        self.dir = ledger.root / "jobs" / fingerprint

    # -- manifest -----------------------------------------------------------------------------
    def read_manifest(self) -> Manifest | None:
        """The manifest; None when it is missing or damaged (it is rebuilt from the call)."""
        path = self.dir / "manifest.json"
        try:
            data = read_json(path)
            return None if data is None else Manifest.from_json(data)
        except (LedgerError, RecordError) as e:
            log.warning("dsbatch: the manifest %s is damaged (%s); rebuilding it", path, e)
            return None

    def write_manifest(self, manifest: Manifest) -> None:
        write_json(self.dir / "manifest.json", manifest.to_json())

    def update_manifest(self, start: Manifest, apply: Callable[[Manifest], None]) -> Manifest:
        """Apply ``apply`` to the stored manifest (``start`` when there is none) under the job's
        lock: two calls running one job never undo each other's change."""
        with self._lock():
            manifest = self.read_manifest() or start
            apply(manifest)
            self.write_manifest(manifest)
        return manifest

    # -- requests and rows --------------------------------------------------------------------
    def has_requests(self) -> bool:
        return (self.dir / "requests.parquet").exists()

    def write_requests(self, requests: Iterable[tuple[str, bytes, str | None]]) -> None:
        """Keep every request: (custom_id, params, model), the model beside the params (read
        alone, without them, to price its answer). Written a row group at a time
        (``REQUEST_GROUP_ROWS``), in the order given, which is the order batches are cut in: a
        step reads the groups of the batch it sends (``read_request_group``), and no copy of
        every body is ever made."""
        schema = pa.schema(
            [("custom_id", pa.string()), ("params", pa.binary()), ("model", pa.string())]
        )

        def write(f: BinaryIO) -> None:
            with pq.ParquetWriter(f, schema) as writer:
                it = iter(requests)
                while group := list(itertools.islice(it, REQUEST_GROUP_ROWS)):
                    ids, bodies, models = zip(*group, strict=True)
                    columns = [
                        pa.array(ids, pa.string()),
                        pa.array(bodies, pa.binary()),
                        pa.array(models, pa.string()),
                    ]
                    writer.write_table(
                        pa.table(columns, schema=schema), row_group_size=REQUEST_GROUP_ROWS
                    )

        atomic_write(self.dir / "requests.parquet", write)

    def _requests_file(self, read: Callable[[Path], _T]) -> _T:
        """What ``read`` gets of the job's requests file; a LedgerError naming it if it cannot."""
        path = self.dir / "requests.parquet"
        try:
            return read(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise LedgerError(
                f"cannot read the requests of job {self.fingerprint} ({path}): {e}",
                path=str(path),
            ) from e

    def request_groups(self) -> list[int]:
        """The number of requests in each row group of the requests file."""
        meta = self._requests_file(pq.read_metadata)
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def read_request_group(self, group: int) -> list[bytes]:
        """The params of the requests of one row group of the requests file, in its order."""
        table = self._requests_file(
            lambda path: pq.ParquetFile(path).read_row_group(group, columns=["params"])
        )
        return table["params"].to_pylist()

    def read_requests(self) -> dict[str, bytes]:
        """custom_id -> the exact params sent, of every request of the job."""
        table = self._requests_file(pq.read_table)
        return dict(zip(table["custom_id"].to_pylist(), table["params"].to_pylist(), strict=True))

    def request_ids(self) -> pa.Array | None:
        """Every custom_id the job asks for (None if its requests file cannot be read): a bound
        on what any of its batches holds."""
        try:
            table = pq.read_table(self.dir / "requests.parquet", columns=["custom_id"])
        except (OSError, pa.ArrowInvalid):
            return None
        return table["custom_id"].combine_chunks()

    def request_models(self) -> dict[str, str | None] | None:
        """custom_id -> the model of every request of the job, read without the params; None
        when the requests file holds no models (a job of an older dsbatch) or cannot be read."""
        try:
            table = pq.read_table(self.dir / "requests.parquet", columns=["custom_id", "model"])
        except (OSError, pa.ArrowInvalid, KeyError):
            return None
        return dict(zip(table["custom_id"].to_pylist(), table["model"].to_pylist(), strict=True))

    def request_params(self) -> pa.Table | None:
        """The params and model of every request, as Arrow columns (no Python object per
        request); None when the requests file holds no models (a job of an older dsbatch) or
        cannot be read."""
        try:
            return pq.read_table(self.dir / "requests.parquet", columns=["params", "model"])
        except (OSError, pa.ArrowInvalid, KeyError):
            return None

    def write_rows(self, split: str, custom_ids: Sequence[str | None]) -> None:
        """Row -> custom_id of one split, so the job can be collected without its dataset."""
        path = self.dir / "rows" / f"{_file_name(split)}.arrow"
        table = pa.table({"custom_id": pa.array(custom_ids, pa.string())})
        atomic_write(path, arrow_bytes(table))

    def read_rows(self, split: str) -> pa.Array | None:
        path = self.dir / "rows" / f"{_file_name(split)}.arrow"
        if not path.exists():
            return None
        try:
            return read_arrow(path)["custom_id"].combine_chunks()
        except (OSError, pa.ArrowInvalid) as e:
            raise LedgerError(f"cannot read {path}: {e}", path=str(path)) from e

    # -- prompt-cache prefix groups (``_prefix``, ``_priming``) -------------------------------
    def write_prefix_groups(self, groups: Mapping[str, int]) -> None:
        """custom_id -> prefix group of the requests that carry a breakpoint of dsbatch's."""
        table = pa.table(
            {
                "custom_id": pa.array(list(groups), pa.string()),
                "group": pa.array(list(groups.values()), pa.int32()),
            }
        )
        atomic_write(self.dir / "prefix_groups.arrow", arrow_bytes(table))

    def read_prefix_groups(self) -> dict[str, int]:
        """The prefix groups; empty when there are none (or the file cannot be read: then
        nothing is held back for a primer, and nothing is lost but cache hits)."""
        path = self.dir / "prefix_groups.arrow"
        if not path.exists():
            return {}
        try:
            table = read_arrow(path)
            return dict(
                zip(table["custom_id"].to_pylist(), table["group"].to_pylist(), strict=True)
            )
        except (OSError, pa.ArrowInvalid, KeyError) as e:
            log.warning("dsbatch: %s cannot be read (%s); no request waits for a primer", path, e)
            return {}

    # -- batch records ------------------------------------------------------------------------
    def record_path(self, seq: int) -> Path:
        """Where batch record ``seq`` of the job is kept."""
        return self.dir / "batches" / f"{seq:06d}.json"

    def _ids_path(self, seq: int) -> Path:
        return self.dir / "batches" / f"{seq:06d}.ids.arrow"

    def record_files(self) -> list[Path]:
        """The job's batch record files, oldest first."""
        bdir = self.dir / "batches"
        return sorted(bdir.glob("*.json")) if bdir.is_dir() else []

    def read_record(self, path: Path) -> BatchRecord:
        """One batch record file of the job; a LedgerError, saying what to do, when damaged."""
        try:
            try:
                data = json.loads(path.read_bytes())
            except (OSError, ValueError) as e:
                raise RecordError(str(e)) from e
            record = BatchRecord.from_json(data)
            if record.job != self.fingerprint or path.name != f"{record.seq:06d}.json":
                raise RecordError(f"it names job {record.job} batch #{record.seq}")
        except RecordError as e:
            raise LedgerError(
                f"the batch record {path} is damaged ({e}). Delete it: dsbatch rebuilds it from "
                f"the cache's journal ({self.ledger.root / 'journal.jsonl'}), which holds every "
                "batch ever created, and reads its results again (a download, never a "
                "purchase). Only a create whose answer never came back is not in the journal: "
                "its requests would then be sent again.",
                path=str(path),
            ) from e
        return record

    def stored_record(self, seq: int) -> BatchRecord | None:
        """Record ``seq`` as stored now (rebuilt from the journal when its file is missing);
        None when neither knows it. A damaged file is a LedgerError."""
        path = self.record_path(seq)
        damage: LedgerError | None = None
        if path.exists():
            try:
                return self.read_record(path)
            except LedgerError as e:  # another job's damage is read from the journal (survey)
                damage = e
        entries = [
            e
            for e in self.ledger.journal()
            if e.get("job") == self.fingerprint and e.get("seq") == seq
        ]
        rebuilt = record_from_journal(self.fingerprint, seq, entries[-1]) if entries else None
        if rebuilt is None and damage is not None:
            raise damage
        return rebuilt

    def new_record(
        self,
        custom_ids: Sequence[str],
        *,
        intent_at: float,
        key_hash: str = "",
        origin: str = "",
        holder: str = "",
        lease_until: float | None = None,
    ) -> BatchRecord:
        """Write the intent to send ``custom_ids`` as a new batch (ids file first), held by
        ``holder`` until ``lease_until``."""
        seq = self._next_seq()
        self.write_ids(seq, custom_ids)
        record = BatchRecord(
            job=self.fingerprint,
            seq=seq,
            request_count=len(custom_ids),
            ids_digest=ids_digest(custom_ids),
            intent_at=intent_at,
            key_hash=key_hash,
            origin=origin,
            holder=holder,
            lease_until=lease_until,
        )
        self.save(record)
        return record

    def _next_seq(self) -> int:
        """The first free batch slot: after every record file and every slot the journal
        knows (a record whose file was lost keeps its slot)."""
        seqs = [int(p.stem) for p in self.record_files() if p.stem.isdigit()]
        seqs += [
            e["seq"]
            for e in self.ledger.journal()
            if e.get("job") == self.fingerprint and isinstance(e.get("seq"), int)
        ]
        return max(seqs, default=-1) + 1

    def save(self, record: BatchRecord) -> None:
        write_json(self.record_path(record.seq), record.to_json())

    def record_ids(self, record: BatchRecord) -> list[str] | None:
        """The custom_ids of a batch, checked against its record; None when the ids file is
        missing (it is rebuilt from the batch's results)."""
        path = self._ids_path(record.seq)
        if not path.exists():
            return None
        try:
            ids = read_arrow(path)["custom_id"].to_pylist()
            problem = ""
        except (OSError, pa.ArrowInvalid, KeyError) as e:
            ids, problem = [], str(e)
        if not problem and (
            len(ids) != record.request_count or ids_digest(ids) != record.ids_digest
        ):
            problem = f"it holds {len(ids)} custom_ids that do not match the record"
        if problem:
            raise LedgerError(
                f"the custom_ids file {path} of batch {record.name} is damaged ({problem}). "
                "Delete it: dsbatch rebuilds it from the batch's results once they can be "
                "downloaded (a download, never a purchase).",
                path=str(path),
            )
        return ids

    def restore_ids(self, record: BatchRecord, custom_ids: Sequence[str]) -> bool:
        """Write a lost ids file back from the batch's results; False if they do not match."""
        if len(custom_ids) != record.request_count or ids_digest(custom_ids) != record.ids_digest:
            return False
        self.write_ids(record.seq, custom_ids)
        return True

    def write_ids(self, seq: int, custom_ids: Sequence[str]) -> None:
        table = pa.table({"custom_id": pa.array(list(custom_ids), pa.string())})
        atomic_write(self._ids_path(seq), arrow_bytes(table))

    # -- transitions: each checked against the record as stored, and persisted atomically --
    def change(
        self,
        record: BatchRecord,
        apply: Callable[[BatchRecord], bool | None],
        *,
        expect: Sequence[str] = ("state", "batch_id"),
    ) -> None:
        """Apply ``apply`` to the record as stored now, under the job's lock (held for
        milliseconds), if it still has the ``expect`` fields the caller acted on; else raise
        ``StaleRecord`` (another call moved it first). ``apply`` returning False writes nothing.
        ``record`` is updated to what is stored."""
        with self._lock():
            fresh = self.stored_record(record.seq)
            if fresh is None or any(getattr(fresh, f) != getattr(record, f) for f in expect):
                raise StaleRecord(
                    f"batch {record.name} was moved by another call "
                    f"({record.state.value} -> {fresh.state.value if fresh else 'gone'})"
                )
            if apply(fresh) is not False:
                self.save(fresh)
        record.__dict__.update(fresh.__dict__)

    def mark_submitted(
        self, record: BatchRecord, batch_id: str, created_at: float, *, adopted: bool = False
    ) -> None:
        """The record's batch exists: ``batch_id``, created by our create or, ``adopted``,
        found by a reconcile (only an adopted batch may later turn out to be someone else's).
        Only the intent's lease holder moves it (``expect`` holds the holder)."""

        def apply(fresh: BatchRecord) -> None:
            fresh.moved(BatchState.SUBMITTED)
            fresh.batch_id, fresh.created_at, fresh.missing_since = batch_id, created_at, None
            fresh.adopted, fresh.holder, fresh.lease_until = adopted, "", None

        self.change(record, apply, expect=("state", "holder"))
        self.ledger.journal_append(record)

    def mark_ingested(self, record: BatchRecord, counts: dict[str, int], origin: str) -> None:
        """Its results are stored; a batch recorded before origins were kept takes the origin
        of the call that could read it."""

        def apply(fresh: BatchRecord) -> None:
            fresh.moved(BatchState.INGESTED)
            fresh.counts, fresh.missing_since = dict(counts), None
            fresh.origin = fresh.origin or origin

        self.change(record, apply)

    def mark_lost(self, record: BatchRecord, why: str) -> None:
        def apply(fresh: BatchRecord) -> None:
            fresh.moved(BatchState.LOST)
            fresh.note = why

        self.change(record, apply)

    def mark_rejected(self, record: BatchRecord, holder: str, lease_until: float) -> None:
        """The batch a reconcile adopted holds someone else's requests: ours may still exist;
        the intent is held again by ``holder``, which looks for it."""
        given_back = record.batch_id or ""

        def apply(fresh: BatchRecord) -> None:
            fresh.moved(BatchState.INTENT)
            fresh.rejected.append(given_back)
            fresh.batch_id = fresh.created_at = fresh.missing_since = None
            fresh.adopted, fresh.holder, fresh.lease_until = False, holder, lease_until

        self.change(record, apply)
        # The journal says it is free again: its real owner's reconcile may take it.
        self.ledger.journal_append(record, released=given_back)

    def mark_unsent(self, record: BatchRecord, why: str) -> None:
        def apply(fresh: BatchRecord) -> None:
            fresh.moved(BatchState.UNSENT)
            fresh.note, fresh.holder, fresh.lease_until = why, "", None

        self.change(record, apply, expect=("state", "holder"))

    def note_missing(self, record: BatchRecord, since: float | None) -> None:
        """Found again (``since`` None), or missing since ``since`` unless an earlier moment is
        stored already (another call saw it missing first)."""

        def apply(fresh: BatchRecord) -> bool:
            kept = since if since is None or fresh.missing_since is None else fresh.missing_since
            if fresh.missing_since == kept:
                return False
            fresh.missing_since = kept
            return True

        self.change(record, apply)

    def record_late_batch(
        self, record: BatchRecord, batch_id: str, created_at: float
    ) -> BatchRecord:
        """Record a batch that ``record``'s create made after another call had taken the intent
        over (so it cannot be that record's): a new record of the same requests, in a slot of
        its own, journaled like any batch: a batch paid for is never forgotten."""
        ids = self.record_ids(record) or []
        with self.ledger.locked():
            late = self.new_record(
                ids,
                intent_at=record.intent_at,
                key_hash=record.key_hash,
                origin=record.origin,
            )
        self.mark_submitted(late, batch_id, created_at)
        return late

    def hold(
        self,
        record: BatchRecord,
        holder: str,
        lease_until: float | None,
        *,
        takeover: bool = False,
    ) -> None:
        """Hold an intent until ``lease_until`` (renewed by its holder; taken over by another
        call once the lease is free); ``lease_until=None`` gives it up. A ``takeover`` acts on
        the lease it read: one its holder renewed since is not taken."""

        def apply(fresh: BatchRecord) -> None:
            fresh.holder, fresh.lease_until = holder, lease_until

        expect = ("state", "holder", "lease_until") if takeover else ("state", "holder")
        self.change(record, apply, expect=expect)

    # -- inputs: what the job was run on (``_inputs``) ----------------------------------------
    def write_input(self, split: str, obj: Any) -> None:
        """Keep one split's input (pickled: a dataset read from files pickles as a reference
        to them, one built in memory as its rows)."""
        path = self.dir / "inputs" / f"{_file_name(split)}.pkl"
        atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))

    def read_input(self, split: str) -> Any:
        """One split's kept input; None when it was never kept; LedgerError when damaged."""
        path = self.dir / "inputs" / f"{_file_name(split)}.pkl"
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception as e:  # unpickling can fail in many ways; all mean the same here
            raise LedgerError(f"cannot read the kept input {path}: {e}", path=str(path)) from e

    # -- output -------------------------------------------------------------------------------
    def write_output(self, split: str, table: pa.Table) -> str:
        """Store a split's finished columns; returns a digest that changes when they do. The
        file is named by its digest (``output_file``), in the Arrow stream format ``datasets``
        maps its own files from: a dataset that maps it keeps reading what it mapped, whatever
        a later call stores. The split's older outputs are removed."""

        def stream(out: Any) -> None:  # out: has write(bytes)
            with pa.ipc.new_stream(pa.PythonFile(out, mode="w"), table.schema) as writer:
                writer.write_table(table)

        # Two passes, the digest (for the name) then the file: neither holds a copy in memory.
        hashed = _Hashing()
        stream(hashed)
        digest = hashed.hash.hexdigest()
        path = self.output_file(split, digest)
        atomic_write(path, stream)
        for old in path.parent.glob("*.arrow"):
            if old != path:
                with suppress(OSError):  # mapped elsewhere (Windows): removed next time
                    old.unlink()
        return digest

    def output_file(self, split: str, digest: str) -> Path:
        """Where a split's finished columns of this digest are stored."""
        return self.dir / "output" / _file_name(split) / f"{digest}.arrow"

    def read_output(self, split: str, digest: str) -> pa.Table | None:
        """A split's finished columns of this digest, memory-mapped; None when missing or
        damaged (they are rebuilt)."""
        path = self.output_file(split, digest)
        if not path.exists():
            return None
        try:
            with pa.memory_map(str(path)) as source:
                return pa.ipc.open_stream(source).read_all()
        except (OSError, pa.ArrowInvalid) as e:
            log.warning("dsbatch: the output %s is damaged (%s); rebuilding it", path, e)
            return None

    # -- the job's lock -----------------------------------------------------------------------
    def _lock(self) -> AbstractContextManager[None]:
        """The job's lock, held only while one record or the manifest changes: no call holds
        it across a network call, so a stopped process holds up no one."""
        return _lock(
            self.dir / "lock",
            f"job {self.fingerprint}",
            f"waiting for the lock of job {self.fingerprint} (another process is changing it)",
            patience=5.0,
        )


class _Hashing:
    """A file that keeps nothing: the xxh3 of what is written to it."""

    def __init__(self) -> None:
        self.hash = xxhash.xxh3_64()
        self.closed = False

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


class Ledger:
    """The cache root: shared results, the journal of batch ids, one directory per job."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = resolve_cache_dir(cache_dir)
        self.store = ResultsStore(self.root)
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
        jobs = self.root / "jobs"
        return sorted(p.name for p in jobs.iterdir() if p.is_dir()) if jobs.is_dir() else []

    # -- housekeeping: what the cache holds, and removing what may go -------------------------
    def job_bytes(self, fingerprint: str) -> int:
        """Bytes on disk of one job's folder."""
        return _tree_bytes(self.root / "jobs" / fingerprint)

    def results_files(self) -> dict[str, int]:
        """batch_id -> bytes of its stored results (and their index)."""
        return self.store.sizes()

    def other_bytes(self) -> int:
        """Bytes of what is neither a job nor stored results (journal, downloads, locks...)."""
        total = _tree_bytes(self.root)
        return total - _tree_bytes(self.root / "jobs") - _tree_bytes(self.root / "results")

    def remove_job(self, fingerprint: str) -> None:
        """Delete what one job keeps (its manifest, requests, row maps, inputs and finished
        columns), but not its batch records: they are what lets any job find those batches
        again (download their results when they are gone from the cache, count their
        attempts). The caller checked that nothing of it is in flight."""
        path = self.root / "jobs" / fingerprint
        try:
            for child in path.iterdir() if path.is_dir() else []:
                if child.name == "batches":
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
        with _lock(self.root / "lock", f"the cache {self.root}", "waiting for the cache lock"):
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
