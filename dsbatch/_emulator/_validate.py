"""Request validation, split as the real API splits it.

``validate_create`` is what the API checks synchronously at create (a 400 naming the field,
e.g. ``requests.3.custom_id: ...``); ``param_problem`` is what it only finds while processing,
so the request ends ``errored`` with ``invalid_request_error`` instead. That includes params
the spec does not know (``KNOWN_PARAMS``) and what the create's ``anthropic-version`` forbids.
"""

from __future__ import annotations

import re
from typing import Any

from dsbatch._emulator._errors import ApiError
from dsbatch._limits import API_VERSION_2026, API_VERSION_LEGACY, CUSTOM_ID_PATTERN

__all__ = [
    "KNOWN_PARAMS",
    "api_version",
    "param_problem",
    "structured_kind",
    "validate_create",
]

_CUSTOM_ID = re.compile(CUSTOM_ID_PATTERN)
_ITEM_KEYS = frozenset({"custom_id", "params"})

# The properties of the OpenAPI spec's CreateMessageParams (``additionalProperties: false``),
# the params of a batch request, plus ``output_format``, still accepted for a transition period.
KNOWN_PARAMS = frozenset(
    {
        "cache_control",
        "container",
        "inference_geo",
        "max_tokens",
        "messages",
        "metadata",
        "model",
        "output_config",
        "output_format",
        "service_tier",
        "stop_sequences",
        "stream",
        "system",
        "temperature",
        "thinking",
        "tool_choice",
        "tools",
        "top_k",
        "top_p",
    }
)
_SAMPLING_PARAMS = ("temperature", "top_p", "top_k")


def _bad(where: str, message: str) -> ApiError:
    return ApiError(400, f"{where}: {message}")


