"""Dry runs and budgets: what a ``dsbatch.map`` call would send and what it may cost, worked
out before anything is sent (``dsbatch.Plan``).

- What to send: exactly what the job's first step would decide now (``survey``, then
  ``View.open_ids``): not what the cache holds final for this origin, not what a batch in
  flight holds.
- Input tokens: ``SAMPLE`` requests to send, the first by custom_id (a hash: a deterministic,
  unbiased sample), are counted exactly by the free token-counting endpoint
  (``client.messages.count_tokens``, which counts cache reads and writes too); the rest are
  extrapolated by their bytes at the sample's tokens per byte. With no more requests than the
  sample, the count is exact. When the endpoint cannot be reached (no key, no network, an
  error), every request is estimated offline at ``BYTES_PER_TOKEN`` bytes of its JSON body
  per token (English prose runs about 4 characters a token, and the body's JSON keys count as
  bytes, so this leans high). ``Plan.token_count`` says which.
- ``cost_usd_max``: every answer reaching its ``max_tokens``, and every input token priced as
  a cache write (at the 1-hour price if the request names a 1-hour TTL, else the 5-minute one)
  in a request that carries a ``cache_control``, as input otherwise: no run of these requests
  costs more, at the prices in effect today (``_cost``), up to the input estimate's error.
- ``cost_usd_expected``: each answer using the share of its ``max_tokens`` that this job's
  answers already in the cache used (up to ``_RATIO_SAMPLE`` of them), without any,
  ``EXPECTED_FRACTION`` of it; input at the input price, except a cached prefix (the blocks up
  to a request's last ``cache_control``, in the API's order: tools, system, messages; the whole
  input for a top-level ``cache_control``) at least the model's minimum cacheable length:
  written (at its TTL's price) by the first request to send that has it, read by every other
  one. Its tokens are the request's input tokens times the prefix's share of the input's
  characters (a text block's text, other blocks' JSON). Hits in a batch are best-effort: this
  is what caching would save if every one hit.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dsbatch._backend import Backend
from dsbatch._cost import PriceBook, answer_cost
from dsbatch._errors import BatchAPIError, BudgetExceededError
from dsbatch._ledger import Ledger
from dsbatch._models import CHECKED, DEFAULT_CACHE_MIN_TOKENS, Prices, model_facts
from dsbatch._options import MapOptions
from dsbatch._plan import chunk_requests, queued, survey
from dsbatch._policy import latest_results

__all__ = [
    "BYTES_PER_TOKEN",
    "EXPECTED_FRACTION",
    "SAMPLE",
    "Plan",
    "check_budget",
    "make_plan",
]

log = logging.getLogger("dsbatch")

SAMPLE = 20
BYTES_PER_TOKEN = 3.0
EXPECTED_FRACTION = 0.25
_RATIO_SAMPLE = 1000


@dataclass(frozen=True)
class Plan:
    """What a ``dsbatch.map`` call would do, and what it may cost (``dry_run=True``: nothing
    was sent, and no job was recorded). Requests are distinct requests (identical rows share
    one); costs are USD at batch prices, None when a model has no known price."""

    fingerprint: str  # the job's
    rows: int
    requests: int  # to send
    cached: int  # final in the cache (answered, or failed for good): not sent again
    in_flight: int  # held by a batch in flight (another job's, or an earlier call's)
    batches: int  # at least this many batches carry them
    input_tokens: int  # of the requests to send (see token_count)
    output_tokens_max: int  # the sum of their max_tokens
    cost_usd_max: float | None  # every answer reaching max_tokens
    cost_usd_expected: float | None  # a guess: see expected_basis
    token_count: str  # how input_tokens was found
    expected_basis: str  # what cost_usd_expected assumes
    models: tuple[str, ...]
    queued: int  # requests of this cache's batches in the processing queue now (this origin)
    max_queued_requests: int

    def __str__(self) -> str:
        distinct = self.requests + self.cached + self.in_flight
        batches = f"{self.batches:,} batch" + ("" if self.batches == 1 else "es")
        lines = [
            f"dsbatch.Plan for job {self.fingerprint[:12]} (a dry run: nothing was sent)",
            f"  {self.rows:,} rows, {distinct:,} distinct requests: {self.requests:,} to send "
            f"in {batches}, {self.cached:,} final in the cache, {self.in_flight:,} in flight",
            f"  input tokens: {self.input_tokens:,} ({self.token_count})",
            f"  output tokens: at most {self.output_tokens_max:,} (each request's max_tokens)",
            f"  cost: at most {_usd(self.cost_usd_max)} (every answer reaching max_tokens), "
            f"expected {_usd(self.cost_usd_expected)} ({self.expected_basis})",
            f"  model {', '.join(self.models) or 'none'}; batch prices (50% of standard), "
            f"table checked {CHECKED}",
        ]
        room = self.max_queued_requests - self.queued
        if self.requests > room:
            lines.append(
                f"  sent in waves: at most {self.max_queued_requests:,} requests in the "
                f"processing queue (this cache's batches hold {self.queued:,} now)"
            )
        return "\n".join(lines)

    __repr__ = __str__


def _given(budget_usd: float) -> str:
    """A budget as the user wrote it: in cents, unless that would round it ($0.0049)."""
    return f"${budget_usd:,.2f}" if round(budget_usd, 2) == budget_usd else f"${budget_usd:,}"


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def make_plan(
    backend: Backend,
    ledger: Ledger,
    fingerprint: str,
    bodies: Mapping[str, bytes],
    *,
    rows: int,
    origin: str,
    options: MapOptions,
    canceled: bool = False,
) -> Plan:
    """The plan of a job whose requests are ``bodies``, from what the cache knows now; the
    only calls made count tokens."""
    needed = pa.array(list(bodies), pa.string())
    view = survey(ledger, fingerprint, needed, origin)
    to_send = (
        []
        if canceled or not bodies
        else view.open_ids(
            max_attempts=options.max_attempts,
            resend_canceled=options.resend_canceled,
        ).to_pylist()
    )
    in_flight = len(view.waiting_ids & set(bodies))
    batches = chunk_requests(
        to_send,
        bodies,
        max_requests=min(options.max_batch_requests, options.max_queued_requests),
        max_bytes=options.max_batch_bytes,
    )
    params = [json.loads(bodies[c]) for c in to_send]
    tokens, token_count = _input_tokens(backend, to_send, bodies, params, options.betas)
    ratio, basis = _output_ratio(view.results, bodies, set(to_send) | view.waiting_ids)
    book = PriceBook(options.prices)
    today = dt.datetime.now(dt.timezone.utc).date()
    most: float | None = 0.0
    expected: float | None = 0.0
    models = set()
    written: set[str] = set()  # the cached prefixes an earlier request to send writes
    for custom_id, request, counted in zip(to_send, params, tokens, strict=True):
        model = request.get("model")
        models.add(str(model))
        prices = book.prices(model if isinstance(model, str) else None, today)
        if prices is None or most is None or expected is None:
            most = expected = None
            continue
        body, whole = bodies[custom_id], math.ceil(counted)
        limit = int(request.get("max_tokens") or 0)
        cached = b'"cache_control"' in body
        one_hour = cached and b'"ttl":"1h"' in body
        most += answer_cost(
            prices,
            input_tokens=0 if cached else whole,
            output_tokens=limit,
            write_5m=whole if cached and not one_hour else 0,
            write_1h=whole if one_hour else 0,
        )
        expected += _expected(prices, request, whole, round(ratio * limit), written)
    return Plan(
        fingerprint=fingerprint,
        rows=rows,
        requests=len(to_send),
        cached=len(bodies) - len(to_send) - in_flight,
        in_flight=in_flight,
        batches=sum(1 for _ in batches),
        input_tokens=round(sum(tokens)),
        output_tokens_max=sum(int(p.get("max_tokens") or 0) for p in params),
        cost_usd_max=most,
        cost_usd_expected=expected,
        token_count=token_count,
        expected_basis=basis + (_CACHED_BASIS if written else ""),
        models=tuple(sorted(models)) or ((options.model,) if options.model else ()),
        queued=sum(r.request_count for r in queued(view.records, origin)),
        max_queued_requests=options.max_queued_requests,
    )


_CACHED_BASIS = (
    "; each cached prefix written by the first request that has it and read by the others"
)


def _expected(
    prices: Prices, request: dict[str, Any], tokens: int, output: int, written: set[str]
) -> float:
    """The expected cost of one request (see the module's docstring); ``written`` gathers the
    cached prefixes of the requests before it."""
    prefix = _cache_prefix(request)
    facts = model_facts(str(request.get("model")))
    minimum = facts.minimum_cacheable if facts is not None else DEFAULT_CACHE_MIN_TOKENS
    cached = 0 if prefix is None else round(tokens * prefix[0])
    if prefix is None or cached < minimum:
        return answer_cost(prices, input_tokens=tokens, output_tokens=output)
    _, ttl, key = prefix
    if key in written:
        return answer_cost(
            prices, input_tokens=tokens - cached, output_tokens=output, cache_read=cached
        )
    written.add(key)
    return answer_cost(
        prices,
        input_tokens=tokens - cached,
        output_tokens=output,
        write_5m=cached if ttl != "1h" else 0,
        write_1h=cached if ttl == "1h" else 0,
    )


def _cache_prefix(params: dict[str, Any]) -> tuple[float, str, str] | None:
    """The request's cached prefix: its share of the input's characters, its TTL (the last
    breakpoint's) and a key equal for requests with the same prefix; None without one."""
    parts: list[tuple[str, Any]] = [("tool", tool) for tool in params.get("tools") or ()]
    system = params.get("system")
    parts += [("system", b) for b in ([system] if isinstance(system, str) else system or [])]
    for message in params.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        role = str(message.get("role")) if isinstance(message, dict) else ""
        parts += [(role, b) for b in ([content] if isinstance(content, str) else content or [])]
    marks = [
        i
        for i, (_, block) in enumerate(parts)
        if isinstance(block, dict) and isinstance(block.get("cache_control"), dict)
    ]
    automatic = params.get("cache_control")
    if isinstance(automatic, dict) and parts:
        marks.append(len(parts) - 1)
    if not marks:
        return None
    end = max(marks)
    block = parts[end][1]
    control = block.get("cache_control") if isinstance(block, dict) else None
    if not isinstance(control, dict):
        control = automatic if isinstance(automatic, dict) else {}
    sizes = [_chars(b) for _, b in parts]
    key = json.dumps([params.get("model"), parts[: end + 1]], sort_keys=True, default=str)
    return sum(sizes[: end + 1]) / max(1, sum(sizes)), str(control.get("ttl", "5m")), key


def _chars(block: Any) -> int:
    if isinstance(block, str):
        return len(block)
    if isinstance(block, dict):
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            return len(block["text"])
        block = {k: v for k, v in block.items() if k != "cache_control"}
    return len(json.dumps(block, sort_keys=True, separators=(",", ":")))


def _input_tokens(
    backend: Backend,
    to_send: Sequence[str],
    bodies: Mapping[str, bytes],
    params: Sequence[dict[str, Any]],
    betas: Sequence[str],
) -> tuple[list[float], str]:
    """Each request's input tokens (counted, extrapolated or estimated) and how they were found."""
    sizes = [len(bodies[c]) for c in to_send]
    if not to_send:
        return [], "nothing to send"
    order = sorted(range(len(to_send)), key=lambda i: to_send[i])[:SAMPLE]
    counted: dict[int, int] = {}
    try:
        for i in order:
            counted[i] = backend.count_tokens(params[i], betas)
    except BatchAPIError as e:
        log.info("dsbatch: count_tokens could not be used (%s): estimating offline", e)
        per_byte = 1 / BYTES_PER_TOKEN
        return [size * per_byte for size in sizes], (
            f"offline estimate, {BYTES_PER_TOKEN:g} bytes per token (count_tokens could not "
            f"be used: {_short(e)})"
        )
    if len(counted) == len(to_send):
        every = f"all {len(to_send):,} requests" if len(to_send) > 1 else "the one request"
        return [float(counted[i]) for i in range(len(to_send))], f"count_tokens on {every}"
    per_byte = sum(counted.values()) / max(1, sum(sizes[i] for i in counted))
    tokens = [float(counted.get(i, size * per_byte)) for i, size in enumerate(sizes)]
    return tokens, f"count_tokens on {len(counted)} sampled requests, extrapolated by bytes"


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 120 else text[:117] + "..."


def _output_ratio(
    results: pa.Table, bodies: Mapping[str, bytes], excluded: set[str]
) -> tuple[float, str]:
    """The share of max_tokens the job's answers in the cache used, and what it rests on."""
    latest = latest_results(results)
    answered = latest.filter(pc.equal(latest["type"], "succeeded").fill_null(False))
    pairs = sorted(
        (c, out)
        for c, out in zip(
            answered["custom_id"].to_pylist(), answered["output_tokens"].to_pylist(), strict=True
        )
        if c not in excluded and c in bodies and out is not None
    )[:_RATIO_SAMPLE]
    limits = [int(json.loads(bodies[c]).get("max_tokens") or 0) for c, _ in pairs]
    if not pairs or sum(limits) == 0:
        return EXPECTED_FRACTION, (
            f"{EXPECTED_FRACTION:.0%} of max_tokens assumed: no answer of this job in the cache yet"
        )
    ratio = sum(out for _, out in pairs) / sum(limits)
    return ratio, (
        f"{ratio:.0%} of max_tokens, as the {len(pairs):,} answers of this job in the cache used"
    )


def check_budget(plan: Plan, budget_usd: float) -> None:
    """Refuse, before anything is sent, a call that may cost more than ``budget_usd``."""
    if plan.cost_usd_max is None:
        models = ", ".join(plan.models)
        raise BudgetExceededError(
            f"budget_usd={_given(budget_usd)} cannot be checked: no price is known for model "
            f"{models}. Nothing was sent: pass prices={{'{plan.models[0] if plan.models else ''}"
            "': {'input': ..., 'output': ...}} (standard USD per million tokens), or "
            "budget_usd=None",
            budget_usd=budget_usd,
            cost_usd_max=None,
            plan=plan,
        )
    if plan.cost_usd_max > budget_usd:
        raise BudgetExceededError(
            f"the {plan.requests:,} requests still to send may cost up to "
            f"${plan.cost_usd_max:,.4f} (every answer reaching max_tokens; "
            f"{plan.input_tokens:,} input tokens, {plan.token_count}), over "
            f"budget_usd={_given(budget_usd)}. Nothing was sent. Expected: "
            f"{_usd(plan.cost_usd_expected)} ({plan.expected_basis}). Raise budget_usd, lower "
            "max_tokens, or look at the plan first with dry_run=True",
            budget_usd=budget_usd,
            cost_usd_max=plan.cost_usd_max,
            plan=plan,
        )
