"""Part of the ledger: the results store shared by every job of a cache, and downloads.

    results/<batch_id>.parquet     every result line of a batch (``RESULT_SCHEMA``)
    downloads/<batch_id>.jsonl     raw result bytes while they are being ingested
    previews.jsonl                 answers bought by ``dsbatch.preview``, stored as results
                                   under a batch id of their own (``preview_...``): that id,
                                   its origin, when, how many

A preview's answers come from the Messages API, not from a batch: nothing can download them
again, and they serve only runs at their origin (recorded before they are stored).

A request is never paid for twice anywhere in the cache: every job reads every batch's results.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsbatch._errors import LedgerError
from dsbatch._files import atomic_write

__all__ = ["PREVIEW_PREFIX", "RESULT_SCHEMA", "ResultsStore", "is_preview"]

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


class ResultsStore:
    """The results of every batch of one cache, one Parquet file per batch."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, batch_id: str) -> Path:
        return self.root / "results" / f"{batch_id}.parquet"

    def has(self, batch_id: str) -> bool:
        """Whether the batch's results are stored and readable."""
        path = self.path(batch_id)
        if not path.exists():
            return False
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowInvalid):
            return False
        return True

    def write(self, batch_id: str, table: pa.Table) -> None:
        # A batch downloaded twice (a crash between write and record) rewrites the same rows.
        sink = pa.BufferOutputStream()
        pq.write_table(table.cast(RESULT_SCHEMA), sink)
        atomic_write(self.path(batch_id), sink.getvalue())

    def results_for(self, custom_ids: pa.Array) -> tuple[pa.Table, set[str]]:
        """Every stored result of every attempt for these custom_ids (without ``raw``), and the
        ids of batches whose results file cannot be read (they are downloaded again)."""
        value_set = pa.array(custom_ids, pa.string())
        parts, unreadable = [], set()
        rdir = self.root / "results"
        for path in sorted(rdir.glob("*.parquet")) if rdir.is_dir() else []:
            try:
                # The small key column first: most files hold nothing for this job.
                keys = pq.read_table(path, columns=["custom_id"])["custom_id"]
                mask = pc.is_in(keys, value_set=value_set)
                if not pc.any(mask).as_py():
                    continue
                table = pq.read_table(path, columns=_KEY_COLUMNS, schema=RESULT_SCHEMA)
                parts.append(table.filter(mask))
            except (OSError, pa.ArrowInvalid) as e:
                log.warning("dsbatch: the results file %s cannot be read (%s)", path, e)
                unreadable.add(path.stem)
        if not parts:
            return RESULT_SCHEMA.empty_table().drop_columns(["raw"]), unreadable
        return pa.concat_tables(parts), unreadable

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
        midway leaves no file behind."""
        path = self.root / "downloads" / f"{batch_id}.jsonl"
        atomic_write(path, chunks)
        try:
            if path.stat().st_size == 0:
                return pa.py_buffer(b"")
            with pa.memory_map(str(path)) as source:
                return source.read_buffer()
        except OSError as e:
            raise LedgerError(f"cannot read {path}: {e}", path=str(path)) from e

    def discard_download(self, batch_id: str) -> None:
        """Forget a download once its results are stored for good."""
        (self.root / "downloads" / f"{batch_id}.jsonl").unlink(missing_ok=True)

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
        path = self.root / "previews.jsonl"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(json.dumps(entry, sort_keys=True).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise LedgerError(f"cannot write {path}: {e}", path=str(path)) from e

    def previews(self) -> list[dict[str, Any]]:
        """Every preview recorded (a line torn by a crash is skipped)."""
        path = self.root / "previews.jsonl"
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise LedgerError(f"cannot read {path}: {e}", path=str(path)) from e
        entries = []
        for line in lines:
            with suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and isinstance(entry.get("batch_id"), str):
                    entries.append(entry)
        return entries
