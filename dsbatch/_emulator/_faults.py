"""Faults the emulator can inject: HTTP errors, lost answers, cut downloads, bad results.

Which request gets a per-request fault is decided by hashing its custom_id with the number of
times that custom_id was received before, so the same sequence of calls always gives the same
outcome and a request sent again in a later batch gets a fresh draw. ``invalid`` hashes the
custom_id alone: an invalid request stays invalid however often it is retried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from dsbatch._emulator._ids import unit_interval

__all__ = ["ENDPOINTS", "Faults", "HttpFault"]

# The batch endpoints, then the Messages API and token counting.
ENDPOINTS = (
    *("create", "retrieve", "list", "cancel", "delete", "results"),
    *("messages", "count_tokens"),
)

# Short enough that the SDK's retries never wait for real; the SDK ignores a zero retry-after.
_DEFAULT_RETRY_AFTER = 0.001

_HTTP_ITEM = re.compile(
    r"^(?P<status>\d{3})(?:x(?P<times>\d+))?(?:@(?P<retry_after>[0-9]*\.?[0-9]+))?$"
)
_COUNTS = ("lose_create", "cut_results", "short_results")
_FRACTIONS = ("errored", "invalid", "expired", "preamble", "no_json", "redacted_thinking")


@dataclass
class HttpFault:
    """Answer the next ``times`` calls of ``endpoint`` (or "*" for any) with HTTP ``status``.

    ``retry_after`` (seconds) is sent as ``retry-after`` and ``retry-after-ms``; None means
    0.001 s so SDK retries stay instant, and 0 sends no header (the SDK then backs off itself).
    """

    endpoint: str
    status: int
    times: int = 1
    retry_after: float | None = None

    def __post_init__(self) -> None:
        if self.endpoint != "*" and self.endpoint not in ENDPOINTS:
            raise ValueError(
                f"HttpFault endpoint must be '*' or one of {', '.join(ENDPOINTS)}, "
                f"not {self.endpoint!r}"
            )
        if not 400 <= self.status <= 599:
            raise ValueError(f"HttpFault status must be a 4xx or 5xx code, not {self.status}")
        if self.times < 0:
            raise ValueError(f"HttpFault times must be >= 0, not {self.times}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"HttpFault retry_after must be >= 0, not {self.retry_after}")

    def matches(self, endpoint: str) -> bool:
        return self.times > 0 and self.endpoint in ("*", endpoint)

    def headers(self) -> dict[str, str]:
        """The retry headers this fault's answer carries."""
        seconds = _DEFAULT_RETRY_AFTER if self.retry_after is None else self.retry_after
        if seconds <= 0:
            return {}
        return {"retry-after": f"{seconds:g}", "retry-after-ms": f"{seconds * 1000:g}"}


