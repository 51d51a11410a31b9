"""Rendering in worker processes (``num_proc``), as ``Dataset.map(num_proc=)`` runs a function.

Each split is cut into ``num_proc`` contiguous shards (``Dataset.shard(contiguous=True)``); a
worker renders each with ``render_split``, naming rows by their index in the split, and this
process merges the shards in order. The requests are the bytes one process makes: the same
custom_ids in the same order, the same first row of each request (the first in the split, whatever
shard it fell in), the same text templates and prompt-cache marks (``TemplateMarks`` fills its
table in the worker that made the template: each worker sends it back).

The prompt function goes to the workers pickled with ``dill`` (through ``multiprocess``, as
``datasets`` sends map functions), which takes lambdas and closures. One that still cannot be
pickled (it holds a lock, an open file, a client) is rendered in this process, with one warning
saying why: the requests are the same, only slower. The first row that fails, in row order, is
raised as one process raises it, and the pool is stopped.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dill
import pyarrow as pa
from datasets import Dataset
from datasets.table import InMemoryTable

from dsbatch._prefix import TemplateMarks
from dsbatch._render import Rendered, RequestShape, render_split

__all__ = ["render_splits"]

log = logging.getLogger("dsbatch")

# One shard for a worker: the pickled prompt and settings, the split, its label, the rows, and
# the index in the split of the first of them.
_Task = tuple[bytes, str, "str | None", Dataset, int]


def render_splits(
    rendered: Rendered,
    splits: Mapping[str, Dataset],
    prompt: Callable[..., Any],
    *,
    shape: RequestShape,
    with_indices: bool,
    labels: Mapping[str, str | None],
    samples: int = 1,
    text_only: bool = False,
    num_proc: int | None = None,
) -> None:
    """Render every row of every split into ``rendered``, in ``num_proc`` processes (None or 1,
    or a dataset of one row per split: in this one)."""
    shards = max((len(ds) for ds in splits.values()), default=0)
    processes = min(num_proc or 1, shards)
    settings = (prompt, shape, with_indices, samples, text_only)
    payload = _pickled(settings, num_proc) if processes > 1 else None
    if payload is None:
        for split, ds in splits.items():
            render_split(
                rendered,
                split,
                ds,
                prompt,
                shape=shape,
                with_indices=with_indices,
                label=labels[split],
                samples=samples,
                text_only=text_only,
            )
        return
    import multiprocess  # only when asked: a pool is ~0.5 s to start and stop

    tasks = list(_tasks(payload, splits, labels, processes))
    ids: dict[str, list[str | None]] = {split: [] for split in splits}
    templated: set[str] = set()
    every_templated = True  # every body of every shard made from its text template
    marks = shape.mark if isinstance(shape.mark, TemplateMarks) else None
    # Leaving the block stops the pool, also when a shard raised: no worker renders on.
    with multiprocess.Pool(processes) as pool:
        for (_, split, _, _, _), result in zip(tasks, pool.imap(_render_shard, tasks)):
            part, made = pickle.loads(result)
            ids[split].extend(part.row_custom_ids[split])
            every_templated = every_templated and part.from_template == len(part.bodies)
            for custom_id, body in part.bodies.items():
                # In shard order: a request keeps the first row that asked for it.
                if custom_id not in rendered.bodies:
                    rendered.bodies[custom_id] = body
            if part.templates and split not in templated:
                # One process makes one template per split: every shard made the same one.
                templated.add(split)
                rendered.templates.extend(part.templates)
            if marks is not None:
                marks.made.update(made)
    rendered.row_custom_ids.update(ids)
    rendered.labels.update(labels)
    rendered.samples = samples
    if every_templated:
        rendered.from_template = len(rendered.bodies)


def _tasks(
    payload: bytes,
    splits: Mapping[str, Dataset],
    labels: Mapping[str, str | None],
    processes: int,
) -> Iterator[_Task]:
    """The shards of every split, in order: at most ``processes`` per split, contiguous."""
    for split, ds in splits.items():
        start = 0
        count = min(processes, len(ds))
        for index in range(count):
            shard = _own_rows(ds.shard(num_shards=count, index=index, contiguous=True))
            yield payload, split, labels[split], shard, start
            start += len(shard)


def _own_rows(shard: Dataset) -> Dataset:
    """The shard as it is best sent to a worker. A dataset read from files pickles as their
    paths; one held in memory pickles its whole table, whatever slice of it the shard is (N
    shards: N copies of the dataset): it gets a copy of its own rows."""
    if shard.cache_files or shard._indices is not None:
        return shard
    table = shard.data.table
    rows = table.take(pa.array(range(table.num_rows), pa.int64()))
    return Dataset(InMemoryTable(rows), info=shard.info.copy(), split=shard.split)


def _render_shard(task: _Task) -> bytes:
    """In a worker: render one shard; its requests and the marks its template got, pickled
    with the standard pickle (dill's pure-Python one is slow on many bodies)."""
    payload, split, label, dataset, start = task
    prompt, shape, with_indices, samples, text_only = dill.loads(payload)
    part = Rendered()
    render_split(
        part,
        split,
        dataset,
        prompt,
        shape=shape,
        with_indices=with_indices,
        label=label,
        samples=samples,
        text_only=text_only,
        start=start,
    )
    made = shape.mark.made if isinstance(shape.mark, TemplateMarks) else {}
    return pickle.dumps((part, made), protocol=pickle.HIGHEST_PROTOCOL)


def _pickled(settings: tuple[Any, ...], num_proc: int | None) -> bytes | None:
    """The prompt function and the request shape as the workers get them; None (and one
    warning) when they cannot be pickled."""
    try:
        return bytes(dill.dumps(settings))
    except Exception as e:  # dill fails in many ways; all mean the same here
        log.warning(
            "dsbatch: num_proc=%s: rendering in this process only, as the prompt function "
            "cannot be sent to worker processes (%s: %s). The requests are the same; to render "
            "in %s processes, make the prompt function picklable (load what it holds, e.g. a "
            "client or an open file, inside it)",
            num_proc,
            type(e).__name__,
            str(e)[:200],
            num_proc,
        )
        return None
