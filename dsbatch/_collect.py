"""Collect: a job's results joined to its rows, as the new columns of each split, then attached to
the input datasets after ``on_error``.

The finished columns are stored in the job (``output/``) with a digest of each; a later call with
the same output options reads them back instead of joining again. Columns made by the user's
code (``parse``, a ``response_format``'s validators) are read back while that code is the same,
described by value (``MapOptions.output_key``); code that cannot be hashed is joined again.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from datasets import Dataset, Features

from dsbatch._arrow import give_back
from dsbatch._compat import attach_columns, fingerprint_of, iter_rows
from dsbatch._errors import LedgerError, RowFailedError
from dsbatch._join import MissingResult, OutputSpec, output_slices
from dsbatch._ledger import JobLedger, Ledger
from dsbatch._policy import FAILED_STATUSES, attempts, latest_results
from dsbatch._provenance import BATCHES_KEY, batches_answering, stamp
from dsbatch._reasoning import any_thinks, request_thinks, thinking_texts
from dsbatch._records import Manifest
from dsbatch._samples import failed_mask, reshape, sample_ids

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
# Rows of a split's new columns made and written at a time: the answers copied to the rows that
# asked for them are a slice's, not a split's (about 30 MB at 200-byte answers).
OUTPUT_SLICE_ROWS = 131_072
# What a canonical request that asks for thinking holds (a "thinking" key with an object).
_THINKING_OBJECT = b'"thinking":{'


@dataclass
class Outputs:
    """A job's new columns per split, and a digest of each (it changes when answers do), read
    from the job's files (``files``: split -> path), which the output datasets map."""

    tables: dict[str, pa.Table]
    digests: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)


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
        digest = manifest.outputs.get(split)
        if digest is None:
            return None
        table = job.read_output(split, digest)
        if table is None:
            return None
        outputs.tables[split] = table
        outputs.digests[split] = digest
        outputs.files[split] = str(job.output_file(split, digest))
    return outputs


def collect(
    job: JobLedger,
    results: pa.Table,
    row_custom_ids: Mapping[str, pa.Array],
    spec: OutputSpec,
    splits: Mapping[str, Dataset] | None,
    bodies: Mapping[str, bytes],
    cost: Callable[[pa.Table], pa.Array] | None = None,
    *,
    latest: pa.Table | None = None,
) -> Outputs:
    """Join the results to every split's rows and store the finished columns. ``splits`` (the
    input rows) are read only by ``parse``; ``bodies`` (custom_id -> the params sent) tell
    whether the job thinks, and make the conversations; ``cost(latest)`` prices each
    request's result. ``latest``: ``latest_results(results)``, when the caller has it."""
    if latest is None:
        latest = latest_results(results)
    # Every request sent once (the usual job): nothing to count.
    sent = None if latest.num_rows == results.num_rows else attempts(results)
    thinks = spec.thinking_column is not None and _thinks(job, bodies)
    costs = cost(latest) if cost is not None else None
    # Every split joined (each check made) before any is written; the rows are then written a
    # slice at a time. Samples are reshaped from every sample of a split at once.
    slices: dict[str, Iterable[pa.Table]] = {}
    asked_by_split: list[pa.Array] = []
    for split, ids in row_custom_ids.items():
        asked = sample_ids(ids, spec.samples)
        asked_by_split.append(asked)
        try:
            made = output_slices(
                asked,
                latest,
                sent,
                spec,
                rows=(
                    functools.partial(_repeated, splits[split], spec.samples)
                    if splits is not None
                    else None
                ),
                messages=functools.partial(_messages, job.ledger),
                thinking=functools.partial(_thinking, job.ledger) if thinks else None,
                bodies=bodies if spec.conversation_column is not None else None,
                cost=costs,
                slice_rows=OUTPUT_SLICE_ROWS if spec.samples == 1 else None,
            )
        except MissingResult as e:
            raise LedgerError(
                f"job {job.fingerprint} in the cache {job.ledger.root}: {e}. Run the same call "
                "again: dsbatch downloads what is missing (it never buys it twice).",
                path=str(job.dir),
            ) from e
        slices[split] = (
            reshape(
                table,
                spec.samples,
                as_rows=spec.samples_as == "rows",
                status_column=spec.status_column,
            )
            for table in made
        )
    # The batches that answered the job, stored with every split's columns (a later call that
    # reads them back still knows them): one list for all splits, which share one schema.
    # One split's ids as they are: concatenating would copy them.
    asked_all = (
        asked_by_split[0]
        if len(asked_by_split) == 1
        else pa.concat_arrays(asked_by_split or [pa.array([], pa.string())])
    )
    batches = {BATCHES_KEY: json.dumps(batches_answering(latest, asked_all)).encode()}
    give_back()  # what finding the latest results, their costs and the rows' requests held
    outputs = Outputs({}, {})
    for split, tables in slices.items():
        digest = job.write_output(split, *_with_schema(tables, batches))
        # Read back mapped: the output datasets map the file, not a copy in memory.
        stored = job.read_output(split, digest)
        if stored is None:
            raise LedgerError(
                f"job {job.fingerprint}: the columns just stored in "
                f"{job.output_file(split, digest)} cannot be read back: is the disk full or "
                "failing? Run the same call again (it pays nothing again).",
                path=str(job.output_file(split, digest)),
            )
        outputs.tables[split], outputs.digests[split] = stored, digest
        outputs.files[split] = str(job.output_file(split, digest))
        give_back()  # the split's slices, written and let go
    return outputs


