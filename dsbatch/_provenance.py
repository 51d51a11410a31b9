"""Provenance: what each dsbatch step behind a dataset was, carried by the data itself.

A step's facts (model, hashes of the prompt function, params and system prompt, versions, dates,
batch ids) are one compact JSON object stored as the ``id`` of the ``status`` field of the
step's status column (``Value("string", id=...)``). ``datasets`` keeps a feature's id wherever
it keeps the features: ``save_to_disk``, the parquet schema metadata (``to_parquet``,
``push_to_hub``), the Hub's card YAML (``dataset_info``), ``map``/``select``/``filter``, column
renames. So the provenance goes wherever the status column goes, once per step (never per row),
and a second step, whatever its status column is called, adds its own. What the data itself
says (rows, statuses, tokens, cost) is read from the status column when the card is made.

The facts of a call are computed when the job starts and kept in its manifest, so a job
collected in another process (``Job.load(...).result()``) carries them too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Features, Value

__all__ = [
    "BATCHES_KEY",
    "MARK",
    "batches_answering",
    "call_facts",
    "find_steps",
    "step_facts",
    "stamp",
]

# The key (and format number) that tells a feature id holding a step's facts from any other.
MARK = "dsbatch_step"
_FORMAT = 1
# The stored output columns' schema metadata: the batches whose answers they hold.
BATCHES_KEY = b"dsbatch.batches"
_HASH_CHARS = 16


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_HASH_CHARS]


def _json_digest(value: Any) -> str | None:
    if value is None:
        return None
    return _digest(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def prompt_digest(prompt: Callable[..., Any]) -> str | None:
    """A hash of the prompt function's source (its bytecode when the source cannot be read,
    e.g. a function typed into a console); None for a callable with neither."""
    try:
        return _digest(inspect.getsource(prompt).encode())
    except (OSError, TypeError):
        code = getattr(prompt, "__code__", None)
        if code is None:
            return None
        return _digest(code.co_code + repr(code.co_consts).encode())


def _models(default: str | None, models: Iterable[str | None]) -> list[str]:
    """The models the requests name (the prompt may override ``model=``), from the model of
    each request (``_cost.model_of``, as the requests file keeps it)."""
    named = sorted({m for m in models if isinstance(m, str)})
    return named if named or default is None else [default]


def call_facts(
    prompt: Callable[..., Any],
    *,
    model: str | None,
    system: Any,
    params: Mapping[str, Any] | None,
    max_tokens: int,
    samples: int,
    betas: list[str],
    response_format: type | None,
    api_version: str,
    models: Iterable[str | None],
) -> dict[str, Any]:
    """What one ``dsbatch.map`` call was, as a job keeps it (no secret: the prompt, params and
    system prompt only as hashes; no API key)."""
    import anthropic

    import dsbatch

    return {
        "models": _models(model, models),
        "prompt_sha256": prompt_digest(prompt),
        "params_sha256": _json_digest(params),
        "system_sha256": _json_digest(system),
        "max_tokens": max_tokens,
        "samples": samples,
        "betas": list(betas),
        "response_format": None if response_format is None else response_format.__name__,
        "dsbatch_version": dsbatch.__version__,
        "anthropic_version": anthropic.__version__,
        "api_version": api_version,
    }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def step_facts(
    facts: Mapping[str, Any],
    *,
    job: str,
    model: str | None,
    created_at: float,
    finished_at: float | None,
) -> dict[str, Any]:
    """A step's facts as the data carries them, but for its batches (``attach`` adds the ones
    whose answers each split holds; None there: not known, e.g. columns an older dsbatch
    stored)."""
    step: dict[str, Any] = {MARK: _FORMAT, "job": job}
    # A job kept by an older dsbatch has no call facts: its manifest still names the model.
    step.update(facts or {"models": [model] if model else []})
    step.update(created_at=_iso(created_at), finished_at=_iso(finished_at))
    return step


def batches_answering(latest: pa.Table, custom_ids: pa.Array) -> list[str]:
    """The batch ids whose results answer these custom_ids (one result per custom_id)."""
    # The batch ids alone are filtered: a filter of the table would copy every answer.
    asked = pc.is_in(latest["custom_id"], value_set=custom_ids.drop_null())
    used = pc.filter(latest["batch_id"], asked)
    return sorted(b for b in pc.unique(used).to_pylist() if b)


def stamp(feature: Any, step: Mapping[str, Any]) -> Any:
    """The status column's feature with the step's facts as the id of its ``status`` field
    (a struct, or a list of structs with ``samples``)."""
    text = json.dumps(step, separators=(",", ":"))
    if isinstance(feature, dict):
        stamped = dict(feature)
        stamped["status"] = Value(feature["status"].dtype, id=text)
        return stamped
    if isinstance(feature, list):  # datasets 3: a list of structs is [struct]
        return [stamp(feature[0], step)]
    return dataclasses.replace(feature, feature=stamp(feature.feature, step))


def find_steps(features: Features) -> list[tuple[str, dict[str, Any]]]:
    """(column, facts) of every dsbatch step whose status column the features hold, in
    column order."""
    found = []
    for column, feature in features.items():
        for value in _values(feature):
            step = _parse(value.id)
            if step is not None:
                found.append((column, step))
    return found


def _values(feature: Any) -> Iterator[Value]:
    if isinstance(feature, Value):
        yield feature
    elif isinstance(feature, dict):
        for sub in feature.values():
            yield from _values(sub)
    elif isinstance(feature, (list, tuple)):
        for sub in feature:
            yield from _values(sub)
    elif hasattr(feature, "feature"):
        yield from _values(feature.feature)


def _parse(text: str | None) -> dict[str, Any] | None:
    if not text or MARK not in text:
        return None
    try:
        step = json.loads(text)
    except ValueError:
        return None
    return step if isinstance(step, dict) and step.get(MARK) == _FORMAT else None
