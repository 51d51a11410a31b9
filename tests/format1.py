"""A cache as dsbatch's format 1 wrote it (up to commit 963f709), built by hand for the tests of
the migrations to format 2 and on: its answers carry the message ids dsbatch's emulator gives,
as a cache made by runs against the emulator does (so the migration tags them as its)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dsbatch._emulator._ids import prefixed_id

RESULTS = pa.schema(
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


def write_record(root: Path, job: str, seq, ids, *, state, batch_id, created_at, counts=None):
    """One format-1 batch record of ``job``, with its custom_ids as text."""
    batches = root / "jobs" / job / "batches"
    batches.mkdir(parents=True, exist_ok=True)
    (batches / f"{seq:06d}.ids").write_text("\n".join(ids))
    record = {
        "seq": seq,
        "request_count": len(ids),
        "intent_at": created_at - 1,
        "key_hash": "0123456789ab",
        "custom_ids_file": f"{seq:06d}.ids",
        "batch_id": batch_id,
        "created_at": created_at,
        "state": state,
        "counts": counts or {},
        "rejected": [],
    }
    (batches / f"{seq:06d}.json").write_text(json.dumps(record, indent=1, sort_keys=True))


def write_results(root: Path, batch_id: str, results: dict, *, texts, tokens=(5, 7)):
    """A format-1 cache (FORMAT 1) holding one batch's results: custom_id -> result object."""
    (root / "requests").mkdir(parents=True, exist_ok=True)
    (root / "FORMAT").write_text("1\n")
    n = len(results)
    for custom_id, result in results.items():
        if isinstance(result.get("message"), dict):
            result["message"]["id"] = prefixed_id("msg_", batch_id, custom_id)
    stops = [r.get("message", {}).get("stop_reason") for r in results.values()]
    table = pa.table(
        {
            "custom_id": list(results),
            "type": [r["type"] for r in results.values()],
            "error_type": [None] * n,
            "error_message": [None] * n,
            "stop_reason": stops,
            "text": list(texts),
            "input_tokens": [tokens[0]] * n,
            "output_tokens": [tokens[1]] * n,
            "cache_read_input_tokens": [0] * n,
            "cache_creation_input_tokens": [0] * n,
            "batch_id": [batch_id] * n,
            "raw": [json.dumps({"custom_id": c, "result": r}) for c, r in results.items()],
        },
        schema=RESULTS,
    )
    pq.write_table(table, root / "requests" / f"{batch_id}.parquet")