def _with_schema(
    tables: Iterable[pa.Table], metadata: Mapping[bytes, bytes]
) -> tuple[pa.Schema, Iterator[pa.Table]]:
    """The schema of a split's slices (the first's, with ``metadata``), and the slices."""
    it = iter(tables)
    first = next(it)
    return first.schema.with_metadata(metadata), itertools.chain([first], it)


def _thinks(job: JobLedger, bodies: Mapping[str, bytes]) -> bool:
    """Whether any request of the job thinks (``_reasoning.any_thinks`` of its bodies): as its
    requests file says; else (a file of an older dsbatch) read in Arrow from that file: a model
    that always thinks, or one of the few bodies naming a ``thinking`` object, parsed."""
    said = job.requests_think()
    if said is not None:
        return said
    models = job.request_model_column()
    if models is None:  # no models kept (an older dsbatch): every body read
        return any_thinks(bodies.values())
    # Every request names its model (render refuses one without): the file keeps it.
    if any(request_thinks({"model": m}) for m in pc.unique(models.drop_null()).to_pylist()):
        return True
    for group in range(len(job.request_groups())):
        # A row group's bytes searched at once (Arrow's per-value search is slower; the whole
        # column at once would hold every body); a hit, rare, has the bodies that hold it
        # parsed.
        chunk = job.read_request_params(group)
        data = chunk.buffers()[2]
        if data is None or data.to_pybytes().find(_THINKING_OBJECT) < 0:
            continue
        named = chunk.filter(pc.match_substring(chunk, _THINKING_OBJECT.decode()).fill_null(False))
        if any(request_thinks(json.loads(body)) for body in named.to_pylist()):
            return True
    return False


def _repeated(dataset: Dataset, times: int) -> Iterator[dict[str, Any]]:
    """The rows once per sample, as the join builds the samples' columns (sample-major)."""
    return itertools.chain.from_iterable(iter_rows(dataset) for _ in range(times))


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


def _thinking(ledger: Ledger, answered: pa.Table) -> dict[str, str | None]:
    """custom_id -> the thinking column's value, read from the stored raw result lines (kept
    in Arrow: the lines that hold no thinking block are never parsed)."""
    texts: dict[str, str | None] = {}
    for batch_id in pc.unique(answered["batch_id"]).to_pylist():
        ids = answered.filter(pc.equal(answered["batch_id"], batch_id))["custom_id"]
        lines = ledger.store.table(batch_id, ["custom_id", "raw"])
        lines = lines.filter(pc.is_in(lines["custom_id"], value_set=ids.combine_chunks()))
        values = thinking_texts(lines["raw"].combine_chunks())
        texts.update(zip(lines["custom_id"].to_pylist(), values.to_pylist(), strict=True))
    return texts


