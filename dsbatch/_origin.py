"""Where answers come from: an answer serves only requests sent to the same origin.

An emulator's answers must never serve a run against the real API (nor the other way round): a
user who tested a pipeline on the emulator and then runs it for real must pay for real answers.
Every batch is tagged with the origin of the server that made it, and a job sees only the answers
and batches of its own origin. The origin is part of the job's fingerprint.

An origin is one of:

- ``"anthropic"``: the Anthropic API, reached directly (a base URL on ``anthropic.com``) or
  through a proxy or gateway that passes the API's answers on: its answers carry the API's
  ``anthropic-organization-id`` header. Answers got directly and through such a proxy serve
  each other.
- ``"emulator"``: dsbatch's own emulator (``dsbatch.testing.Emulator`` or ``dsbatch emulator``),
  whose answers carry ``x-dsbatch-emulator`` (and whose ``emu.client()`` sends it too). Every
  emulator shares this origin, whatever its port, so a test suite that starts a new emulator
  per test still reuses its answers.
- ``"url:<base URL>"``: any other server (another emulator, a mock, a proxy that drops the
  API's headers): its answers serve only runs against that same base URL.

A base URL on ``anthropic.com`` needs no call to be identified. Any other is identified by the
headers of one cheap call (``list`` of one batch, which dsbatch makes anyway before its first
create, to read the server's clock) and remembered in the cache (``origins.json``), so a rerun
answered from the cache makes no call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from dsbatch._backend import ANTHROPIC_HEADER, EMULATOR_HEADER, Backend, Unreachable
from dsbatch._errors import BatchAPIError, LedgerError
from dsbatch._ledger import Ledger
from dsbatch._retry import Retrying

__all__ = [
    "ANTHROPIC",
    "EMULATOR",
    "describe",
    "known_origin",
    "made_by_emulator",
    "origin_of_headers",
    "origin_of_url",
    "resolve_origin",
]

log = logging.getLogger("dsbatch")

ANTHROPIC = "anthropic"
EMULATOR = "emulator"
_URL = "url:"


def origin_of_url(base_url: str) -> str | None:
    """The origin a base URL is known to be without asking it (the API's own host)."""
    host = (urlsplit(base_url).hostname or "").lower()
    return ANTHROPIC if host == "anthropic.com" or host.endswith(".anthropic.com") else None


def origin_of_headers(headers: dict[str, str]) -> str | None:
    """The origin an answer's headers (names lower-cased) show, if they show one."""
    if EMULATOR_HEADER in headers:
        return EMULATOR
    if ANTHROPIC_HEADER in headers:
        return ANTHROPIC
    return None


def known_origin(backend: Backend, ledger: Ledger) -> str | None:
    """The origin ``resolve_origin`` gives the backend's base URL, when it is known without a
    call (declared by an emulator's client, the API's own host, or remembered by the cache)."""
    if EMULATOR_HEADER in backend.declared_headers():
        return EMULATOR
    return origin_of_url(backend.base_url) or ledger.known_origin(backend.base_url)


def resolve_origin(backend: Backend, ledger: Ledger, retrying: Retrying) -> str:
    """The origin of the backend's base URL: known from the URL, remembered by the cache, or
    asked of the server once (and remembered); ``retrying`` waits out a passing outage (it is
    this cache's first contact with that server: a server that cannot be reached at all is
    ``Unreachable`` within seconds, and raised)."""
    url = backend.base_url
    # A client made by ``Emulator.client()`` says what it points at in its own headers: that
    # wins over what the cache remembers of the URL (a port once used by something else).
    declared = EMULATOR if EMULATOR_HEADER in backend.declared_headers() else None
    known = origin_of_url(url) or ledger.known_origin(url)
    if declared is None and known is not None:
        return known
    if declared is not None:
        origin = declared
        if known == declared:
            return origin
    else:
        try:
            headers = retrying.call(backend.identify)
        except Unreachable:
            raise
        except BatchAPIError as e:
            # Without an answer the server is only its URL (not remembered: the next call
            # asks again).
            log.warning("dsbatch: could not ask %s what it is (%s); taking it as it is", url, e)
            return _URL + url
        origin = origin_of_headers(headers) or _URL + url
    try:
        ledger.remember_origin(url, origin)
    except LedgerError as e:  # a read-only cache: asked again next time
        log.info("dsbatch: could not remember what %s is: %s", url, e)
    return origin


def describe(origin: str) -> str:
    """How messages name an origin."""
    if origin == ANTHROPIC:
        return "the Anthropic API"
    if origin == EMULATOR:
        return "dsbatch's emulator"
    if origin.startswith(_URL):
        return f"the server at {origin[len(_URL) :]}"
    return "an unrecorded origin (a cache written before dsbatch recorded origins)"


def made_by_emulator(batch_id: str, lines: Iterable[tuple[str, str]]) -> bool:
    """Whether a batch's stored result lines (custom_id, raw line) carry the message or request
    ids dsbatch's emulator derives from the batch id and custom_id (no real answer does)."""
    from dsbatch._emulator._ids import prefixed_id

    for custom_id, raw in lines:
        try:
            result = json.loads(raw).get("result") or {}
        except (ValueError, AttributeError):
            continue
        message = result.get("message") if isinstance(result, dict) else None
        if isinstance(message, dict) and isinstance(message.get("id"), str):
            return message["id"] == prefixed_id("msg_", batch_id, custom_id)
        error = result.get("error") if isinstance(result, dict) else None
        if isinstance(error, dict) and isinstance(error.get("request_id"), str):
            return error["request_id"] == prefixed_id("req_", batch_id, custom_id)
    return False
