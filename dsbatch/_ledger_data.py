"""Part of the ledger: the data files of one job, under ``jobs/<fingerprint>/``.

What the job asks and what it made, each written whole (``_files``) and read back with errors
that name the file::

    requests.parquet      custom_id -> canonical params, the exact bodies sent, and each one's
                          model and size, in row groups of ``REQUEST_GROUP_ROWS`` (the order
                          batches are cut in)
    rows/<split>.arrow    row -> custom_id of each split (null: skipped)
    prefix_groups.arrow   custom_id -> its shared prompt prefix (``_priming``)
    inputs/<split>.pkl    the input rows, or a reference to their files (``_inputs``)
    output/<split>/<digest>.arrow   the finished new columns

The job's manifest and batch records are ``JobLedger``'s (``_ledger_job``), which is a
``JobData``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from dsbatch._errors import LedgerError
from dsbatch._files import arrow_bytes, atomic_write, atomic_write_named, read_arrow, stamp

__all__ = ["REQUEST_GROUP_ROWS", "JobData", "RequestModels"]

log = logging.getLogger("dsbatch")

_T = TypeVar("_T")

# Requests per row group of a job's requests file: what a step reads to send a batch's part.
REQUEST_GROUP_ROWS = 16_384
# The process that writes a job's requests keeps their columns while they are at most this many
# bytes (a job of 100,000 short requests): its steps and its join read them from memory, not
# back from the file just written. A larger job's are read from the file a row group at a
# time, so that its memory follows its batches, not its rows.
KEPT_REQUEST_BYTES = 64 * 2**20

_REQUESTS_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        ("params", pa.binary()),
        ("model", pa.string()),
        ("size", pa.int32()),
    ]
)

# The requests file's schema metadata: whether any of its requests asks for thinking (the join
# then reads the thinking column), so that no one reads every body back to find out.
_THINKS_KEY = b"dsbatch.thinks"

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")


def _file_name(split: str) -> str:
    """A file name for a split: the name itself when it is safe, else a hash of it."""
    if _SAFE_NAME.fullmatch(split):
        return split
    return "split-" + xxhash.xxh3_64_hexdigest(split.encode())


class JobData:
    """The data files of one job in the folder ``dir``: its requests, row maps, prefix groups,
    inputs and finished columns."""

    def __init__(self, dir: Path, fingerprint: str) -> None:
        self.dir = dir
        self.fingerprint = fingerprint
        self.rows_dir = dir / "rows"
        # The requests file's row groups as this object wrote them (``KEPT_REQUEST_BYTES``),
        # and the file's stamp then: a file written anew since is read.
        self._kept: list[pa.Table] | None = None
        self._kept_stamp: tuple[int, int, int] | None = None

    # -- requests and rows --------------------------------------------------------------------
    def has_requests(self) -> bool:
        return (self.dir / "requests.parquet").exists()

    def write_requests(
        self, requests: Iterable[tuple[str, bytes, str | None]], *, thinks: bool | None = None
    ) -> None:
        """Keep every request: (custom_id, params, model), the model beside the params (read
        alone, without them, to price its answer), and the params' size (read alone to cut
        batches); and whether any of them asks for thinking (``thinks``; None: not known, read
        from the bodies when asked, ``requests_think``). Written a row group at a time
        (``REQUEST_GROUP_ROWS``), in the order given, which is the order batches are cut in: a
        step reads the groups of the batch it sends (``read_request_group``). Only a job under
        ``KEPT_REQUEST_BYTES`` is kept in memory once written; no other copy of every body is
        ever made."""

        def groups() -> Iterator[tuple[list[str], pa.Array, pa.Array]]:
            it = iter(requests)
            while group := list(itertools.islice(it, REQUEST_GROUP_ROWS)):
                # Not zip(*group): its iterator per request, each a tracked object alive
                # until the group is done, made Python's full collections run over and
                # over (0.2 s a pass at 100,000 requests).
                yield (
                    [r[0] for r in group],
                    pa.array([r[1] for r in group], pa.binary()),
                    pa.array([r[2] for r in group], pa.string()),
                )

        self.write_request_columns(groups(), thinks=thinks)

    @property
    def group_rows(self) -> int:
        """Requests per row group of the requests file (``REQUEST_GROUP_ROWS``)."""
        return REQUEST_GROUP_ROWS

    def write_request_columns(
        self,
        groups: Iterable[tuple[Sequence[str], pa.Array, pa.Array | str | None]],
        *,
        thinks: bool | None = None,
    ) -> None:
        """``write_requests`` given as columns, ``group_rows`` requests at a time (the last
        group fewer): (custom_ids, params, models), the models one array or one model for
        all."""
        kept: list[pa.Table] | None = []
        schema = _REQUESTS_SCHEMA
        if thinks is not None:
            schema = schema.with_metadata({_THINKS_KEY: b"true" if thinks else b"false"})

        def write(f: BinaryIO) -> None:
            nonlocal kept
            held = 0
            # Dictionaries only where values repeat (the model): tried on every unique id and
            # body, they were built and thrown away a page at a time.
            with pq.ParquetWriter(f, schema, use_dictionary=["model"]) as writer:
                for ids, params, models in groups:
                    if not isinstance(models, pa.Array):
                        models = pa.array([models] * len(ids), pa.string())
                    columns = [pa.array(ids, pa.string()), params, models]
                    table = pa.table([*columns, pc.binary_length(params)], schema=_REQUESTS_SCHEMA)
                    # One row group per group given: what is kept is the file's row groups.
                    writer.write_table(table, row_group_size=max(table.num_rows, 1))
                    held += table.nbytes
                    if kept is not None and held <= KEPT_REQUEST_BYTES:
                        kept.append(table)
                    else:
                        kept = None

        self._kept = None
        path = self.dir / "requests.parquet"
        atomic_write(path, write)
        with suppress(OSError):
            self._kept_stamp, self._kept = stamp(path), kept

    def _kept_groups(self) -> list[pa.Table] | None:
        """The row groups this object wrote, while the file is still the one it wrote."""
        if self._kept is None:
            return None
        try:
            if stamp(self.dir / "requests.parquet") == self._kept_stamp:
                return self._kept
        except OSError:
            pass
        self._kept = None
        return None

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
        if (kept := self._kept_groups()) is not None:
            return [group.num_rows for group in kept]
        meta = self._requests_file(pq.read_metadata)
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def read_request_group(self, group: int) -> list[bytes]:
        """The params of the requests of one row group of the requests file, in its order."""
        return self.read_request_params(group).to_pylist()

    def read_request_params(self, group: int) -> pa.Array:
        """``read_request_group`` as one Arrow binary array (no Python object per request)."""
        return self.read_request_column(group, "params")

    def read_request_column(self, group: int, column: str) -> pa.Array:
        """One column (``params``, ``size``) of one row group of the requests file."""
        if (kept := self._kept_groups()) is not None:
            return kept[group][column].combine_chunks()
        table = self._requests_file(
            lambda path: pq.ParquetFile(path).read_row_group(group, columns=[column])
        )
        return table[column].combine_chunks()

    def requests_think(self) -> bool | None:
        """Whether any request of the job asks for thinking, as its requests file says; None
        when it does not say (written by an older dsbatch, or without knowing) or cannot be
        read."""
        try:
            said = (pq.read_schema(self.dir / "requests.parquet").metadata or {}).get(_THINKS_KEY)
        except (OSError, pa.ArrowInvalid):
            return None
        return None if said is None else said == b"true"

    def requests_have_sizes(self) -> bool:
        """Whether the requests file keeps each request's size (one of an older dsbatch does
        not: its sizes are read from the params)."""
        if self._kept_groups() is not None:
            return True
        schema = self._requests_file(pq.read_schema)
        return "size" in schema.names

    def read_requests(self) -> dict[str, bytes]:
        """custom_id -> the exact params sent, of every request of the job."""
        table = self._requests_file(pq.read_table)
        return dict(zip(table["custom_id"].to_pylist(), table["params"].to_pylist(), strict=True))

    def request_ids(self) -> pa.Array | None:
        """Every custom_id the job asks for (None if its requests file cannot be read): a bound
        on what any of its batches holds."""
        if (kept := self._kept_groups()) is not None:
            return _column_of(kept, "custom_id")
        try:
            table = pq.read_table(self.dir / "requests.parquet", columns=["custom_id"])
        except (OSError, pa.ArrowInvalid):
            return None
        return table["custom_id"].combine_chunks()

    def request_models(self) -> RequestModels | None:
        """custom_id -> the model of every request of the job, read without the params; None
        when the requests file holds no models (a job of an older dsbatch) or cannot be read."""
        models = self.request_model_column()
        if models is None:
            return None

        def ids() -> pa.Array:
            found = self.request_ids()
            if found is None or len(found) != len(models):
                raise LedgerError(
                    f"cannot read the custom_ids of job {self.fingerprint}'s requests "
                    f"({self.dir / 'requests.parquet'}): run the same dsbatch.map call again "
                    "(it writes them back; nothing is bought again)",
                    path=str(self.dir / "requests.parquet"),
                )
            return found

        return RequestModels(ids, models)

    def request_model_column(self) -> pa.Array | None:
        """The model of every request, as one Arrow column; None when the requests file holds
        no models (a job of an older dsbatch) or cannot be read."""
        if (kept := self._kept_groups()) is not None:
            return _column_of(kept, "model")
        try:
            table = pq.read_table(self.dir / "requests.parquet", columns=["model"])
        except (OSError, pa.ArrowInvalid, KeyError):
            return None
        return table["model"].combine_chunks()

    def write_rows(self, split: str, custom_ids: Sequence[str | None]) -> None:
        """Row -> custom_id of one split, so the job can be collected without its dataset."""
        path = self.rows_dir / f"{_file_name(split)}.arrow"
        table = pa.table({"custom_id": pa.array(custom_ids, pa.string())})
        atomic_write(path, arrow_bytes(table))

    def read_rows(self, split: str) -> pa.Array | None:
        path = self.rows_dir / f"{_file_name(split)}.arrow"
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
    def write_output(
        self, split: str, schema: pa.Schema, tables: Iterable[pa.Table] | pa.Table
    ) -> str:
        """Store a split's finished columns (``schema``; a table, or its rows in order as
        tables); returns a digest that changes when they do. The file is named by its digest
        (``output_file``), in the Arrow stream format ``datasets`` maps its own files from: a
        dataset that maps it keeps reading what it mapped, whatever a later call stores. The
        split's older outputs are removed. One pass writes the file and hashes it, a table at a
        time: no copy of the columns is held."""

        def stream(out: BinaryIO) -> str:
            hashed = _Hashing(out)
            with pa.ipc.new_stream(pa.PythonFile(hashed, mode="w"), schema) as writer:
                for table in [tables] if isinstance(tables, pa.Table) else tables:
                    writer.write_table(table.replace_schema_metadata(schema.metadata))
            return f"{hashed.hash.hexdigest()}.arrow"

        path = atomic_write_named(self.dir / "output" / _file_name(split), stream)
        for old in path.parent.glob("*.arrow"):
            if old != path:
                with suppress(OSError):  # mapped elsewhere (Windows): removed next time
                    old.unlink()
        return path.stem

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


class _Hashing:
    """A file that passes what is written to it on to ``out``, keeping the xxh3 of it."""

    def __init__(self, out: BinaryIO) -> None:
        self.hash = xxhash.xxh3_64()
        self.out = out
        self.closed = False

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _column_of(groups: list[pa.Table], column: str) -> pa.Array:
    """One column of the requests' row groups, as one array."""
    chunks = [chunk for group in groups for chunk in group[column].chunks]
    return pa.chunked_array(chunks, _REQUESTS_SCHEMA.field(column).type).combine_chunks()


class RequestModels(Mapping[str, "str | None"]):
    """custom_id -> model of a job's requests, kept as its two Arrow columns: a job of one
    model (the usual) asks only which models there are (``distinct``); a dict of every
    custom_id is made only when a request is looked up."""

    def __init__(self, ids: Callable[[], pa.Array], models: pa.Array) -> None:
        # The ids are read only when a request is looked up (a million took 0.1 s to read).
        self._read_ids, self._models = ids, models
        self._lookup: dict[str, str | None] | None = None

    def distinct(self) -> set[str | None]:
        return set(pc.unique(self._models).to_pylist())

    @functools.cached_property
    def _ids(self) -> pa.Array:
        return self._read_ids()

    def _dict(self) -> dict[str, str | None]:
        if self._lookup is None:
            pairs = zip(self._ids.to_pylist(), self._models.to_pylist(), strict=True)
            self._lookup = dict(pairs)
        return self._lookup

    def __getitem__(self, custom_id: str) -> str | None:
        return self._dict()[custom_id]

    def __contains__(self, custom_id: object) -> bool:
        return custom_id in self._dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids.to_pylist())

    def __len__(self) -> int:
        return len(self._models)