def attach(
    splits: Mapping[str, Dataset],
    outputs: Outputs,
    *,
    status_column: str,
    on_error: str,
    output_key: str | None,
    labels: Mapping[str, str | None],
    repeat: int = 1,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Dataset]:
    """The output datasets, after ``on_error`` (one RowFailedError names every failing split).
    Each output's fingerprint follows its own input dataset's (two inputs of the same requests
    that differ elsewhere give two outputs). ``repeat``: output rows per input row
    (``samples_as="rows"``). ``provenance``: the step's facts (``_provenance.step_facts``
    without its batches), stamped on the status column's features."""
    failed = {split: failed_mask(table[status_column]) for split, table in outputs.tables.items()}
    if on_error == "raise":
        failures = {
            split: rows
            for split, mask in failed.items()
            if (rows := pc.indices_nonzero(mask).to_pylist())
        }
        if failures:
            raise _row_failed(outputs, failures, status_column, labels, repeat)
    out = {}
    for split, ds in splits.items():
        # The answers' digest, not just the job's: a rerun that changed answers (more attempts)
        # must not share a fingerprint, or datasets' own cache would serve stale rows.
        fingerprint = xxhash.xxh3_64_hexdigest(
            f"{fingerprint_of(ds)}|{outputs.digests[split]}|{output_key}|{on_error}".encode()
        )
        table = outputs.tables[split]
        features = Features.from_arrow_schema(table.schema.remove_metadata())
        if provenance is not None:
            features[status_column] = stamp(
                features[status_column], {**provenance, "batches": _batches(table)}
            )
        attached = attach_columns(
            ds,
            table.replace_schema_metadata(None),
            fingerprint=fingerprint,
            repeat=repeat,
            features=features,
            mapped_from=outputs.files.get(split),
        )
        if on_error == "drop":
            keep = pc.indices_nonzero(pc.invert(failed[split]))
            attached = attached.select(keep.to_pylist())
        out[split] = attached
    return out


def _batches(table: pa.Table) -> list[str] | None:
    """The batch ids stored with a split's columns; None for columns stored without them."""
    stored = (table.schema.metadata or {}).get(BATCHES_KEY)
    return None if stored is None else json.loads(stored)


def _row_failed(
    outputs: Outputs,
    failures: dict[str, list[int]],
    status_column: str,
    labels: Mapping[str, str | None],
    repeat: int,
) -> RowFailedError:
    details: list[str] = []
    custom_ids: list[str] = []
    by_split: dict[str, list[int]] = {}
    for split, rows in failures.items():
        values = outputs.tables[split][status_column].take(rows).to_pylist()
        failed = [_failed_sample(r, v, repeat) for r, v in zip(rows, values, strict=True)]
        custom_ids.extend(s["custom_id"] for _, s in failed)
        by_split[split] = list(dict.fromkeys(r // repeat for r in rows))
        where = "" if labels[split] is None else f" in split {split!r}"
        counts = Counter(s["status"] for _, s in failed)
        summary = ", ".join(f"{n} {_FAILED_AS.get(k, k)}" for k, n in counts.most_common())
        shown = "; ".join(f"{at}: {s['status']}: {s['error']}" for at, s in failed[:_SHOWN_ROWS])
        more = "; ..." if len(rows) > _SHOWN_ROWS else ""
        what = "samples" if repeat > 1 else "rows"
        details.append(f"{len(failed)} {what}{where} failed: {summary} ({shown}{more})")
    return RowFailedError(
        "; ".join(details) + ". Their results are cached: on_error='keep' returns the dataset "
        "without paying again.",
        rows=next(iter(by_split.values())),
        custom_ids=custom_ids,
        by_split=by_split,
    )


def _failed_sample(row: int, status: Any, repeat: int) -> tuple[str, dict[str, Any]]:
    """(where, status) of an output row's failure: its first failed sample in a row of lists;
    with ``repeat`` output rows per input row, which row and sample it is."""
    if isinstance(status, list):
        sample, status = next(
            (j, s) for j, s in enumerate(status) if s["status"] in FAILED_STATUSES
        )
        return f"row {row} sample {sample}", status
    if repeat > 1:
        return f"row {row // repeat} sample {row % repeat}", status
    return f"row {row}", status
