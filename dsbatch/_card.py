"""``dsbatch.card``: a Hub dataset card with the provenance of every dsbatch step behind a dataset.

The steps are found by the facts each one stamped on its status column's features
(``_provenance``), whatever the column is called now; what the data says (rows, statuses,
tokens, cost) is read from those status columns, so the card describes the rows the dataset
holds (after ``on_error="drop"``, a ``filter`` or a ``select``), not the job's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, DatasetInfo, Features
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard, DatasetCardData

from dsbatch._arrow import whole
from dsbatch._provenance import find_steps
from dsbatch._records import RESULT_TYPES
from dsbatch._store import is_preview

__all__ = ["card"]

_STATUSES = (*RESULT_TYPES, "parse_error", "skipped")
_TOKENS = (
    ("input_tokens", "Input tokens"),
    ("output_tokens", "Output tokens"),
    ("cache_read_input_tokens", "Cache read tokens"),
    ("cache_creation_input_tokens", "Cache write tokens"),
)


@dataclass
class _Tally:
    """What one split's status column of one step says."""

    rows: int
    statuses: dict[str, int]
    # One row per distinct custom_id: its tokens and cost (rows asking one request share it).
    requests: pa.Table


@dataclass
class _Step:
    facts: dict[str, Any]
    column: str
    splits: dict[str, _Tally] = field(default_factory=dict)


def card(dataset: Dataset | DatasetDict) -> DatasetCard:
    """A ``huggingface_hub.DatasetCard`` with the provenance of each dsbatch step behind
    ``dataset``: model, hashes of the prompt function's source, params and system prompt,
    dsbatch, SDK and API versions, dates, batch ids, and from the data itself the rows, status
    counts, tokens and cost of each split. A ``DatasetDict`` gives one card for all its splits.

    Publish it beside the data: ``dataset.push_to_hub(repo_id)``, then
    ``dsbatch.card(dataset).push_to_hub(repo_id)`` (see docs/card.md). The provenance is kept in
    the features of each step's status column, so the status columns must still be there.
    """
    if isinstance(dataset, DatasetDict):
        splits = dict(dataset)
    elif isinstance(dataset, Dataset):
        splits = {str(dataset.split) if dataset.split is not None else "train": dataset}
    else:
        raise TypeError(
            f"dsbatch.card takes a datasets.Dataset or DatasetDict, not {type(dataset).__name__}"
        )
    steps: dict[tuple[str, str], _Step] = {}
    for split, ds in splits.items():
        for column, facts in find_steps(ds.features):
            step = steps.setdefault((facts["job"], column), _Step(facts, column))
            step.splits[split] = _tally(ds, column)
    if not steps:
        columns = sorted({c for ds in splits.values() for c in ds.column_names})
        raise ValueError(
            f"this dataset carries no dsbatch step (its columns: {', '.join(columns) or 'none'}): "
            "dsbatch.card reads the provenance dsbatch.map stamps on its status column "
            "(`dsbatch` unless status_column= named it), so pass a dataset made by "
            "dsbatch.map that still has that column (dsbatch.preview's rows carry none); "
            "see docs/card.md"
        )
    features = next(iter(splits.values())).features
    return DatasetCard(
        f"---\n{_metadata(features, list(splits)).to_yaml()}\n---\n\n" + _body(steps)
    )


def _tally(ds: Dataset, column: str) -> _Tally:
    values = ds.with_format("arrow")[column]
    values = whole(values)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.list_flatten(values)  # samples: one status per answer
    status = pa.Table.from_arrays(values.flatten(), names=[f.name for f in values.type])
    counts = pc.value_counts(status["status"]).to_pylist()
    statuses = {c["values"]: c["counts"] for c in counts if c["values"] is not None}
    asked = status.filter(pc.is_valid(status["custom_id"]))
    return _Tally(len(ds), statuses, _distinct(asked))


def _distinct(requests: pa.Table) -> pa.Table:
    """One row per custom_id (every row asking a request holds the same tokens and cost), and
    ``cost_usd_count``: 0 when its cost is null (a model without a known price)."""
    names = [name for name, _ in _TOKENS] + ["cost_usd"]
    table = requests.group_by("custom_id").aggregate(
        [(name, "max") for name in names] + [("cost_usd", "count")]
    )
    return table.rename_columns([c.removesuffix("_max") for c in table.column_names])


def _totals(tallies: Iterable[_Tally]) -> dict[str, Any]:
    tallies = list(tallies)
    statuses: dict[str, int] = {}
    for tally in tallies:
        for status, n in tally.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    requests = pa.concat_tables([t.requests for t in tallies]) if tallies else None
    if requests is not None and len(tallies) > 1:
        # A request shared by two splits was paid once.
        requests = requests.group_by("custom_id").aggregate(
            [(name, "max") for name in requests.column_names if name != "custom_id"]
        )
        requests = requests.rename_columns([c.removesuffix("_max") for c in requests.column_names])
    totals: dict[str, Any] = {
        "rows": sum(t.rows for t in tallies),
        "statuses": statuses,
        "requests": 0 if requests is None else requests.num_rows,
    }
    for name, _ in _TOKENS:
        totals[name] = 0 if requests is None else (pc.sum(requests[name]).as_py() or 0)
    if requests is None or requests.num_rows == 0:
        totals["cost_usd"] = 0.0
    elif pc.any(pc.less(requests["cost_usd_count"], 1)).as_py():
        totals["cost_usd"] = None  # a model without a known price
    else:
        totals["cost_usd"] = pc.sum(requests["cost_usd"]).as_py() or 0.0
    return totals


