"""Every use of ``datasets`` internals, in one place, for every ``datasets`` version we support.

``datasets`` has no public way to append Arrow columns to a dataset or read its fingerprint;
these few helpers do it, and CI runs them against the lowest ``datasets`` version
``pyproject.toml`` allows as well as the newest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features
from datasets.table import InMemoryTable, MemoryMappedTable, Table, concat_tables

__all__ = ["attach_columns", "fingerprint_of", "iter_rows", "take_rows"]

_ITER_BATCH = 1000


def iter_rows(dataset: Dataset) -> Iterator[dict[str, Any]]:
    """The rows as plain dicts (whatever the dataset's format), read a thousand at a time."""
    for batch in dataset.with_format(None).iter(batch_size=_ITER_BATCH):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys), strict=True):
            yield dict(zip(keys, values, strict=True))


def take_rows(dataset: Dataset, rows: list[int]) -> Dataset:
    """The rows at these indices as a dataset of their own (no indices mapping left to flatten
    later), without the progress bar ``datasets`` shows for it."""
    import datasets

    shown = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return dataset.select(rows).flatten_indices()
    finally:
        if shown:
            datasets.enable_progress_bars()


def fingerprint_of(dataset: Dataset) -> str:
    """The dataset's fingerprint (what ``datasets`` caches ``map`` results by)."""
    return str(dataset._fingerprint)


def attach_columns(
    dataset: Dataset,
    new: pa.Table,
    *,
    fingerprint: str,
    repeat: int = 1,
    features: Features | None = None,
    mapped_from: str | None = None,
) -> Dataset:
    """The dataset with the new columns appended (their features follow their Arrow types,
    unless ``features`` gives them), in the dataset's own format (numpy, torch, ...);
    ``repeat``: each row ``repeat`` times in a row, beside as many rows of ``new``.
    ``mapped_from``: the Arrow stream file ``new`` was read from, which the dataset then maps
    as it maps its own cache files: pickling it, ``map(num_proc=)`` and ``save_to_disk`` read
    the file, and never hold a copy of the columns in memory."""
    fmt = dataset.format
    if features is None:
        features = Features.from_arrow_schema(new.schema)
    added: Table = InMemoryTable(new)
    if mapped_from is not None:
        added = MemoryMappedTable(new, mapped_from, [("replace_schema_metadata", (None,), {})])
    if not dataset.column_names:
        info = dataset.info.copy()
        info.features = features
        out = Dataset(added, info=info, split=dataset.split, fingerprint=fingerprint)
    else:
        if repeat > 1:
            rows = np.repeat(np.arange(len(dataset)), repeat)
            if dataset._indices is not None:
                rows = dataset._indices.column(0).to_numpy()[rows]
            data = InMemoryTable(dataset._data.table.take(pa.array(rows)))
        elif dataset._indices is not None:
            data = dataset.flatten_indices()._data
        else:
            data = dataset._data
        table = concat_tables([data, added], axis=1)
        info = dataset.info.copy()
        info.features.update(features)
        out = Dataset(table, info=info, split=dataset.split, fingerprint=fingerprint)
    if fmt["type"] is None and fmt["columns"] is None:
        return out
    columns = fmt["columns"]
    if columns is not None:
        columns = [c for c in columns if c not in new.column_names] + new.column_names
    return out.with_format(
        fmt["type"],
        columns=columns,
        output_all_columns=fmt["output_all_columns"],
        **fmt["format_kwargs"],
    )