@dataclass
class Faults:
    """Every fault the emulator injects; the defaults inject none.

    - ``http``: HTTP errors for the next calls of an endpoint (see HttpFault).
    - ``lose_create``: the next N accepted creates make the batch, then drop the connection
      without answering.
    - ``cut_results``: the next N results downloads stop midway through a line and drop the
      connection.
    - ``short_results``: the next N results downloads end cleanly after half their lines: a
      body that looks complete, cut on a line boundary.
    - ``errored``: fraction of requests ending errored (half ``overloaded_error``, half
      ``api_error``); ``invalid``: fraction ending errored with ``invalid_request_error``;
      ``expired``: fraction ending expired.
    - ``preamble``: fraction of structured answers that start with prose: with
      ``output_config.format``, prose then the JSON in one text block; with a forced tool, a
      text block before a valid tool call. ``no_json``: fraction answered in prose only (with
      a forced tool: one text block, no tool call, stop_reason ``end_turn``).
    - ``redacted_thinking``: fraction of answers that think whose thinking block comes as a
      ``redacted_thinking`` block (``data`` opaque) instead of a ``thinking`` one.

    The per-request faults (``errored`` ... ``redacted_thinking``) act on batch requests only;
    the Messages API and token counting meet the HTTP faults of their endpoint names,
    ``messages`` and ``count_tokens``.
    """

    http: list[HttpFault] = field(default_factory=list)
    lose_create: int = 0
    cut_results: int = 0
    short_results: int = 0
    errored: float = 0.0
    invalid: float = 0.0
    expired: float = 0.0
    preamble: float = 0.0
    no_json: float = 0.0
    redacted_thinking: float = 0.0

    def __post_init__(self) -> None:
        for name in _COUNTS:
            if getattr(self, name) < 0:
                raise ValueError(f"Faults.{name} must be >= 0, not {getattr(self, name)}")
        for name in _FRACTIONS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be a fraction in [0, 1], not {value}")
        if self.errored + self.expired > 1.0:
            raise ValueError("Faults.errored + Faults.expired must not exceed 1")
        if self.preamble + self.no_json > 1.0:
            raise ValueError("Faults.preamble + Faults.no_json must not exceed 1")

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Faults from the CLI's comma-separated form.

        ``ENDPOINT=STATUSxN[@RETRY_AFTER]`` per HTTP fault (ENDPOINT one of create, retrieve,
        list, cancel, delete, results, messages, count_tokens or *), ``lose_create=N``,
        ``cut_results=N``, ``short_results=N``, and ``errored=F``, ``invalid=F``,
        ``expired=F``, ``preamble=F``, ``no_json=F``, ``redacted_thinking=F`` with F in
        [0, 1]. Example: ``"create=429x2@0.5,lose_create=1,errored=0.1"``.
        """
        values: dict[str, object] = {}
        http: list[HttpFault] = []
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                continue
            name, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not value:
                raise ValueError(f"bad fault {item!r}: expected NAME=VALUE")
            try:
                if name in _COUNTS:
                    values[name] = int(value)
                elif name in _FRACTIONS:
                    values[name] = float(value)
                elif name == "*" or name in ENDPOINTS:
                    http.append(_parse_http(name, value))
                else:
                    known = ", ".join((*ENDPOINTS, "*", *_COUNTS, *_FRACTIONS))
                    raise ValueError(f"unknown fault name {name!r} (known: {known})")
            except ValueError as exc:
                if str(exc).startswith("bad fault"):
                    raise
                raise ValueError(f"bad fault {item!r}: {exc}") from None
        try:
            return cls(http=http, **values)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"bad fault spec {spec!r}: {exc}") from None

    def describe(self) -> str:
        """The faults that are on, in ``parse`` form (empty when none)."""
        items = [
            f"{f.endpoint}={f.status}x{f.times}"
            + ("" if f.retry_after is None else f"@{f.retry_after:g}")
            for f in self.http
            if f.times > 0
        ]
        for spec_field in fields(self):
            value = getattr(self, spec_field.name)
            if spec_field.name != "http" and value:
                items.append(f"{spec_field.name}={value:g}")
        return ",".join(items)

    # The take_* methods consume a fault; the emulator calls them under its lock.

    def take_http(self, endpoint: str) -> HttpFault | None:
        for fault in self.http:
            if fault.matches(endpoint):
                fault.times -= 1
                return fault
        return None

    def take_lose_create(self) -> bool:
        if self.lose_create > 0:
            self.lose_create -= 1
            return True
        return False

    def take_short_results(self) -> bool:
        if self.short_results > 0:
            self.short_results -= 1
            return True
        return False

    def take_cut_results(self) -> bool:
        if self.cut_results > 0:
            self.cut_results -= 1
            return True
        return False

    def request_fate(self, custom_id: str, attempt: int) -> str | None:
        """The forced fate of one request: an error type, "expired", or None (answer it)."""
        if self.invalid and unit_interval("invalid", custom_id) < self.invalid:
            return "invalid_request_error"
        if self.errored or self.expired:
            draw = unit_interval("fate", custom_id, attempt)
            if draw < self.errored:
                return "overloaded_error" if draw < self.errored / 2 else "api_error"
            if draw < self.errored + self.expired:
                return "expired"
        return None

    def answer_shape(self, custom_id: str, attempt: int) -> str | None:
        """How a structured answer is spoiled: "no_json", "preamble", or None (clean JSON)."""
        if self.no_json or self.preamble:
            draw = unit_interval("shape", custom_id, attempt)
            if draw < self.no_json:
                return "no_json"
            if draw < self.no_json + self.preamble:
                return "preamble"
        return None

    def redacts(self, custom_id: str, attempt: int) -> bool:
        """Whether an answer that thinks has its thinking redacted."""
        draw = unit_interval("redacted", custom_id, attempt)
        return bool(self.redacted_thinking) and draw < self.redacted_thinking


def _parse_http(endpoint: str, value: str) -> HttpFault:
    match = _HTTP_ITEM.match(value)
    if not match:
        raise ValueError("expected STATUS, STATUSxN or STATUSxN@RETRY_AFTER, e.g. 429x2@0.5")
    retry_after = match["retry_after"]
    return HttpFault(
        endpoint=endpoint,
        status=int(match["status"]),
        times=int(match["times"] or 1),
        retry_after=None if retry_after is None else float(retry_after),
    )
