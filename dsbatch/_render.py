"""Render: each row -> the prompt function -> Messages params -> canonical JSON -> custom_id.

Everything a row could get wrong is caught here, before any network call, with the row named.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import xxhash
from datasets import Dataset

from dsbatch._errors import PromptError

__all__ = ["CUSTOM_ID_PREFIX", "Rendered", "canonical_json", "custom_id_for", "render_split"]

CUSTOM_ID_PREFIX = "dsb_"
_ROLES = ("user", "assistant")
_ITER_BATCH = 1000


def canonical_json(params: Mapping[str, Any]) -> bytes:
    """The one byte string a request has: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def custom_id_for(canonical: bytes) -> str:
    """Short prefix + xxh3_128 of the canonical params: identical requests share one id."""
    return CUSTOM_ID_PREFIX + xxhash.xxh3_128_hexdigest(canonical)


@dataclass
class Rendered:
    """The requests of a job: per split, the custom_id of each row (None = skipped)."""

    row_custom_ids: dict[str, list[str | None]] = field(default_factory=dict)
    bodies: dict[str, bytes] = field(default_factory=dict)  # custom_id -> canonical params
    # custom_id -> (split label for messages, row index) of the first row that asked for it
    first_row: dict[str, tuple[str | None, int]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(len(ids) for ids in self.row_custom_ids.values())


def _rows(dataset: Dataset) -> Iterator[dict[str, Any]]:
    for batch in dataset.with_format(None).iter(batch_size=_ITER_BATCH):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, values))


def render_split(
    rendered: Rendered,
    split: str,
    dataset: Dataset,
    prompt: Callable[..., Any],
    *,
    defaults: Mapping[str, Any],
    with_indices: bool,
    label: str | None,
) -> None:
    """Render every row of one split into ``rendered``; ``label`` names the split in errors."""
    ids: list[str | None] = []
    bodies = rendered.bodies
    first_row = rendered.first_row
    for idx, row in enumerate(_rows(dataset)):
        try:
            answer = prompt(row, idx) if with_indices else prompt(row)
        except Exception as e:
            raise PromptError(
                f"the prompt function raised {type(e).__name__}: {e}", row=idx, split=label
            ) from e
        if answer is None:
            ids.append(None)
            continue
        params = _to_params(answer, defaults, idx, label)
        try:
            body = canonical_json(params)
        except (TypeError, ValueError) as e:
            raise PromptError(f"the request is not valid JSON: {e}", row=idx, split=label) from e
        custom_id = custom_id_for(body)
        if custom_id not in bodies:
            bodies[custom_id] = body
            first_row[custom_id] = (label, idx)
        ids.append(custom_id)
    rendered.row_custom_ids[split] = ids


def _to_params(
    answer: Any, defaults: Mapping[str, Any], row: int, split: str | None
) -> dict[str, Any]:
    if isinstance(answer, str):
        params = {**defaults, "messages": [{"role": "user", "content": answer}]}
    elif isinstance(answer, list):
        params = {**defaults, "messages": answer}
    elif isinstance(answer, Mapping):
        params = {**defaults, **answer}
    else:
        raise PromptError(
            "the prompt function must return a str, a list of messages, a dict of Messages "
            f"params or None, not {type(answer).__name__}",
            row=row,
            split=split,
        )
    _check_params(params, row, split)
    return params


def _check_params(params: dict[str, Any], row: int, split: str | None) -> None:
    def fail(message: str) -> PromptError:
        return PromptError(message, row=row, split=split)

    if "stream" in params:
        raise fail("'stream' is not allowed in a batch request")
    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise fail("no model: pass model=... or return 'model' from the prompt function")
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise fail(f"max_tokens must be a positive integer, not {max_tokens!r}")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail("no messages: the request needs at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise fail(f"messages[{i}] must be a dict with 'role' and 'content'")
        role = message.get("role")
        if role == "system":
            raise fail(
                f"messages[{i}] has role 'system': the Messages API has no system role; "
                "pass system=... to dsbatch.map or return 'system' in the params dict"
            )
        if role not in _ROLES:
            raise fail(f"messages[{i}] has role {role!r}; it must be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, str):
            if not content.strip():
                raise fail(f"messages[{i}] has empty content")
        elif isinstance(content, list):
            if not content:
                raise fail(f"messages[{i}] has an empty content list")
        else:
            raise fail(
                f"messages[{i}] content must be a str or a list of content blocks, "
                f"not {type(content).__name__}"
            )