def validate_create(body: Any, *, max_requests: int) -> list[dict[str, Any]]:
    """The ``requests`` of a create body, or ApiError(400) naming the first bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object with a `requests` list")
    for key in body:
        if key != "requests":
            raise _bad(key, "Extra inputs are not permitted")
    if "requests" not in body:
        raise _bad("requests", "Field required")
    requests = body["requests"]
    if not isinstance(requests, list):
        raise _bad("requests", "Input should be a valid list")
    if not requests:
        raise _bad("requests", "List should have at least 1 item after validation, not 0")
    if len(requests) > max_requests:
        raise _bad(
            "requests",
            f"List should have at most {max_requests} items after validation, not {len(requests)}",
        )
    first_use: dict[str, int] = {}
    for index, item in enumerate(requests):
        where = f"requests.{index}"
        if not isinstance(item, dict):
            raise _bad(where, "Input should be a valid dictionary or object")
        if item.keys() - _ITEM_KEYS:
            extra = sorted(item.keys() - _ITEM_KEYS)[0]
            raise _bad(f"{where}.{extra}", "Extra inputs are not permitted")
        custom_id = item.get("custom_id")
        if custom_id is None:
            raise _bad(f"{where}.custom_id", "Field required")
        if not isinstance(custom_id, str):
            raise _bad(f"{where}.custom_id", "Input should be a valid string")
        if not _CUSTOM_ID.fullmatch(custom_id):
            raise _bad(f"{where}.custom_id", f"String should match pattern '{CUSTOM_ID_PATTERN}'")
        earlier = first_use.setdefault(custom_id, index)
        if earlier != index:
            raise _bad(
                f"{where}.custom_id",
                f"Duplicate custom_id {custom_id!r} (also used by requests.{earlier}); "
                "each custom_id must be unique within a batch",
            )
        _validate_params(item.get("params"), f"{where}.params")
    return requests


def _validate_params(params: Any, where: str) -> None:
    if params is None:
        raise _bad(where, "Field required")
    if not isinstance(params, dict):
        raise _bad(where, "Input should be a valid dictionary or object")
    if "stream" in params:
        raise _bad(f"{where}.stream", "Streaming is not supported in Message Batches requests")
    model = params.get("model")
    if model is None:
        raise _bad(f"{where}.model", "Field required")
    if not isinstance(model, str) or not model:
        raise _bad(f"{where}.model", "Input should be a non-empty string")
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        raise _bad(f"{where}.max_tokens", "Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise _bad(f"{where}.max_tokens", "Input should be a valid integer")
    if max_tokens < 1:
        raise _bad(f"{where}.max_tokens", "Input should be greater than or equal to 1")
    messages = params.get("messages")
    if messages is None:
        raise _bad(f"{where}.messages", "Field required")
    if not isinstance(messages, list):
        raise _bad(f"{where}.messages", "Input should be a valid list")
    if not messages:
        raise _bad(f"{where}.messages", "List should have at least 1 item after validation, not 0")


def api_version(header: str | None) -> str:
    """The API version a call is made under: its ``anthropic-version`` header, or the legacy
    version when it has none."""
    return header.strip() if header and header.strip() else API_VERSION_LEGACY


def _output_format(params: dict[str, Any]) -> tuple[str, Any] | None:
    """(where, format) of the requested output format: ``output_config.format``, or the
    ``output_format`` the API still accepts for a transition period."""
    output_config = params.get("output_config")
    if isinstance(output_config, dict) and output_config.get("format") is not None:
        return "output_config.format", output_config["format"]
    if params.get("output_format") is not None:
        return "output_format", params["output_format"]
    return None


def structured_kind(params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """("json_schema", schema) or ("tool", tool) when the answer must be JSON, else None."""
    found = _output_format(params)
    if found is not None:
        fmt = found[1]
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = fmt.get("schema")
            return "json_schema", schema if isinstance(schema, dict) else {}
    choice = params.get("tool_choice")
    tools = params.get("tools")
    if isinstance(choice, dict) and isinstance(tools, list):
        if choice.get("type") == "tool":
            for tool in tools:
                if isinstance(tool, dict) and tool.get("name") == choice.get("name"):
                    return "tool", tool
        elif choice.get("type") == "any":
            for tool in tools:
                if isinstance(tool, dict) and "input_schema" in tool:
                    return "tool", tool
    return None


def param_problem(params: dict[str, Any], version: str) -> str | None:
    """Why the API would answer this request with ``invalid_request_error``, or None.

    ``version`` is the ``anthropic-version`` of the create call: from 2026-10-21 on,
    ``temperature``/``top_p``/``top_k``, ``document`` blocks in assistant messages and
    non-empty ``citations`` on text blocks of user messages are refused.
    """
    for key in params:
        if key not in KNOWN_PARAMS:
            return f"{key}: Extra inputs are not permitted"
    for index, message in enumerate(params["messages"]):
        if not isinstance(message, dict):
            return f"messages.{index}: Input should be a valid dictionary or object"
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if not isinstance(content, (str, list)):
            return f"messages.{index}.content: Input should be a valid string or list"
        if not content:
            return (
                f"messages.{index}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
        if isinstance(content, list):
            for at, block in enumerate(content):
                if not isinstance(block, dict):
                    return f"messages.{index}.content.{at}: Input should be a valid dictionary"
                if not isinstance(block.get("type"), str):
                    return f"messages.{index}.content.{at}.type: Field required"
    if version >= API_VERSION_2026:  # versions are dates; a later one keeps these rules
        problem = _version_problem(params, version)
        if problem is not None:
            return problem
    system = params.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a valid string or list of text blocks"
    for at, block in enumerate(system if isinstance(system, list) else ()):
        if not (isinstance(block, dict) and block.get("type") == "text"):
            return f"system.{at}.type: Input should be 'text'"
        if not isinstance(block.get("text"), str):
            return f"system.{at}.text: Input should be a valid string"
    found = _output_format(params)
    if found is not None:
        where, fmt = found
        if not (
            isinstance(fmt, dict)
            and fmt.get("type") == "json_schema"
            and isinstance(fmt.get("schema"), dict)
        ):
            return f"{where}: expected {{'type': 'json_schema', 'schema': {{...}}}}"
    choice = params.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        names = [t.get("name") for t in params.get("tools") or [] if isinstance(t, dict)]
        if choice.get("name") not in names:
            return f"tool_choice.name: tool {choice.get('name')!r} is not in tools"
    return None


def _version_problem(params: dict[str, Any], version: str) -> str | None:
    """What API version 2026-10-21 (and any later one) no longer accepts."""
    for name in _SAMPLING_PARAMS:
        if name in params:  # even at its default value
            return f"{name}: not supported in API version {version}"
    for index, message in enumerate(params["messages"]):
        content = message["content"]
        if isinstance(content, str):
            continue
        for at, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            where = f"messages.{index}.content.{at}"
            if message["role"] == "assistant" and block.get("type") == "document":
                return (
                    f"{where}: document blocks in assistant messages are not supported "
                    f"in API version {version}"
                )
            if message["role"] == "user" and block.get("type") == "text" and block.get("citations"):
                return (
                    f"{where}.citations: citations on user text blocks are not supported "
                    f"in API version {version}"
                )
    return None