# -- rendering ---------------------------------------------------------------------------------


def _metadata(features: Features, splits: list[str]) -> DatasetCardData:
    """What ``push_to_hub`` writes in the card's YAML (the features, where the provenance lives,
    and the default config's files), so pushing this card after the data keeps both."""
    data = DatasetCardData(tags=["dsbatch", "synthetic"])
    DatasetInfosDict({"default": DatasetInfo(features=features)}).to_dataset_card_data(data)
    data["configs"] = [
        {
            "config_name": "default",
            "data_files": [{"split": split, "path": f"data/{split}-*"} for split in splits],
        }
    ]
    return data


def _body(steps: Mapping[tuple[str, str], _Step]) -> str:
    n = len(steps)
    lines = [
        "# Dataset card",
        "",
        "This dataset was made with dsbatch through the Anthropic Message Batches "
        f"API, in {n} step{'s' if n > 1 else ''}. Each step's provenance travels with the "
        "data, in the features of its status column; the counts, tokens and cost below are "
        "read from the rows themselves.",
        "",
    ]
    for i, step in enumerate(steps.values(), start=1):
        lines += _step(i, step)
    lines += [
        "Tokens and cost count each distinct request once: rows that asked the same request "
        "share one answer, paid once. Costs are in US dollars at Message Batches prices as "
        "dsbatch priced them (answers bought by `dsbatch.preview` at standard prices); "
        '"unknown" for a model without a known price. Hashes are the first 16 hex digits '
        "of a SHA-256: of the prompt function's source, and of the canonical JSON of the "
        "params and of the system prompt.",
        "",
    ]
    return "\n".join(lines)


def _step(i: int, step: _Step) -> list[str]:
    facts = step.facts
    prompt = facts.get("prompt_sha256", _UNRECORDED)
    rows = [
        ("Model", ", ".join(facts.get("models") or []) or "unknown"),
        ("Status column", f"`{step.column}`"),
        ("Job fingerprint", f"`{facts['job']}`"),
        ("Prompt function (sha256 of its source)", "unknown" if prompt is None else _code(prompt)),
        ("Params (sha256)", _code(facts.get("params_sha256", _UNRECORDED))),
        ("System prompt (sha256)", _code(facts.get("system_sha256", _UNRECORDED))),
        ("max_tokens", _plain(facts.get("max_tokens", _UNRECORDED))),
        ("Samples per row", _plain(facts.get("samples", _UNRECORDED))),
        ("Response format", _plain(facts.get("response_format", _UNRECORDED))),
        ("Betas", _names(facts.get("betas", _UNRECORDED))),
        ("dsbatch version", _plain(facts.get("dsbatch_version", _UNRECORDED))),
        ("Anthropic SDK version", _plain(facts.get("anthropic_version", _UNRECORDED))),
        ("API version", _plain(facts.get("api_version", _UNRECORDED))),
        ("Started", _plain(facts.get("created_at"))),
        ("Finished", _plain(facts.get("finished_at"))),
        ("Batches", _batches(facts.get("batches"))),
    ]
    lines = [f"## Step {i}: `{step.column}`", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", *_stats(step.splits), ""]
    return lines


def _stats(splits: Mapping[str, _Tally]) -> list[str]:
    shown = [s for s in _STATUSES if any(t.statuses.get(s) for t in splits.values())]
    shown = shown or ["succeeded"]
    head = ["Split", "Rows", *shown, "Requests", *(label for _, label in _TOKENS), "Cost (USD)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    entries = [(split, _totals([tally])) for split, tally in splits.items()]
    if len(splits) > 1:
        entries.append(("**all**", _totals(splits.values())))
    for name, totals in entries:
        cells = [name, f"{totals['rows']:,}"]
        cells += [f"{totals['statuses'].get(s, 0):,}" for s in shown]
        cells.append(f"{totals['requests']:,}")
        cells += [f"{totals[n]:,}" for n, _ in _TOKENS]
        cost = totals["cost_usd"]
        cells.append("unknown" if cost is None else f"{cost:.6f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _batches(batches: list[str] | None) -> str:
    if batches is None:
        return "not recorded (columns stored by an older dsbatch)"
    if not batches:
        return "none (no request was sent)"
    return ", ".join(
        f"`{b}`" + (" (dsbatch.preview, Messages API)" if is_preview(b) else "") for b in batches
    )


_UNRECORDED = object()  # a fact a job kept by an older dsbatch does not have


def _code(value: Any) -> str:
    return _plain(value) if value is None or value is _UNRECORDED else f"`{value}`"


def _names(value: Any) -> str:
    return _plain(value) if value is _UNRECORDED else ", ".join(value) or "none"


def _plain(value: Any) -> str:
    if value is _UNRECORDED:
        return "not recorded"
    return "none" if value is None else str(value)
