"""What a job keeps of its input rows, so that ``Job.result()`` and ``dsbatch collect`` work in
another process, without the dataset or the prompt function.

Each split is kept as ``datasets`` itself pickles a dataset (as ``Dataset.map(num_proc=...)``
sends one to its workers): a dataset read from files (``load_dataset``, ``load_from_disk``, a
``.map`` result) pickles as a reference to its Arrow files plus the operations made on them
(a selection, a shuffle, a format), about a kilobyte; a dataset built in memory (``from_dict``,
``from_pandas``) pickles as its rows, so the job keeps a copy of them (as much disk as the rows
take in memory). A referenced file that changed or is gone since the job started is noticed (its
size and modification time are kept), and ``result()`` then asks for the dataset itself.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from typing import Any

from datasets import Dataset

from dsbatch._compat import fingerprint_of
from dsbatch._errors import LedgerError
from dsbatch._ledger import JobLedger

__all__ = ["InputsUnavailable", "check_given", "files_of", "keep_inputs", "load_inputs"]

log = logging.getLogger("dsbatch")


class InputsUnavailable(LookupError):
    """The job's input rows cannot be rebuilt: the caller says what to pass instead."""


def files_of(dataset: Dataset) -> list[list[Any]]:
    """[path, size, mtime_ns] of every file the dataset reads."""
    files = []
    for entry in dataset.cache_files:
        path = entry["filename"]
        try:
            stat = os.stat(path)
        except OSError:
            continue
        files.append([path, stat.st_size, stat.st_mtime_ns])
    return files


def keep_inputs(job: JobLedger, splits: Mapping[str, Dataset]) -> dict[str, dict[str, Any]]:
    """Keep every split; returns what the manifest records of each (fingerprint, files, and
    ``kept: False`` for a split that cannot be pickled: ``result()`` then asks for it)."""
    kept = {}
    for split, dataset in splits.items():
        entry: dict[str, Any] = {"fingerprint": fingerprint_of(dataset), "files": files_of(dataset)}
        try:
            job.write_input(split, dataset)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            # A transform or format function made in a script or notebook (a lambda): the job
            # runs all the same; only another process's result() needs the dataset passed.
            log.info("dsbatch: job %s cannot keep its input rows (%s)", job.fingerprint, e)
            entry = {**entry, "files": [], "kept": False}
        kept[split] = entry
    return kept


def load_inputs(
    job: JobLedger, kept: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str | None]
) -> dict[str, Dataset]:
    """The job's input splits as it was started on them; InputsUnavailable saying why not."""
    out = {}
    for split, entry in kept.items():
        where = "" if labels.get(split) is None else f" (split {split!r})"
        if entry.get("kept") is False:
            raise InputsUnavailable(
                f"the job's input{where} could not be kept (it cannot be pickled: a transform "
                "or format function defined in a script or notebook?)"
            )
        for path, size, mtime_ns in entry.get("files", []):
            try:
                stat = os.stat(path)
            except OSError:
                raise InputsUnavailable(
                    f"the file {path} that the job's input{where} was read from is gone"
                ) from None
            if (stat.st_size, stat.st_mtime_ns) != (size, mtime_ns):
                raise InputsUnavailable(
                    f"the file {path} that the job's input{where} was read from has changed "
                    "since the job started"
                )
        try:
            dataset = job.read_input(split)
        except LedgerError as e:
            raise InputsUnavailable(str(e)) from e
        if not isinstance(dataset, Dataset):
            raise InputsUnavailable(f"the job's input{where} was not kept (an older dsbatch)")
        out[split] = dataset
    return out


def check_given(
    given: Mapping[str, Dataset], kept: Mapping[str, Mapping[str, Any]], fingerprint: str
) -> None:
    """Refuse a dataset passed to ``result(dataset=...)`` that is not the one the job ran on."""
    if set(given) != set(kept):
        raise ValueError(
            f"job {fingerprint} was run on the splits {sorted(kept)}, not {sorted(given)}"
        )
    for split, dataset in given.items():
        expected = kept[split]["fingerprint"]
        if fingerprint_of(dataset) != expected:
            where = f" split {split!r}" if len(kept) > 1 else ""
            raise ValueError(
                f"this dataset{where} is not the one job {fingerprint} was run on (its "
                f"fingerprint is {fingerprint_of(dataset)}, the job's input's was {expected})"
            )
