"""Request validation, split as the real API splits it.

``validate_create`` is what the API checks synchronously at create (a 400 naming the field,
e.g. ``requests.3.custom_id: ...``); ``param_problem`` is what it only finds while processing,
so the request ends ``errored`` with ``invalid_request_error`` instead.
"""

from __future__ import annotations

import re
from typing import Any

from dsbatch._emulator._errors import ApiError

__all__ = ["CUSTOM_ID_PATTERN", "param_problem", "structured_kind", "validate_create"]

CUSTOM_ID_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_ITEM_KEYS = frozenset({"custom_id", "params"})


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


def structured_kind(params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """("json_schema", schema) or ("tool", tool) when the answer must be JSON, else None."""
    output_config = params.get("output_config")
    if isinstance(output_config, dict):
        fmt = output_config.get("format")
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


def param_problem(params: dict[str, Any]) -> str | None:
    """Why the API would answer this request with ``invalid_request_error``, or None."""
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
    system = params.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a valid string or list of text blocks"
    output_config = params.get("output_config")
    if output_config is not None:
        fmt = output_config.get("format") if isinstance(output_config, dict) else None
        if fmt is not None and not (
            isinstance(fmt, dict)
            and fmt.get("type") == "json_schema"
            and isinstance(fmt.get("schema"), dict)
        ):
            return "output_config.format: expected {'type': 'json_schema', 'schema': {...}}"
    choice = params.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        names = [t.get("name") for t in params.get("tools") or [] if isinstance(t, dict)]
        if choice.get("name") not in names:
            return f"tool_choice.name: tool {choice.get('name')!r} is not in tools"
    return None
