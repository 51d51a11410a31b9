"""Collect: a job's results joined to its rows, as the new columns of each split, then attached to
the input datasets after ``on_error``.

The finished columns are stored in the job (``output/``) with a digest of each; a later call with
the same output options reads them back instead of joining again, unless they depend on the
user's code (``parse``, a ``response_format``'s validators), which is joined again every time.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from datasets import Dataset

from dsbatch._compat import attach_columns, iter_rows
from dsbatch._errors import LedgerError, RowFailedError
from dsbatch._join import MissingResult, OutputSpec, output_table
from dsbatch._ledger import JobLedger, Ledger
from dsbatch._policy import FAILED_STATUSES, attempts, latest_results
from dsbatch._records import Manifest

__all__ = ["Outputs", "attach", "cached_outputs", "collect"]

# What each failed status means, as a RowFailedError says it.
_FAILED_AS = {
    "errored": "errored (no answer; not billed)",
    "expired": "expired (no answer; not billed)",
    "canceled": "canceled (no answer; not billed)",
    "parse_error": "parse_error (answered and paid for, but the answer did not parse; the raw "
    "answer is in the output column)",
}
_SHOWN_ROWS = 5


@dataclass
class Outputs:
    """A job's new columns per split, and a digest of each (it changes when answers do)."""

    tables: dict[str, pa.Table]
    digests: dict[str, str]


def cached_outputs(
    job: JobLedger, manifest: Manifest | None, splits: list[str], output_key: str | None
) -> Outputs | None:
    """The finished columns of an earlier call whose answers and output options match."""
    if manifest is None or manifest.state != "finished" or output_key is None:
        return None
    if manifest.output_key != output_key:
        return None
    outputs = Outputs({}, {})
    for split in splits:
        table = job.read_output(split)
        if table is None or split not in manifest.outputs:
            return None
        outputs.tables[split] = table
        outputs.digests[split] = manifest.outputs[split]
    return outputs


def collect(
    job: JobLedger,
    results: pa.Table,
    row_custom_ids: Mapping[str, pa.Array],
    spec: OutputSpec,
    splits: Mapping[str, Dataset] | None,
    cost: Callable[[pa.Table], pa.Array] | None = None,
) -> Outputs:
    """Join the results to every split's rows and store the finished columns. ``splits`` (the
    input rows) are read only by ``parse``; ``cost(latest)`` prices each request's result."""
    latest = latest_results(results)
    sent = attempts(results)
    costs = cost(latest) if cost is not None else None
    outputs = Outputs({}, {})
    for split, ids in row_custom_ids.items():
        try:
            table = output_table(
                ids,
                latest,
                sent,
                spec,
                rows=functools.partial(iter_rows, splits[split]) if splits is not None else None,
                messages=functools.partial(_messages, job.ledger),
                cost=costs,
            )
        except MissingResult as e:
            raise LedgerError(
                f"job {job.fingerprint} in the cache {job.ledger.root}: {e}. Run the same call "
                "again: dsbatch downloads what is missing (it never buys it twice).",
                path=str(job.dir),
            ) from e
        outputs.tables[split] = table
        outputs.digests[split] = job.write_output(split, table)
    return outputs


def _messages(ledger: Ledger, answered: pa.Table) -> dict[str, dict[str, Any]]:
    """custom_id -> the Message of its answer, read from the stored raw result lines."""
    messages: dict[str, dict[str, Any]] = {}
    for batch_id in pc.unique(answered["batch_id"]).to_pylist():
        ids = answered.filter(pc.equal(answered["batch_id"], batch_id))["custom_id"]
        for custom_id, line in ledger.store.raw_lines(batch_id, ids.combine_chunks()).items():
            message = json.loads(line).get("result", {}).get("message")
            if isinstance(message, dict):
                messages[custom_id] = message
    return messages


def attach(
    splits: Mapping[str, Dataset],
    outputs: Outputs,
    *,
    status_column: str,
    on_error: str,
    output_key: str | None,
    fingerprints: Mapping[str, str],
    labels: Mapping[str, str | None],
) -> dict[str, Dataset]:
    """The output datasets, after ``on_error`` (one RowFailedError names every failing split).
    ``fingerprints`` are the input datasets' own (a dataset rebuilt in another process has
    another, but the output must be the one ``map`` gives)."""
    failed = {
        split: pc.is_in(
            pc.struct_field(table[status_column], "status"),
            value_set=pa.array(FAILED_STATUSES),
        ).fill_null(False)
        for split, table in outputs.tables.items()
    }
    if on_error == "raise":
        failures = {
            split: rows
            for split, mask in failed.items()
            if (rows := pc.indices_nonzero(mask.combine_chunks()).to_pylist())
        }
        if failures:
            raise _row_failed(outputs, failures, status_column, labels)
    out = {}
    for split, ds in splits.items():
        # The answers' digest, not just the job's: a rerun that changed answers (more attempts)
        # must not share a fingerprint, or datasets' own cache would serve stale rows.
        fingerprint = xxhash.xxh3_64_hexdigest(
            f"{fingerprints[split]}|{outputs.digests[split]}|{output_key}|{on_error}".encode()
        )
        attached = attach_columns(ds, outputs.tables[split], fingerprint=fingerprint)
        if on_error == "drop":
            keep = pc.indices_nonzero(pc.invert(failed[split]).combine_chunks())
            attached = attached.select(keep.to_pylist())
        out[split] = attached
    return out


def _row_failed(
    outputs: Outputs,
    failures: dict[str, list[int]],
    status_column: str,
    labels: Mapping[str, str | None],
) -> RowFailedError:
    details: list[str] = []
    custom_ids: list[str] = []
    for split, rows in failures.items():
        statuses = outputs.tables[split][status_column].take(rows).to_pylist()
        custom_ids.extend(s["custom_id"] for s in statuses)
        where = "" if labels[split] is None else f" in split {split!r}"
        counts = Counter(s["status"] for s in statuses)
        summary = ", ".join(f"{n} {_FAILED_AS.get(k, k)}" for k, n in counts.most_common())
        shown = "; ".join(
            f"row {r}: {s['status']}: {s['error']}"
            for r, s in zip(rows[:_SHOWN_ROWS], statuses[:_SHOWN_ROWS])
        )
        more = "; ..." if len(rows) > _SHOWN_ROWS else ""
        details.append(f"{len(rows)} rows{where} failed: {summary} ({shown}{more})")
    return RowFailedError(
        "; ".join(details) + ". Their results are cached: on_error='keep' returns the dataset "
        "without paying again.",
        rows=next(iter(failures.values())),
        custom_ids=custom_ids,
        by_split=failures,
    )
