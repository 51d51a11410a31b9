"""What dsbatch knows of each Claude model: the rules that depend on the model, and its prices.

One table, read on ``CHECKED`` from the sources below; the per-model facts change with each
release, so every fact here is looked up through ``model_facts`` and nowhere else:

- output limits, context, sampling parameters and thinking forms: the models overview and the
  extended-thinking guide (platform.claude.com/docs/en/about-claude/models/overview,
  .../build-with-claude/extended-thinking);
- prices: the pricing page (``PRICES_SOURCE``), standard (non-batch) USD per million tokens;
  the Batch API halves input and output (``BATCH_DISCOUNT``), and its discount stacks with
  prompt caching's. Prices carry the date they took effect (``Prices.since``): a job is priced
  at what was in effect when its batches were made. The 5-minute and 1-hour cache writes of
  Opus 5.5, Sonnet 5/5.5 and Haiku 4.5 are the usual 1.25x / 2x of input, not read from the page;
- the minimum cacheable prompt length: the prompt-caching guide (4,096 tokens for Haiku 4.5 and
  Opus 4.5/4.6, 1,024 for Sonnet 4.5; 2,048 is what users report for Sonnet 4.6). For a model
  the guide gives no figure, ``DEFAULT_CACHE_MIN_TOKENS`` (the largest known) is assumed.

A model id is matched by its family and version (``claude-haiku-4-5``, ``claude-haiku-4-5-20251001``
and ``claude-haiku-4-5@20251001`` are one model). A Claude model newer than any in the table is
treated as the newest of its kind would be (it rejects sampling parameters, as projects that track
this assume) but has no known price or output limit.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

__all__ = [
    "BATCH_DISCOUNT",
    "CHECKED",
    "DEFAULT_CACHE_MIN_TOKENS",
    "OUTPUT_300K_BETA",
    "PRICES_SOURCE",
    "ModelFacts",
    "Prices",
    "model_facts",
    "parse_model",
]

CHECKED = "2026-12-01"
PRICES_SOURCE = "https://platform.claude.com/docs/en/about-claude/pricing"
BATCH_DISCOUNT = 0.5
DEFAULT_CACHE_MIN_TOKENS = 4096
# The beta that lets a batch ask up to 300,000 output tokens of the models that support it.
OUTPUT_300K_BETA = "output-300k-2026-03-24"
_OUTPUT_300K = 300_000


@dataclass(frozen=True)
class Prices:
    """Standard USD per million tokens, in effect from ``since`` on. ``above`` is the band that
    applies to prompts longer than ``band_tokens`` (cache reads and writes counted)."""

    input: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    output: float
    since: dt.date = dt.date(2000, 1, 1)
    band_tokens: int | None = None
    above: Prices | None = None


@dataclass(frozen=True)
class ModelFacts:
    """The facts of one model (see the module's docstring for where each comes from)."""

    name: str  # "Claude Haiku 4.5"
    family: str  # opus | sonnet | haiku | fable | mythos
    version: tuple[int, int]  # (4, 5)
    max_output: int | None  # the highest max_tokens; None when not known
    context: int | None
    accepts_sampling: bool  # temperature, top_p, top_k (only under API version 2023-06-01)
    thinking_forms: frozenset[str]  # {"enabled"} (manual), {"adaptive"}, or both
    always_thinking: bool = False
    thinking_omitted_by_default: bool = False  # thinking text omitted unless display=summarized
    supports_output_300k: bool = False
    cache_min_tokens: int | None = None  # None: not documented (DEFAULT_CACHE_MIN_TOKENS)
    prices: tuple[Prices, ...] = ()  # oldest first
    known: bool = True  # False: a newer model than the table knows, facts assumed

    def prices_on(self, day: dt.date | None = None) -> Prices | None:
        """The prices in effect on ``day`` (today when None); None when not known."""
        day = day or dt.date.today()
        current = None
        for prices in self.prices:
            if prices.since <= day:
                current = prices
        return current

    def output_limit(self, betas: tuple[str, ...] | list[str] = ()) -> int | None:
        """The highest ``max_tokens`` a batch request may ask for, given the batch's betas."""
        if self.max_output is None:
            return None
        if self.supports_output_300k and OUTPUT_300K_BETA in betas:
            return _OUTPUT_300K
        return self.max_output

    @property
    def minimum_cacheable(self) -> int:
        return self.cache_min_tokens or DEFAULT_CACHE_MIN_TOKENS


def _usual(input_price: float, cache_read: float, output: float, **kw: object) -> Prices:
    """Prices whose cache writes are the usual 1.25x (5 minutes) and 2x (1 hour) of input."""
    return Prices(input_price, input_price * 1.25, input_price * 2, cache_read, output, **kw)  # type: ignore[arg-type]


_K64, _K128 = 64_000, 128_000
_MANUAL, _ADAPTIVE = frozenset({"enabled"}), frozenset({"adaptive"})
_BOTH = _MANUAL | _ADAPTIVE
_OPUS_45 = (Prices(5, 6.25, 10, 0.50, 25),)
_SONNET_45 = (Prices(3, 3.75, 6, 0.30, 15),)
_FABLE_5 = (Prices(10, 12.50, 20, 1, 50),)


def _new(name: str, family: str, version: tuple[int, int], **kw: object) -> ModelFacts:
    """A model of the 5 family or Opus 4.7+: 128K output, no sampling, adaptive thinking."""
    facts: dict[str, object] = {
        "max_output": _K128,
        "context": 1_000_000,
        "accepts_sampling": False,
        "thinking_forms": _ADAPTIVE,
        "supports_output_300k": True,
    }
    facts.update(kw)
    return ModelFacts(name, family, version, **facts)  # type: ignore[arg-type]


_TABLE: tuple[ModelFacts, ...] = (
    ModelFacts(
        "Claude Haiku 4.5", "haiku", (4, 5), _K64, 200_000, True, _MANUAL,
        cache_min_tokens=4096, prices=(_usual(1, 0.10, 5),),
    ),
    ModelFacts(
        "Claude Sonnet 4.5", "sonnet", (4, 5), _K64, 1_000_000, True, _MANUAL,
        cache_min_tokens=1024, prices=_SONNET_45,
    ),
    ModelFacts(
        "Claude Opus 4.5", "opus", (4, 5), _K64, 1_000_000, True, _MANUAL,
        cache_min_tokens=4096, prices=_OPUS_45,
    ),
    ModelFacts(
        "Claude Sonnet 4.6", "sonnet", (4, 6), _K128, 1_000_000, True, _BOTH,
        supports_output_300k=True, cache_min_tokens=2048, prices=_SONNET_45,
    ),
    ModelFacts(
        "Claude Opus 4.6", "opus", (4, 6), _K128, 1_000_000, True, _BOTH,
        supports_output_300k=True, cache_min_tokens=4096, prices=_OPUS_45,
    ),
    _new("Claude Opus 4.7", "opus", (4, 7), thinking_omitted_by_default=True, prices=_OPUS_45),
    _new("Claude Opus 4.8", "opus", (4, 8), thinking_omitted_by_default=True, prices=_OPUS_45),
    _new("Claude Opus 5", "opus", (5, 0), thinking_omitted_by_default=True, prices=_OPUS_45),
    _new(
        "Claude Opus 5.5", "opus", (5, 5), always_thinking=True,
        thinking_omitted_by_default=True, prices=(_usual(4, 0.20, 20),),
    ),
    _new("Claude Sonnet 5", "sonnet", (5, 0), prices=(_usual(2, 0.20, 10),)),
    _new(
        "Claude Sonnet 5.5", "sonnet", (5, 5),
        prices=(
            _usual(2, 0.20, 10),
            _usual(2, 0.10, 10, since=dt.date(2026, 10, 7)),
        ),
    ),
    _new(
        "Claude Haiku 5.5", "haiku", (5, 5),
        prices=(
            Prices(
                0.10, 0.125, 0.20, 0.01, 0.50,
                band_tokens=100_000, above=_usual(0.50, 0.05, 2.50),
            ),
        ),
    ),
    _new("Claude Fable 5", "fable", (5, 0), thinking_omitted_by_default=True, prices=_FABLE_5),
    _new(
        "Claude Fable 5.1", "fable", (5, 1), always_thinking=True,
        thinking_omitted_by_default=True, prices=(Prices(10, 12.50, 20, 0.25, 50),),
    ),
    _new("Claude Mythos 5", "mythos", (5, 0)),
    _new("Claude Mythos 5.1", "mythos", (5, 1)),
)  # fmt: skip

_BY_KEY = {(m.family, m.version): m for m in _TABLE}
_NEWEST = {family: max(v for f, v in _BY_KEY if f == family) for family, _ in _BY_KEY}
# claude-<family>-<major>[-<minor>][-<date> | @<date>] ; the minor is one or two digits, a
# date eight.
_MODEL_ID = re.compile(
    r"^claude-(?P<family>[a-z]+)-(?P<major>\d{1,2})(?:-(?P<minor>\d{1,2}))?"
    r"(?:[-@](?:\d{8}|latest))?(?:-v\d+(?::\d+)?)?$"
)


def parse_model(model: str) -> tuple[str, tuple[int, int]] | None:
    """(family, (major, minor)) of a Claude model id; None for anything else."""
    match = _MODEL_ID.match(model.strip().lower())
    if match is None:
        return None
    return match["family"], (int(match["major"]), int(match["minor"] or 0))


def model_facts(model: str) -> ModelFacts | None:
    """The facts of ``model``; for a Claude model newer than the table, what the newest of its
    family implies (rules, not prices or limits); None when nothing is known."""
    parsed = parse_model(model)
    if parsed is None:
        return None
    family, version = parsed
    if (family, version) in _BY_KEY:
        return _BY_KEY[family, version]
    # A family the table does not know counts as new from the 5 family on.
    newest = _NEWEST.get(family, (5, 0))
    if version < newest:
        return None
    like = _BY_KEY.get((family, newest), _BY_KEY["mythos", (5, 0)])
    return ModelFacts(
        f"{model} (newer than dsbatch's table)",
        family,
        version,
        max_output=None,
        context=None,
        accepts_sampling=False,
        thinking_forms=like.thinking_forms,
        always_thinking=False,
        thinking_omitted_by_default=like.thinking_omitted_by_default,
        supports_output_300k=like.supports_output_300k,
        cache_min_tokens=None,
        prices=(),
        known=False,
    )
