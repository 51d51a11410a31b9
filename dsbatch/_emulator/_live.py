"""The synchronous endpoints: the Messages API and token counting.

``POST /v1/messages`` checks a request with the same rules a batch applies while processing
(``_rules``), refusing at once with 400 what a batch would end ``errored``, and answers a
Message from the same responder: the same params get the same answer text as in a batch. The
responder is called with ``custom_id`` "" (a live call has none). Usage follows the same
counting rule and prompt cache (``_caching``, the caller's workspace, the emulator's clock);
``service_tier`` is "standard". Per-request faults do not apply; HTTP faults of the endpoint
name ``messages`` do. Streaming (``stream: true``) is not emulated: 400.

``POST /v1/messages/count_tokens`` checks its body likewise (no ``max_tokens``; the spec's
CountMessageTokensParams) and answers ``{"input_tokens": N}``, N being every input token that
the usage of the same request's answer reports (cache reads and writes included).
"""

from __future__ import annotations

import itertools
from typing import Any

from dsbatch._emulator._caching import input_tokens
from dsbatch._emulator._errors import ApiError, status_for
from dsbatch._emulator._ids import prefixed_id
from dsbatch._emulator._responder import beta_message, build_message
from dsbatch._emulator._rules import Endpoint, request_problem
from dsbatch._emulator._state import Store

__all__ = ["count_tokens", "create_message"]

_message_numbers = itertools.count()


def _params(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


def create_message(
    store: Store,
    body: Any,
    *,
    version: str,
    betas: tuple[str, ...] = (),
    workspace: str,
    beta: bool,
) -> dict[str, Any]:
    """The Message answering a ``POST /v1/messages`` body, or ApiError; ``betas`` are the
    call's ``anthropic-beta`` header."""
    params = _params(body)
    if params.get("stream") is True:
        raise ApiError(
            400,
            "stream: the dsbatch emulator does not stream; call messages.create without "
            "stream=True",
        )
    problem = request_problem(params, Endpoint("messages", version, betas))
    if problem is not None:
        raise ApiError(400, problem)
    with store.lock:
        store.messages_received.append(params)
        answer = store.responder("", params)
        if isinstance(answer, dict):
            message = _message_of(answer)
        elif isinstance(answer, str):
            used = store.prompt_cache.use(params, workspace, store.clock.now())
            message_id = prefixed_id("msg_", store.seed, "live", next(_message_numbers))
            message = build_message(
                params, answer, message_id=message_id, cache=used, service_tier="standard"
            )
        else:
            raise TypeError(f"a responder returns str or dict, not {type(answer).__name__}")
    return beta_message(message) if beta else message


def _message_of(result: dict[str, Any]) -> dict[str, Any]:
    """What a responder's whole result object means for a live call: its Message, or the
    HTTP error its error becomes."""
    if result.get("type") == "succeeded" and isinstance(result.get("message"), dict):
        message: dict[str, Any] = result["message"]
        return message
    error = result.get("error")
    inner = error.get("error") if isinstance(error, dict) else None
    if result.get("type") == "errored" and isinstance(inner, dict):
        kind = str(inner.get("type") or "api_error")
        raise ApiError(status_for(kind), str(inner.get("message") or kind), kind)
    raise ApiError(
        500, f"emulator responder returned what a Messages API call cannot give: {result!r:.200}"
    )


def count_tokens(body: Any, *, version: str) -> dict[str, int]:
    """The answer to a ``POST /v1/messages/count_tokens`` body, or ApiError."""
    params = _params(body)
    problem = request_problem(params, Endpoint("count_tokens", version))
    if problem is not None:
        raise ApiError(400, problem)
    return {"input_tokens": input_tokens(params)}
