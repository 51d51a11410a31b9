"""Render: each row -> the prompt function -> Messages params -> canonical JSON -> custom_id.

Everything a row could get wrong is caught here, before any network call, with the row named:
what the API would refuse at create, and what it would only refuse hours later as an errored
result (parameters the client's API version rejects, malformed content blocks).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash
from datasets import Dataset

from dsbatch._compat import iter_rows
from dsbatch._errors import PromptError
from dsbatch._limits import API_VERSION_2026, API_VERSION_LEGACY

__all__ = [
    "CUSTOM_ID_PREFIX",
    "Rendered",
    "RequestShape",
    "canonical_json",
    "custom_id_for",
    "render_split",
]

CUSTOM_ID_PREFIX = "dsb_"
_ROLES = ("user", "assistant")
# Parameters API version 2026-10-21 refuses with a 400, even at their default values.
_SAMPLING = ("temperature", "top_p", "top_k")


# One encoder, made once: json.dumps with options builds a new one on every call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical_json(params: Mapping[str, Any]) -> bytes:
    """The one byte string a request has: sorted keys, no spaces, UTF-8, no NaN."""
    return _CANONICAL(params).encode()


def custom_id_for(canonical: bytes, betas: Sequence[str] = ()) -> str:
    """Short prefix + xxh3_128 of the canonical params (and the batch's betas, which change
    what the request does): identical requests share one id."""
    h = xxhash.xxh3_128(canonical)
    if betas:
        h.update(b"\x00anthropic-beta:" + ",".join(betas).encode())
    return CUSTOM_ID_PREFIX + h.hexdigest()


@dataclass(frozen=True)
class RequestShape:
    """What every request of a job is made of besides its row."""

    defaults: Mapping[str, Any]  # model, max_tokens, system, params: the prompt's answer wins
    additions: Mapping[str, Any] = field(default_factory=dict)  # from response_format
    api_version: str = API_VERSION_2026
    betas: tuple[str, ...] = ()


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


def render_split(
    rendered: Rendered,
    split: str,
    dataset: Dataset,
    prompt: Callable[..., Any],
    *,
    shape: RequestShape,
    with_indices: bool,
    label: str | None,
) -> None:
    """Render every row of one split into ``rendered``; ``label`` names the split in errors."""
    ids: list[str | None] = []
    bodies = rendered.bodies
    first_row = rendered.first_row
    template: _TextTemplate | None = None
    for idx, row in enumerate(iter_rows(dataset)):
        try:
            answer = prompt(row, idx) if with_indices else prompt(row)
        except Exception as e:
            raise PromptError(
                f"the prompt function raised {type(e).__name__}: {e}", row=idx, split=label
            ) from e
        if answer is None:
            ids.append(None)
            continue
        try:
            if isinstance(answer, str):
                # The common case: the shape is checked once, each row only for its text.
                template = template or _TextTemplate(shape)
                body = template.body(answer)
            else:
                body = canonical_json(_to_params(answer, shape))
        except PromptError as e:
            raise PromptError(str(e), row=idx, split=label) from None
        except RecursionError:
            raise PromptError(
                "the request is nested too deeply to be sent as JSON", row=idx, split=label
            ) from None
        except (TypeError, ValueError) as e:
            raise PromptError(f"the request is not valid JSON: {e}", row=idx, split=label) from e
        custom_id = custom_id_for(body, shape.betas)
        if custom_id not in bodies:
            bodies[custom_id] = body
            first_row[custom_id] = (label, idx)
        ids.append(custom_id)
    rendered.row_custom_ids[split] = ids


class _TextTemplate:
    """The canonical JSON of a one-message request, with a hole where the message goes."""

    _HOLE = "\x00dsbatch-messages\x00"

    def __init__(self, shape: RequestShape) -> None:
        # The shape's own mistakes are named on the first row.
        params = _to_params("a text", shape)
        skeleton = canonical_json({**params, "messages": self._HOLE})
        hole = json.dumps(self._HOLE).encode()
        if skeleton.count(hole) != 1:
            raise PromptError("the request's params hold dsbatch's own placeholder text")
        self._head, self._tail = skeleton.split(hole)

    def body(self, text: str) -> bytes:
        if not text.strip():
            raise PromptError("messages[0] has empty content")
        # Byte for byte canonical_json(params): keys sorted ("content" < "role"), no spaces.
        return self._head + _CANONICAL([{"content": text, "role": "user"}]).encode() + self._tail


def _to_params(answer: Any, shape: RequestShape) -> dict[str, Any]:
    if isinstance(answer, str):
        params = {**shape.defaults, "messages": [{"role": "user", "content": answer}]}
    elif isinstance(answer, list):
        params = {**shape.defaults, "messages": answer}
    elif isinstance(answer, Mapping):
        params = {**shape.defaults, **answer}
    else:
        raise PromptError(
            "the prompt function must return a str, a list of messages, a dict of Messages "
            f"params or None, not {type(answer).__name__}"
        )
    if shape.additions:
        params = _with_structured_output(params, shape.additions)
    _check_params(params, shape.api_version)
    return params


def _with_structured_output(params: dict[str, Any], additions: Mapping[str, Any]) -> dict[str, Any]:
    """The request with response_format's output_config or forced tool; a request that already
    asks for a structured answer (its own format, tools or tool_choice) is refused, while other
    output_config settings (e.g. effort) are kept."""
    own = params.get("output_config")
    clash: list[str] = [k for k in ("tools", "tool_choice") if k in params]
    if isinstance(own, Mapping) and "format" in own:
        clash.append("output_config.format")
    elif own is not None and not isinstance(own, Mapping):
        clash.append("output_config")
    if clash:
        raise PromptError(
            f"the request already has {', '.join(map(repr, clash))}, and response_format asks "
            "for the structured answer itself: drop one of them"
        )
    merged = {**params, **additions}
    if isinstance(own, Mapping) and "output_config" in additions:
        merged["output_config"] = {**own, **additions["output_config"]}
    return merged


def _check_params(params: dict[str, Any], api_version: str) -> None:
    if "stream" in params:
        raise PromptError("'stream' is not allowed in a batch request")
    if "betas" in params:
        raise PromptError(
            "'betas' is not a request parameter: pass betas=[...] to dsbatch.map (beta "
            "features apply to a whole batch, as its anthropic-beta header)"
        )
    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise PromptError("no model: pass model=... or return 'model' from the prompt function")
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise PromptError(f"max_tokens must be a positive integer, not {max_tokens!r}")
    _check_system(params.get("system"))
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise PromptError("no messages: the request needs at least one message")
    for i, message in enumerate(messages):
        _check_message(i, message)
    if api_version >= API_VERSION_2026:
        _check_version_2026(params, messages, api_version)


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if isinstance(system, list) and all(
        isinstance(b, Mapping) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in system
    ):
        return
    raise PromptError(
        "system must be a str or a list of text blocks ({'type': 'text', 'text': ...}), "
        f"not {_describe(system)}"
    )


def _check_message(i: int, message: Any) -> None:
    if not isinstance(message, Mapping):
        raise PromptError(f"messages[{i}] must be a dict with 'role' and 'content'")
    role = message.get("role")
    if role == "system":
        raise PromptError(
            f"messages[{i}] has role 'system': the Messages API has no system role; "
            "pass system=... to dsbatch.map or return 'system' in the params dict"
        )
    if role not in _ROLES:
        raise PromptError(f"messages[{i}] has role {role!r}; it must be 'user' or 'assistant'")
    content = message.get("content")
    if isinstance(content, str):
        if not content.strip():
            raise PromptError(f"messages[{i}] has empty content")
    elif isinstance(content, list):
        if not content:
            raise PromptError(f"messages[{i}] has an empty content list")
        for j, block in enumerate(content):
            if not isinstance(block, Mapping) or not isinstance(block.get("type"), str):
                raise PromptError(
                    f"messages[{i}].content[{j}] must be a content block, a dict with a "
                    f"'type' such as {{'type': 'text', 'text': ...}}, not {_describe(block)}"
                )
    else:
        raise PromptError(
            f"messages[{i}] content must be a str or a list of content blocks, "
            f"not {type(content).__name__}"
        )


def _check_version_2026(params: dict[str, Any], messages: list[Any], version: str) -> None:
    keep = (
        "or keep it with a client made with anthropic.Anthropic(default_headers="
        f"{{'anthropic-version': '{API_VERSION_LEGACY}'}})"
    )
    for name in _SAMPLING:
        if name in params:
            raise PromptError(
                f"'{name}' is rejected by API version {version}, which this client sends: "
                f"remove it, {keep}"
            )
    for i, message in enumerate(messages):
        blocks = message.get("content")
        if not isinstance(blocks, list):
            continue
        for j, block in enumerate(blocks):
            where = f"messages[{i}].content[{j}]"
            if message.get("role") == "assistant" and block.get("type") == "document":
                raise PromptError(
                    f"{where} is a document block in an assistant message, which API version "
                    f"{version} rejects: move it to a user message, {keep}"
                )
            if (
                message.get("role") == "user"
                and block.get("type") == "text"
                and block.get("citations")
            ):
                raise PromptError(
                    f"{where} is a user text block with citations, which API version "
                    f"{version} rejects: drop the citations, {keep}"
                )


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
