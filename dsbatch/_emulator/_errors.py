"""The API's error answers: one exception carrying status and type, and the body it becomes."""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "default_message", "error_body", "error_type_for", "status_for"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_MESSAGES = {
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
    "timeout_error": "Request timed out",
    "conflict_error": "Conflict",
    "billing_error": "Your credit balance is too low",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found",
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
}


def error_type_for(status: int) -> str:
    """The ``error.type`` the real API sends with an HTTP ``status``."""
    if status in _TYPES:
        return _TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def status_for(error_type: str) -> int:
    """The HTTP status the real API answers an ``error.type`` with (500 for one it lacks)."""
    for status, name in _TYPES.items():
        if name == error_type:
            return status
    return 500


def default_message(error_type: str) -> str:
    return _MESSAGES.get(error_type, "Error")


def error_body(error_type: str, message: str, request_id: str | None) -> dict[str, Any]:
    """``{"type": "error", "error": {...}, "request_id": ...}`` as in the spec's ErrorResponse."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


class ApiError(Exception):
    """Answer the current HTTP call with ``status`` and an error body."""

    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for(status)
