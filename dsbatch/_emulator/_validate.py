"""What a create is refused for at once: the batch's own structure.

``validate_create`` checks what the API checks synchronously at create (a 400 naming the
field, e.g. ``requests.3.custom_id: ...``): the body, the requests list, each custom_id's
pattern and uniqueness, params being an object and not asking to stream. Everything inside
params is checked while processing (``_rules``): a bad request ends ``errored``.
"""

from __future__ import annotations

import re
from typing import Any

from dsbatch._emulator._errors import ApiError
from dsbatch._limits import API_VERSION_LEGACY, CUSTOM_ID_PATTERN

__all__ = ["api_version", "validate_create"]

_CUSTOM_ID = re.compile(CUSTOM_ID_PATTERN)
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
    """Only that params is an object that does not ask to stream: the rest of it is checked
    while processing (``_rules``), as the API does, so one bad request never blocks the
    others."""
    if params is None:
        raise _bad(where, "Field required")
    if not isinstance(params, dict):
        raise _bad(where, "Input should be a valid dictionary or object")
    if params.get("stream") is True:
        raise _bad(f"{where}.stream", "Streaming is not supported in Message Batches requests")


def api_version(header: str | None) -> str:
    """The API version a call is made under: its ``anthropic-version`` header, or the legacy
    version when it has none."""
    return header.strip() if header and header.strip() else API_VERSION_LEGACY
