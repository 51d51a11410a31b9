"""``dsbatch.map``: a Dataset through the Message Batches API, the way ``Dataset.map`` runs a
function. Render, plan, then the job loop, then join; each stage lives in its own module."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import anthropic
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from datasets import Dataset, DatasetDict

from dsbatch._backend import Backend
from dsbatch._errors import RowFailedError
from dsbatch._join import FAILED_STATUSES, attach_columns, output_table
from dsbatch._ledger import JobLedger, Ledger
from dsbatch._plan import MAX_BATCH_BYTES, MAX_BATCH_REQUESTS, job_fingerprint
from dsbatch._poll import PollSchedule, poll_schedule
from dsbatch._render import Rendered, render_split
from dsbatch._run import JobRun, RunOptions

__all__ = ["map"]

log = logging.getLogger("dsbatch")

_SINGLE = "data"  # the split key of a plain Dataset
_ON_ERROR = ("keep", "drop", "raise")


def map(  # noqa: A001 - the name mirrors Dataset.map on purpose
    dataset: Dataset | DatasetDict,
    prompt: Callable[..., Any],
    *,
    model: str | None,
    max_tokens: int = 1024,
    system: str | list[dict[str, Any]] | None = None,
    params: Mapping[str, Any] | None = None,
    output_column: str = "response",
    with_indices: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    client: anthropic.Anthropic | None = None,
    max_attempts: int = 3,
    on_error: Literal["keep", "drop", "raise"] = "keep",
    poll_interval: float | PollSchedule | None = None,
    progress: bool = True,
    max_batch_requests: int = MAX_BATCH_REQUESTS,
    max_batch_bytes: int = MAX_BATCH_BYTES,
) -> Dataset | DatasetDict:
    """Run every row of ``dataset`` through ``prompt`` and the Message Batches API.

    ``prompt(row)`` (or ``prompt(row, idx)`` with ``with_indices``) returns a str (one user
    message), a list of messages, a dict of Messages params (merged over ``model``,
    ``max_tokens``, ``system`` and ``params``; the prompt wins), or None to skip the row.

    Returns the dataset with two new columns: ``output_column`` (the answer's text) and
    ``dsbatch`` (status, error, custom_id, stop_reason, token counts, attempts). A
    ``DatasetDict`` is one job across all splits and comes back as a ``DatasetDict``.

    Identical requests are sent once. Results are cached under ``cache_dir`` (else
    ``DSBATCH_CACHE``, else ``$HF_HOME/dsbatch``): the same call again makes no API call, and a
    call that changed some rows sends only those. Errored (other than
    ``invalid_request_error``) and expired requests are sent again, up to ``max_attempts`` in
    all; what still failed follows ``on_error``: ``"keep"`` the row with a null answer,
    ``"drop"`` it, or ``"raise"`` ``dsbatch.RowFailedError``.
    """
    _check_arguments(
        dataset, prompt, output_column, max_attempts, on_error, max_batch_requests, max_batch_bytes
    )
    _check_defaults(model, max_tokens, system, params)
    schedule = poll_schedule(poll_interval)
    splits = _splits(dataset)
    defaults: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    if system is not None:
        defaults["system"] = system
    defaults.update(params or {})
    if defaults.get("model") is None:
        del defaults["model"]

    rendered = Rendered()
    for split, ds in splits.items():
        render_split(
            rendered,
            split,
            ds,
            prompt,
            defaults=defaults,
            with_indices=with_indices,
            label=None if isinstance(dataset, Dataset) else split,
        )
    fingerprint = job_fingerprint(rendered)
    ledger = Ledger(cache_dir)
    job = ledger.job(fingerprint)

    finished = _cached_output(job, splits, output_column, max_attempts)
    if finished is None:
        with job.locked():
            finished = _cached_output(job, splits, output_column, max_attempts)
            if finished is None:
                finished = _run_job(
                    job,
                    ledger,
                    rendered,
                    client,
                    output_column,
                    RunOptions(
                        max_attempts=max_attempts,
                        max_batch_requests=max_batch_requests,
                        max_batch_bytes=max_batch_bytes,
                        schedule=schedule,
                        progress=progress,
                    ),
                )

    out = {}
    for split, ds in splits.items():
        label = None if isinstance(dataset, Dataset) else split
        table = _apply_on_error(finished.tables[split], on_error, label)
        # The answers' digest, not just the job's: a rerun that changed answers (more attempts)
        # must not share a fingerprint, or datasets' own cache would serve stale rows.
        new_fp = xxhash.xxh3_64_hexdigest(
            f"{ds._fingerprint}|{finished.digests[split]}|{output_column}|{on_error}".encode()
        )
        attached = attach_columns(ds, table, fingerprint=new_fp)
        if on_error == "drop":
            keep = pc.invert(
                pc.is_in(
                    pc.struct_field(table["dsbatch"], "status"), value_set=pa.array(FAILED_STATUSES)
                )
            )
            attached = attached.select(pc.indices_nonzero(keep.combine_chunks()).to_pylist())
        out[split] = attached
    if isinstance(dataset, DatasetDict):
        return DatasetDict(out)
    return out[_SINGLE]


@dataclass
class Finished:
    """A job's new columns per split, and a digest of each (it changes when answers do)."""

    tables: dict[str, pa.Table]
    digests: dict[str, str]


def _run_job(
    job: JobLedger,
    ledger: Ledger,
    rendered: Rendered,
    client: anthropic.Anthropic | None,
    output_column: str,
    options: RunOptions,
) -> Finished:
    manifest = job.read_manifest() or {}
    if not job.has_requests():
        job.write_requests(list(rendered.bodies), list(rendered.bodies.values()))
    job.write_manifest(
        {
            **manifest,
            "fingerprint": job.fingerprint,
            "created_at": manifest.get("created_at", time.time()),
            "splits": {s: len(ids) for s, ids in rendered.row_custom_ids.items()},
            "requests": len(rendered.bodies),
            "state": "running",
        }
    )
    try:
        outcome = JobRun(Backend(client), ledger, job, rendered, options).run()
    except KeyboardInterrupt:
        log.warning(
            "dsbatch: interrupted; batches already created keep running and are paid for. "
            "Run the same call again to pick job %s up where it stopped.",
            job.fingerprint,
        )
        raise
    finished = Finished({}, {})
    for split, ids in rendered.row_custom_ids.items():
        table = output_table(ids, outcome.results, outcome.attempts, output_column=output_column)
        finished.tables[split] = table
        finished.digests[split] = job.write_output(split, table)
    job.write_manifest(
        {
            **(job.read_manifest() or {}),
            "state": "finished",
            "finished_at": time.time(),
            "max_attempts": options.max_attempts,
            "output_column": output_column,
            "outputs": finished.digests,
        }
    )
    return finished


def _cached_output(
    job: JobLedger, splits: Mapping[str, Dataset], output_column: str, max_attempts: int
) -> Finished | None:
    """The finished columns of an earlier identical call, if nothing could have changed them."""
    manifest = job.read_manifest()
    if not manifest or manifest.get("state") != "finished":
        return None
    # More attempts allowed now than then: the failures deserve another try.
    if manifest.get("max_attempts", 0) < max_attempts:
        return None
    digests = manifest.get("outputs") or {}
    finished = Finished({}, {})
    for split in splits:
        table = job.read_output(split)
        if table is None or split not in digests:
            return None
        if manifest.get("output_column") != output_column:
            table = table.rename_columns([output_column, "dsbatch"])
        finished.tables[split] = table
        finished.digests[split] = digests[split]
    return finished


def _apply_on_error(table: pa.Table, on_error: str, split: str | None) -> pa.Table:
    if on_error != "raise":
        return table
    status = pc.struct_field(table["dsbatch"], "status")
    failed = pc.is_in(status, value_set=pa.array(FAILED_STATUSES))
    rows = pc.indices_nonzero(failed.combine_chunks()).to_pylist()
    if not rows:
        return table
    sample = table.take(rows[:5])["dsbatch"].to_pylist()
    details = "; ".join(f"row {r}: {s['status']}: {s['error']}" for r, s in zip(rows, sample))
    where = "" if split is None else f" in split {split!r}"
    raise RowFailedError(
        f"{len(rows)} rows{where} ended without an answer ({details}"
        f"{'; ...' if len(rows) > 5 else ''}). Their results are cached: on_error='keep' "
        "returns the dataset without paying again.",
        rows=rows,
        custom_ids=[s["custom_id"] for s in table.take(rows)["dsbatch"].to_pylist()],
    )


def _splits(dataset: Dataset | DatasetDict) -> dict[str, Dataset]:
    if isinstance(dataset, DatasetDict):
        return dict(dataset)
    return {_SINGLE: dataset}


def _check_arguments(
    dataset: Any,
    prompt: Any,
    output_column: str,
    max_attempts: int,
    on_error: str,
    max_batch_requests: int,
    max_batch_bytes: int,
) -> None:
    if not isinstance(dataset, (Dataset, DatasetDict)):
        raise TypeError(
            f"dsbatch.map takes a datasets.Dataset or DatasetDict, not {type(dataset).__name__}"
        )
    if not callable(prompt):
        raise TypeError(f"prompt must be a function of the row, not {type(prompt).__name__}")
    if not isinstance(output_column, str) or not output_column or output_column == "dsbatch":
        raise ValueError(
            f"output_column must be a non-empty name other than 'dsbatch', not {output_column!r}"
        )
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, not {on_error!r}")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an integer >= 1, not {max_attempts!r}")
    if not 1 <= max_batch_requests <= MAX_BATCH_REQUESTS:
        raise ValueError(f"max_batch_requests must be between 1 and {MAX_BATCH_REQUESTS:,}")
    if not 1 <= max_batch_bytes <= MAX_BATCH_BYTES:
        raise ValueError(f"max_batch_bytes must be between 1 and {MAX_BATCH_BYTES:,}")


def _check_defaults(model: Any, max_tokens: Any, system: Any, params: Any) -> None:
    if model is not None and (not isinstance(model, str) or not model):
        raise TypeError(f"model must be a model name such as 'claude-haiku-4-5', not {model!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, not {max_tokens!r}")
    if system is not None and not isinstance(system, (str, list)):
        raise TypeError(
            f"system must be a str or a list of text blocks, not {type(system).__name__}"
        )
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of Messages params, not {type(params).__name__}")
