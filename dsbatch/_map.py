"""``dsbatch.map``: a Dataset through the Message Batches API, the way ``Dataset.map`` runs a
function: prepare (render every row, find the job), run (the job loop), collect (join)."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import anthropic
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from datasets import Dataset, DatasetDict

from dsbatch._backend import Backend
from dsbatch._compat import attach_columns, fingerprint_of, iter_rows
from dsbatch._errors import LedgerError, RowFailedError
from dsbatch._join import MissingResult, output_table
from dsbatch._ledger import JobLedger, Ledger
from dsbatch._limits import MAX_BATCH_BYTES, MAX_BATCH_REQUESTS
from dsbatch._options import MapOptions
from dsbatch._plan import job_fingerprint
from dsbatch._policy import FAILED_STATUSES, attempts, latest_results
from dsbatch._poll import PollSchedule
from dsbatch._records import Manifest
from dsbatch._render import Rendered, render_split
from dsbatch._run import JobLoop, RunOptions

__all__ = ["map"]

log = logging.getLogger("dsbatch")

_SINGLE = "data"  # the split key of a plain Dataset


def map(  # noqa: A001 - the name mirrors Dataset.map on purpose
    dataset: Dataset | DatasetDict,
    prompt: Callable[..., Any],
    *,
    model: str | None,
    max_tokens: int = 1024,
    system: str | list[dict[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    response_format: type | None = None,
    parse: Callable[[dict[str, Any], dict[str, Any]], Mapping[str, Any]] | None = None,
    output_column: str = "response",
    with_indices: bool = False,
    structured_output: Literal["native", "tool"] = "native",
    betas: list[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    client: anthropic.Anthropic | None = None,
    max_attempts: int = 3,
    on_error: Literal["keep", "drop", "raise"] = "keep",
    poll_interval: float | PollSchedule | None = None,
    resend_canceled: bool = False,
    status_column: str = "dsbatch",
    progress: bool = True,
    max_batch_requests: int = MAX_BATCH_REQUESTS,
    max_batch_bytes: int = MAX_BATCH_BYTES,
) -> Dataset | DatasetDict:
    """Run every row of ``dataset`` through ``prompt`` and the Message Batches API.

    ``prompt(row)`` (or ``prompt(row, idx)`` with ``with_indices``) returns a str (one user
    message), a list of messages, a dict of Messages params (merged over ``model``,
    ``max_tokens``, ``system`` and ``params``; the prompt wins), or None to skip the row.

    Returns the dataset with new columns: ``output_column`` (the answer's text), one column per
    field of ``response_format`` (a pydantic model; ``structured_output`` "native" asks for
    JSON output, "tool" forces a tool call), the columns ``parse(row, message)`` returns
    (``message`` is the answer as the API sent it, a dict), and ``status_column`` (status,
    error, custom_id, stop_reason, token counts, attempts). A ``DatasetDict`` is one job across
    all splits and comes back as a ``DatasetDict``. ``betas`` go out as the ``anthropic-beta``
    header of every batch.

    Identical requests are sent once. Results are cached under ``cache_dir`` (else
    ``DSBATCH_CACHE``, else ``$HF_HOME/dsbatch``): the same call again makes no API call, and a
    call that changed some rows sends only those. Errored (other than
    ``invalid_request_error``) and expired requests are sent again, up to ``max_attempts`` in
    all; canceled ones only with ``resend_canceled=True``. What still failed follows
    ``on_error``: ``"keep"`` the row with a null answer, ``"drop"`` it, or ``"raise"``
    ``dsbatch.RowFailedError``.
    """
    if not isinstance(dataset, (Dataset, DatasetDict)):
        raise TypeError(
            f"dsbatch.map takes a datasets.Dataset or DatasetDict, not {type(dataset).__name__}"
        )
    if not callable(prompt):
        raise TypeError(f"prompt must be a function of the row, not {type(prompt).__name__}")
    options = MapOptions.build(
        model=model,
        max_tokens=max_tokens,
        system=system,
        params=params,
        response_format=response_format,
        parse=parse,
        output_column=output_column,
        status_column=status_column,
        structured_output=structured_output,
        betas=betas,
        with_indices=with_indices,
        cache_dir=cache_dir,
        max_attempts=max_attempts,
        on_error=on_error,
        poll_interval=poll_interval,
        resend_canceled=resend_canceled,
        progress=progress,
        max_batch_requests=max_batch_requests,
        max_batch_bytes=max_batch_bytes,
    )
    splits = dict(dataset) if isinstance(dataset, DatasetDict) else {_SINGLE: dataset}
    work = _prepare(
        splits, prompt, options, Backend(client), labelled=isinstance(dataset, DatasetDict)
    )
    outputs = _cached_output(work) or _run(work)
    out = _attach(work, outputs)
    return DatasetDict(out) if isinstance(dataset, DatasetDict) else out[_SINGLE]


@dataclass
class _Work:
    """A prepared job: its requests, where it lives, and how to run and collect it."""

    splits: dict[str, Dataset]
    labels: dict[str, str | None]  # how errors name each split (None for a plain Dataset)
    rendered: Rendered
    options: MapOptions
    backend: Backend
    job: JobLedger


@dataclass
class _Outputs:
    """A job's new columns per split, and a digest of each (it changes when answers do)."""

    tables: dict[str, pa.Table]
    digests: dict[str, str]


def _prepare(
    splits: dict[str, Dataset],
    prompt: Callable[..., Any],
    options: MapOptions,
    backend: Backend,
    *,
    labelled: bool,
) -> _Work:
    labels = {split: split if labelled else None for split in splits}
    options.check_columns({labels[s] or "": ds.column_names for s, ds in splits.items()})
    shape = options.shape(backend.api_version)
    rendered = Rendered()
    for split, ds in splits.items():
        render_split(
            rendered,
            split,
            ds,
            prompt,
            shape=shape,
            with_indices=options.with_indices,
            label=labels[split],
        )
    job = Ledger(options.cache_dir).job(job_fingerprint(rendered.row_custom_ids))
    return _Work(splits, labels, rendered, options, backend, job)


def _cached_output(work: _Work) -> _Outputs | None:
    """The finished columns of an earlier call whose answers and output options match."""
    manifest = work.job.read_manifest()
    key = work.options.output_key()
    if manifest is None or manifest.state != "finished" or key is None:
        return None
    if manifest.output_key != key:
        return None
    outputs = _Outputs({}, {})
    for split in work.splits:
        table = work.job.read_output(split)
        if table is None or split not in manifest.outputs:
            return None
        outputs.tables[split] = table
        outputs.digests[split] = manifest.outputs[split]
    return outputs


def _run(work: _Work) -> _Outputs:
    job, options = work.job, work.options
    with job.locked():
        cached = _cached_output(work)  # another process may have finished it meanwhile
        if cached is not None:
            return cached
        rendered = work.rendered
        manifest = job.read_manifest() or Manifest(
            fingerprint=job.fingerprint,
            created_at=time.time(),
            splits={s: len(ids) for s, ids in rendered.row_custom_ids.items()},
            requests=len(rendered.bodies),
            model=options.defaults.get("model"),
            betas=list(options.betas),
        )
        manifest.state = "running"
        job.write_manifest(manifest)
        if not job.has_requests():
            job.write_requests(list(rendered.bodies), list(rendered.bodies.values()))
        for split, ids in rendered.row_custom_ids.items():
            if job.read_rows(split) is None:
                job.write_rows(split, ids)
        loop = JobLoop(
            work.backend,
            job,
            rendered.bodies,
            RunOptions(
                max_attempts=options.max_attempts,
                max_batch_requests=options.max_batch_requests,
                max_batch_bytes=options.max_batch_bytes,
                betas=options.betas,
                resend_canceled=options.resend_canceled,
                schedule=options.schedule,
                progress=options.progress,
            ),
            first_row=rendered.first_row,
        )
        try:
            loop.run()
        except KeyboardInterrupt:
            log.warning(
                "dsbatch: interrupted; batches already created keep running and are paid for. "
                "Run the same call again to pick job %s up where it stopped.",
                job.fingerprint,
            )
            raise
        outputs = _collect(work, loop.results())
        manifest.state, manifest.finished_at = "finished", time.time()
        manifest.output_key, manifest.outputs = options.output_key(), outputs.digests
        job.write_manifest(manifest)
        return outputs


def _collect(work: _Work, results: pa.Table) -> _Outputs:
    """Join the results to every split's rows and store the finished columns."""
    latest = latest_results(results)
    sent = attempts(results)
    spec = work.options.output
    outputs = _Outputs({}, {})
    for split, ids in work.rendered.row_custom_ids.items():
        ds = work.splits[split]
        try:
            table = output_table(
                pa.array(ids, pa.string()),
                latest,
                sent,
                spec,
                rows=functools.partial(iter_rows, ds),
                messages=functools.partial(_messages, work.job.ledger),
            )
        except MissingResult as e:
            raise LedgerError(
                f"job {work.job.fingerprint} in the cache {work.job.ledger.root}: {e}. Run the "
                "same call again: dsbatch downloads what is missing (it never buys it twice).",
                path=str(work.job.dir),
            ) from e
        outputs.tables[split] = table
        outputs.digests[split] = work.job.write_output(split, table)
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


def _attach(work: _Work, outputs: _Outputs) -> dict[str, Dataset]:
    """The output datasets, after ``on_error`` (one RowFailedError names every failing split)."""
    options = work.options
    failed = {
        split: pc.is_in(
            pc.struct_field(table[options.output.status_column], "status"),
            value_set=pa.array(FAILED_STATUSES),
        ).fill_null(False)
        for split, table in outputs.tables.items()
    }
    if options.on_error == "raise":
        failures = {
            split: rows
            for split, mask in failed.items()
            if (rows := pc.indices_nonzero(mask.combine_chunks()).to_pylist())
        }
        if failures:
            raise _row_failed(work, outputs, failures)
    out = {}
    for split, ds in work.splits.items():
        # The answers' digest, not just the job's: a rerun that changed answers (more attempts)
        # must not share a fingerprint, or datasets' own cache would serve stale rows.
        fingerprint = xxhash.xxh3_64_hexdigest(
            f"{fingerprint_of(ds)}|{outputs.digests[split]}|{options.output_key()}|"
            f"{options.on_error}".encode()
        )
        attached = attach_columns(ds, outputs.tables[split], fingerprint=fingerprint)
        if options.on_error == "drop":
            keep = pc.indices_nonzero(pc.invert(failed[split]).combine_chunks())
            attached = attached.select(keep.to_pylist())
        out[split] = attached
    return out


# What each failed status means, as a RowFailedError says it.
_FAILED_AS = {
    "errored": "errored (no answer; not billed)",
    "expired": "expired (no answer; not billed)",
    "canceled": "canceled (no answer; not billed)",
    "parse_error": "parse_error (answered and paid for, but the answer did not parse; the raw "
    "answer is in the output column)",
}
_SHOWN_ROWS = 5


def _row_failed(work: _Work, outputs: _Outputs, failures: dict[str, list[int]]) -> RowFailedError:
    status_column = work.options.output.status_column
    details: list[str] = []
    custom_ids: list[str] = []
    for split, rows in failures.items():
        statuses = outputs.tables[split][status_column].take(rows).to_pylist()
        custom_ids.extend(s["custom_id"] for s in statuses)
        where = "" if work.labels[split] is None else f" in split {split!r}"
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
