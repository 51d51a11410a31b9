"""What the API refuses in a request's params: the emulator's own model of the API, in one place.

A batch accepts any params object at create and checks it while processing: a request that
breaks a rule ends ``errored`` with ``invalid_request_error`` and the rule's message. The
Messages API (``POST /v1/messages``) and token counting (``POST /v1/messages/count_tokens``)
check the same rules at once and answer 400. ``request_problem`` runs the rules in order and
returns the first message, worded as the API words it where that is known (from its
documentation and the errors users report), else in its style:

- the params' shape: unknown params (``KNOWN_PARAMS``; ``COUNT_TOKENS_PARAMS`` for counting),
  ``model``, ``max_tokens`` (not for counting) and ``messages`` required, each param's type;
- messages: roles, content, block types (``BLOCK_FIELDS``, the spec's request blocks) and their
  required fields, empty or whitespace-only text, a final assistant turn ending in whitespace;
- the system prompt: a string or text blocks, none empty;
- the model (``dsbatch._models``): ``temperature``/``top_p``/``top_k`` on a model that rejects
  them whatever the version, ``max_tokens`` above its output limit (raised by the
  ``output-300k-2026-03-24`` beta in batches only), a thinking form it does not take;
- the create's ``anthropic-version``: from 2026-10-21 on, sampling params, ``document`` blocks
  in assistant messages and ``citations`` on user text blocks;
- thinking: ``budget_tokens`` at least 1,024 and below ``max_tokens``, no forced tool
  (``tool_choice`` ``tool`` or ``any``) while thinking, which always-thinking models always do;
- ``tool_choice`` naming a tool that is not in ``tools``; the output format's shape;
- ``cache_control``: at most 4 breakpoints (a top-level one counts), ``ttl`` 5m or 1h.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dsbatch._emulator._params import facts_of, forces_tool, output_format, thinking_type
from dsbatch._limits import API_VERSION_2026

__all__ = [
    "BLOCK_FIELDS",
    "COUNT_TOKENS_PARAMS",
    "KNOWN_PARAMS",
    "Endpoint",
    "request_problem",
]

# The properties of the OpenAPI spec's CreateMessageParams (``additionalProperties: false``),
# the params of a batch request, plus ``output_format``, still accepted for a transition period.
KNOWN_PARAMS = frozenset(
    {
        *("cache_control", "container", "inference_geo", "max_tokens", "messages"),
        *("metadata", "model", "output_config", "output_format", "service_tier"),
        *("stop_sequences", "stream", "system", "temperature", "thinking", "tool_choice"),
        *("tools", "top_k", "top_p"),
    }
)
# The spec's CountMessageTokensParams: no max_tokens, sampling, stop sequences or metadata.
COUNT_TOKENS_PARAMS = frozenset(
    {
        *("cache_control", "messages", "model", "output_config", "output_format", "system"),
        *("thinking", "tool_choice", "tools"),
    }
)
# The spec's request content blocks (InputContentBlock) and the fields each requires.
BLOCK_FIELDS: dict[str, tuple[str, ...]] = {
    "bash_code_execution_tool_result": ("content", "tool_use_id"),
    "code_execution_tool_result": ("content", "tool_use_id"),
    "container_upload": ("file_id",),
    "document": ("source",),
    "image": ("source",),
    "mid_conv_system": ("content",),
    "redacted_thinking": ("data",),
    "search_result": ("content", "source", "title"),
    "server_tool_use": ("id", "input", "name"),
    "text": ("text",),
    "text_editor_code_execution_tool_result": ("content", "tool_use_id"),
    "thinking": ("signature", "thinking"),
    "tool_result": ("tool_use_id",),
    "tool_search_tool_result": ("content", "tool_use_id"),
    "tool_use": ("id", "input", "name"),
    "web_fetch_tool_result": ("content", "tool_use_id"),
    "web_search_tool_result": ("content", "tool_use_id"),
}
_SAMPLING = ("temperature", "top_p", "top_k")
_MAX_BREAKPOINTS = 4
_BUDGET_MIN = 1024
_THINKING_DOCS = (
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
    "#max-tokens-and-context-window-size"
)


@dataclass(frozen=True)
class Endpoint:
    """Where the params are checked: a batch (with its create's headers), the Messages API, or
    token counting. The output-300k beta raises the output limit in batches only."""

    name: str = "batch"  # batch | messages | count_tokens
    version: str = API_VERSION_2026
    betas: tuple[str, ...] = ()

    @property
    def counting(self) -> bool:
        return self.name == "count_tokens"


Rule = Callable[[dict[str, Any], Endpoint], "str | None"]


def request_problem(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    """Why the API refuses these params (its error message), or None when it answers them."""
    for rule in RULES:
        problem = rule(params, endpoint)
        if problem is not None:
            return problem
    return None


# --- the params' shape ------------------------------------------------------------------------


def _unknown_params(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    known = COUNT_TOKENS_PARAMS if endpoint.counting else KNOWN_PARAMS
    for key in params:
        if key not in known:
            return f"{key}: Extra inputs are not permitted"
    return None


def _required(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    names = ("model", "messages") if endpoint.counting else ("model", "max_tokens", "messages")
    for name in names:
        if params.get(name) is None:
            return f"{name}: Field required"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# param -> (what it must be, the check); a param set to null is left to the rules that need it
_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model": ("a valid string", lambda v: isinstance(v, str) and bool(v)),
    "max_tokens": ("a valid integer", _is_int),
    "messages": ("a valid list", lambda v: isinstance(v, list)),
    "system": ("a valid string or list of text blocks", lambda v: isinstance(v, (str, list))),
    "temperature": ("a valid number", _is_number),
    "top_p": ("a valid number", _is_number),
    "top_k": ("a valid integer", _is_int),
    "stop_sequences": (
        "a valid list of strings",
        lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
    ),
    "metadata": ("a valid dictionary", lambda v: isinstance(v, dict)),
    "tools": (
        "a valid list of tools",
        lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v),
    ),
    "tool_choice": ("a valid dictionary", lambda v: isinstance(v, dict)),
    "thinking": ("a valid dictionary", lambda v: isinstance(v, dict)),
    "output_config": ("a valid dictionary", lambda v: isinstance(v, dict)),
    "cache_control": ("a valid dictionary", lambda v: isinstance(v, dict)),
    "stream": ("a valid boolean", lambda v: isinstance(v, bool)),
}


def _param_types(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    for name, (what, holds) in _TYPES.items():
        value = params.get(name)
        if value is not None and not holds(value):
            return f"{name}: Input should be {what}"
    if not endpoint.counting and params["max_tokens"] < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    if not params["messages"]:
        return "messages: List should have at least 1 item after validation, not 0"
    choice = params.get("tool_choice")
    if choice is not None and choice.get("type") not in ("auto", "any", "tool", "none"):
        return _tag_mismatch("tool_choice", choice.get("type"), ("any", "auto", "none", "tool"))
    return None


def _tag_mismatch(where: str, tag: Any, expected: tuple[str, ...]) -> str:
    tags = ", ".join(f"'{name}'" for name in expected)
    return (
        f"{where}: Input tag {tag!r} found using 'type' does not match any of the expected "
        f"tags: {tags}"
    )


# --- messages and their blocks ------------------------------------------------------------------


def _messages(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    messages = params["messages"]
    last = len(messages) - 1
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            return f"{where}: Input should be a valid dictionary or object"
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f"{where}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if not isinstance(content, (str, list)):
            return f"{where}.content: Input should be a valid string or list"
        final_assistant = index == last and role == "assistant"
        if not content:
            if final_assistant:
                continue  # an empty prefill is allowed
            return (
                f"{where}: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
        if isinstance(content, list):
            problem = _blocks(content, where)
            if problem is not None:
                return problem
        elif not content.strip() and not final_assistant:
            return "messages: text content blocks must contain non-whitespace text"
        if final_assistant and _ends_in_whitespace(content):
            return "messages: final assistant content cannot end with trailing whitespace"
    return None


def _blocks(content: list[Any], where: str) -> str | None:
    for at, block in enumerate(content):
        spot = f"{where}.content.{at}"
        if not isinstance(block, dict):
            return f"{spot}: Input should be a valid dictionary"
        kind = block.get("type")
        if not isinstance(kind, str):
            return f"{spot}.type: Field required"
        if kind not in BLOCK_FIELDS:
            return _tag_mismatch(spot, kind, tuple(sorted(BLOCK_FIELDS)))
        for name in BLOCK_FIELDS[kind]:
            if name not in block:
                return f"{spot}.{kind}.{name}: Field required"
        if kind == "text":
            problem = _text_problem(block.get("text"), f"{spot}.text", "messages")
            if problem is not None:
                return problem
    return None


def _text_problem(text: Any, where: str, field: str) -> str | None:
    if not isinstance(text, str):
        return f"{where}: Input should be a valid string"
    if not text:
        return f"{field}: text content blocks must be non-empty"
    if not text.strip():
        return f"{field}: text content blocks must contain non-whitespace text"
    return None


def _ends_in_whitespace(content: str | list[Any]) -> bool:
    """Whether a final assistant turn (a prefill) ends in whitespace, which the API refuses."""
    if isinstance(content, str):
        return content != content.rstrip()
    tail = content[-1].get("text") if content[-1].get("type") == "text" else None
    return isinstance(tail, str) and tail != tail.rstrip()


def _system(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    system = params.get("system")
    for at, block in enumerate(system if isinstance(system, list) else ()):
        if not (isinstance(block, dict) and block.get("type") == "text"):
            return f"system.{at}.type: Input should be 'text'"
        problem = _text_problem(block.get("text"), f"system.{at}.text", "system")
        if problem is not None:
            return problem
    return None


# --- the model and the API version ---------------------------------------------------------------


def _model_sampling(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    facts = facts_of(params)
    if facts is None or facts.accepts_sampling:
        return None
    for name in _SAMPLING:
        if name in params:  # even at its default value, whatever the version
            return f"`{name}` is deprecated for this model."
    return None


def _version(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    """What API version 2026-10-21 (and any later one: versions are dates) no longer takes."""
    version = endpoint.version
    if version < API_VERSION_2026:
        return None
    for name in _SAMPLING:
        if name in params:
            return f"{name}: not supported in API version {version}"
    for index, message in enumerate(params["messages"]):
        content = message["content"]
        for at, block in enumerate(content if isinstance(content, list) else ()):
            where = f"messages.{index}.content.{at}"
            if message["role"] == "assistant" and block["type"] == "document":
                return (
                    f"{where}: document blocks in assistant messages are not supported "
                    f"in API version {version}"
                )
            if message["role"] == "user" and block["type"] == "text" and block.get("citations"):
                return (
                    f"{where}.citations: citations on user text blocks are not supported "
                    f"in API version {version}"
                )
    return None


def _output_limit(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    facts = facts_of(params)
    if endpoint.counting or facts is None:
        return None
    limit = facts.output_limit(endpoint.betas if endpoint.name == "batch" else ())
    max_tokens = params["max_tokens"]
    if limit is not None and max_tokens > limit:
        return (
            f"max_tokens: {max_tokens} > {limit}, which is the maximum allowed number of "
            f"output tokens for {params['model']}"
        )
    return None


# --- thinking -----------------------------------------------------------------------------------


def _thinking(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    thinking = params.get("thinking")
    if thinking is None:
        return None
    kind = thinking.get("type")
    if kind not in ("enabled", "adaptive", "disabled"):
        return _tag_mismatch("thinking", kind, ("adaptive", "disabled", "enabled"))
    display = thinking.get("display")
    if display is not None and display not in ("summarized", "omitted"):
        return f"thinking.{kind}.display: Input should be 'summarized' or 'omitted'"
    facts = facts_of(params)
    if facts is not None and kind != "disabled" and kind not in facts.thinking_forms:
        if kind == "enabled":
            return (
                "thinking.type.enabled is not supported for this model. "
                "Use thinking.type.adaptive and output_config.effort"
            )
        # not documented: the emulator's wording for a model that knows only the manual form
        return (
            "thinking.type.adaptive is not supported for this model. "
            "Use thinking.type.enabled with budget_tokens"
        )
    if kind != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if budget is None:
        return "thinking.enabled.budget_tokens: Field required"
    if not _is_int(budget):
        return "thinking.enabled.budget_tokens: Input should be a valid integer"
    if budget < _BUDGET_MIN:
        return (
            f"thinking.enabled.budget_tokens: Input should be greater than or equal to "
            f"{_BUDGET_MIN}"
        )
    if not endpoint.counting and params["max_tokens"] <= budget:
        return (
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
            f"documentation at {_THINKING_DOCS}"
        )
    return None


def _forced_tool_while_thinking(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    if forces_tool(params) and thinking_type(params) is not None:
        return "Thinking may not be enabled when tool_choice forces tool use."
    return None


# --- tools, output format, cache control ----------------------------------------------------------


def _tool_choice_names_a_tool(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    choice = params.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        names = [tool.get("name") for tool in params.get("tools") or ()]
        if choice.get("name") not in names:
            return f"tool_choice.name: tool {choice.get('name')!r} is not in tools"
    return None


def _output_format(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    found = output_format(params)
    if found is None:
        return None
    where, fmt = found
    if (
        isinstance(fmt, dict)
        and fmt.get("type") == "json_schema"
        and isinstance(fmt.get("schema"), dict)
    ):
        return None
    return f"{where}: expected {{'type': 'json_schema', 'schema': {{...}}}}"


def cache_controls(params: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(where, cache_control) of every breakpoint, the top-level one included."""
    if params.get("cache_control") is not None:
        yield "cache_control", params["cache_control"]
    for at, tool in enumerate(params.get("tools") or ()):
        if isinstance(tool, dict) and tool.get("cache_control") is not None:
            yield f"tools.{at}.cache_control", tool["cache_control"]
    system = params.get("system")
    for at, block in enumerate(system if isinstance(system, list) else ()):
        if block.get("cache_control") is not None:
            yield f"system.{at}.cache_control", block["cache_control"]
    for index, message in enumerate(params["messages"]):
        content = message["content"]
        for at, block in enumerate(content if isinstance(content, list) else ()):
            if block.get("cache_control") is not None:
                yield f"messages.{index}.content.{at}.cache_control", block["cache_control"]


def _cache_control(params: dict[str, Any], endpoint: Endpoint) -> str | None:
    found = list(cache_controls(params))
    for where, control in found:
        if not isinstance(control, dict):
            return f"{where}: Input should be a valid dictionary"
        if control.get("type") != "ephemeral":
            return _tag_mismatch(where, control.get("type"), ("ephemeral",))
        if control.get("ttl", "5m") not in ("5m", "1h"):
            return f"{where}.ephemeral.ttl: Input should be '5m' or '1h'"
    if len(found) > _MAX_BREAKPOINTS:
        return (
            f"A maximum of {_MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(found)}."
        )
    return None


# The order is the order of the checks: a request that breaks several rules gets the first.
RULES: tuple[Rule, ...] = (
    _unknown_params,
    _required,
    _param_types,
    _messages,
    _system,
    _model_sampling,
    _version,
    _output_limit,
    _thinking,
    _forced_tool_while_thinking,
    _tool_choice_names_a_tool,
    _output_format,
    _cache_control,
)
