"""Cost: what answers cost, from their usage and the price table of ``_models``, or the user's
own prices (``prices=``, or a JSON file named by ``DSBATCH_PRICES``) over it.

The cost of one answer, in USD, with ``p`` the model's standard prices per million tokens in
effect on the day (UTC) its batch was created, and every term at the batch discount
(``BATCH_DISCOUNT``, 50%: the Batch API halves input and output, and its discount stacks on
prompt caching's prices)::

    0.5 * (input_tokens * p.input + output_tokens * p.output
           + cache_read_input_tokens * p.cache_read
           + write_5m * p.cache_write_5m + write_1h * p.cache_write_1h) / 1_000_000

``write_5m`` and ``write_1h`` split ``cache_creation_input_tokens`` by the cache entry's TTL, as
the answer's ``usage.cache_creation`` reports it (``ephemeral_5m_input_tokens``,
``ephemeral_1h_input_tokens``, read from the stored result line); an answer without that split
has every write priced as a 5-minute one. A model with a price band (Haiku 5.5) prices a request
whose prompt (input, cache reads and writes) is over ``band_tokens`` at the higher band, its
output included. An answer bought by ``dsbatch.preview`` (Messages API) is at standard price:
no discount. Errored, expired and canceled requests are not billed: they cost 0. A model
without a known price has no cost (None), and is warned about once per process.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from dsbatch._arrow import whole
from dsbatch._errors import LedgerError
from dsbatch._models import BATCH_DISCOUNT, CHECKED, Prices, model_facts, parse_model
from dsbatch._policy import LOST_ERROR
from dsbatch._records import USAGE_FIELDS
from dsbatch._store import PREVIEW_PREFIX, ResultsStore

__all__ = [
    "PRICES_ENV",
    "PRICED_COLUMNS",
    "PRICE_KEYS",
    "PriceBook",
    "Pricer",
    "answer_cost",
    "check_prices",
    "model_of",
    "prices_key",
    "warn_unpriced",
]

log = logging.getLogger("dsbatch")

PRICES_ENV = "DSBATCH_PRICES"
# The keys of one model's prices, as ``prices=`` and the ``DSBATCH_PRICES`` file give them
# (standard USD per million tokens); input and output are required, the cache prices default
# to the usual 1.25x (5-minute write), 2x (1-hour write) and 0.1x (read) of input.
PRICE_KEYS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_REQUIRED = ("input", "output")
_MILLION = 1_000_000
# Models already warned about in this process (one warning each, however often priced).
_WARNED: set[str] = set()
_NOT_BILLED = ("errored", "expired", "canceled")


def answer_cost(
    prices: Prices,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read: int = 0,
    write_5m: int = 0,
    write_1h: int = 0,
    discount: float = BATCH_DISCOUNT,
) -> float:
    """The batch cost in USD of one answer's usage (see the module's docstring);
    ``discount=1.0`` for an answer bought at standard price (``dsbatch.preview``)."""
    prompt = input_tokens + cache_read + write_5m + write_1h
    if prices.band_tokens is not None and prices.above is not None and prompt > prices.band_tokens:
        prices = prices.above
    standard = (
        input_tokens * prices.input
        + output_tokens * prices.output
        + cache_read * prices.cache_read
        + write_5m * prices.cache_write_5m
        + write_1h * prices.cache_write_1h
    )
    return discount * standard / _MILLION


# -- the user's prices ---------------------------------------------------------------------------


def check_prices(name: str, value: Any) -> dict[str, dict[str, float]] | None:
    """``prices=``: model -> its standard USD per million tokens (``PRICE_KEYS``)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{name} must map model names to prices, e.g. {{'claude-haiku-4-5': {{'input': 1.0, "
            f"'output': 5.0}}}} (standard USD per million tokens), not {type(value).__name__}"
        )
    return {
        str(model): _model_prices(f"{name}[{model!r}]", entry) for model, entry in value.items()
    }


def _model_prices(where: str, entry: Any) -> dict[str, float]:
    if not isinstance(entry, Mapping):
        raise TypeError(f"{where} must be a dict of prices such as {{'input': 1.0, 'output': 5.0}}")
    unknown = sorted(set(entry) - set(PRICE_KEYS))
    missing = [key for key in _REQUIRED if key not in entry]
    if unknown or missing:
        what = f"unknown keys {unknown}" if unknown else f"no {' or '.join(missing)}"
        raise ValueError(
            f"{where} has {what}: its keys are {', '.join(PRICE_KEYS)} (standard USD per "
            "million tokens; input and output are required)"
        )
    checked = {}
    for key, price in entry.items():
        if isinstance(price, bool) or not isinstance(price, (int, float)):
            raise TypeError(f"{where}[{key!r}] must be a number of USD, not {price!r}")
        if not math.isfinite(price) or price < 0:
            raise ValueError(f"{where}[{key!r}] must be a finite number >= 0, not {price!r}")
        checked[str(key)] = float(price)
    return checked


def _as_prices(entry: Mapping[str, float]) -> Prices:
    base = entry["input"]
    return Prices(
        input=base,
        cache_write_5m=entry.get("cache_write_5m", base * 1.25),
        cache_write_1h=entry.get("cache_write_1h", base * 2),
        cache_read=entry.get("cache_read", base * 0.1),
        output=entry["output"],
    )


def _env_prices() -> tuple[dict[str, dict[str, float]], str]:
    """The prices of the file ``DSBATCH_PRICES`` names ({} without one), and its text."""
    path = os.environ.get(PRICES_ENV)
    if not path:
        return {}, ""
    try:
        text = Path(path).expanduser().read_text()
        data = json.loads(text)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{PRICES_ENV}={path}: cannot read it as JSON ({e}); it should hold "
            '{"model": {"input": ..., "output": ...}} in standard USD per million tokens'
        ) from e
    return check_prices(f"{PRICES_ENV} file {path}", data) or {}, text


def prices_key(user: Mapping[str, Mapping[str, float]] | None) -> str:
    """What prices depend on besides the usage: the table's date, ``prices=`` and the
    ``DSBATCH_PRICES`` file (a status column priced otherwise is joined again)."""
    _, text = _env_prices()
    described = json.dumps([CHECKED, user, text], sort_keys=True)
    return xxhash.xxh3_64_hexdigest(described.encode())


class PriceBook:
    """Prices per model and day: ``prices=`` first, then the ``DSBATCH_PRICES`` file, then the
    table of ``_models`` (with its effective dates). The user's prices hold on every day."""

    def __init__(self, user: Mapping[str, Mapping[str, float]] | None = None) -> None:
        given, _ = _env_prices()
        given.update(check_prices("prices", user) or {})
        self._exact = {model: _as_prices(entry) for model, entry in given.items()}
        # A model id the user gave matches that model whatever its date suffix.
        self._by_key = {
            parsed: prices
            for model, prices in self._exact.items()
            if (parsed := parse_model(model)) is not None
        }

    def prices(self, model: str | None, day: dt.date | None = None) -> Prices | None:
        """The prices of ``model`` on ``day`` (today when None); None, warned once, when no
        price is known."""
        found = self._find(model, day)
        if found is None:
            warn_unpriced(model)
        return found

    def _find(self, model: str | None, day: dt.date | None) -> Prices | None:
        if model is None:
            return None
        if model in self._exact:
            return self._exact[model]
        parsed = parse_model(model)
        if parsed is not None and parsed in self._by_key:
            return self._by_key[parsed]
        facts = model_facts(model)
        return None if facts is None else facts.prices_on(day)


def warn_unpriced(model: str | None) -> None:
    """Say once per process that a model's answers have no cost."""
    key = str(model)
    if key in _WARNED:
        return
    _WARNED.add(key)
    log.warning(
        "dsbatch: no price is known for model %s: its cost is shown as unknown. Pass "
        "prices={%r: {'input': ..., 'output': ...}} (standard USD per million tokens), or name "
        "a JSON file of such prices in %s",
        model,
        key,
        PRICES_ENV,
    )


# -- a job's answers -----------------------------------------------------------------------------


def model_of(body: bytes, default: str | None = None) -> str | None:
    """The ``model`` of a request's canonical JSON body. When ``default`` is the only model the
    body names, no parsing is needed."""
    named = b'"model":' + json.dumps(default).encode() if default is not None else None
    if named is not None and body.count(b'"model":') == 1 and named in body:
        return default
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return None
    return model if isinstance(model, str) else None


def _day(created_at: float | None) -> dt.date | None:
    if created_at is None:
        return None
    return dt.datetime.fromtimestamp(created_at, dt.timezone.utc).date()


# The result columns a price is worked out from.
PRICED_COLUMNS = ["custom_id", "batch_id", "batch_created_at", *USAGE_FIELDS]


class Pricer:
    """Prices the answers of one job: its requests' bodies tell each one's model, the stored
    result lines the TTL split of cache writes. What it worked out is kept (a batch's results
    never change), so pricing after every poll stays cheap."""

    def __init__(
        self,
        store: ResultsStore,
        bodies: Mapping[str, bytes],
        book: PriceBook,
        *,
        default_model: str | None = None,
        models: Mapping[str, str | None] | None = None,
    ) -> None:
        self.store = store
        self.bodies = bodies
        # custom_id -> model, when known without reading the bodies (the job's requests file)
        self.known = models
        self.book = book
        self.default_model = default_model
        self._models: dict[str, str | None] = {}
        self._splits: dict[str, dict[str, tuple[int, int]]] = {}
        # batch_id -> (how many of its answers were priced, their cost): reused while equal.
        self._sums: dict[str, tuple[int, float | None]] = {}

    @functools.cached_property
    def _only_model(self) -> tuple[str | None] | None:
        """The one model of every request, when the requests file says there is one."""
        if self.known is None:
            return None
        # A job's requests file tells without a Python string per request (``RequestModels``).
        distinct = getattr(self.known, "distinct", None)
        models = distinct() if callable(distinct) else set(self.known.values())
        return (models.pop(),) if len(models) == 1 else None

    def model(self, custom_id: str) -> str | None:
        if self._only_model is not None:
            return self._only_model[0]
        if custom_id not in self._models:
            if self.known is not None and custom_id in self.known:
                self._models[custom_id] = self.known[custom_id]
            else:
                body = self.bodies.get(custom_id)
                self._models[custom_id] = (
                    self.default_model if body is None else model_of(body, self.default_model)
                )
        return self._models[custom_id]

    def total(self, answered: pa.Table) -> float | None:
        """The cost of these succeeded results (one per request); None when a model of theirs
        has no known price."""
        if answered.num_rows == 0:
            return 0.0
        grouped = answered.group_by("batch_id").aggregate([("custom_id", "count")])
        total: float | None = 0.0
        for batch_id, count in zip(
            grouped["batch_id"].to_pylist(), grouped["custom_id_count"].to_pylist(), strict=True
        ):
            known = self._sums.get(batch_id)
            if known is None or known[0] != count:
                rows = answered.filter(pc.equal(answered["batch_id"], batch_id))
                costs, priced = self._costs(rows)
                known = (count, math.fsum(costs.tolist()) if priced.all() else None)
                self._sums[batch_id] = known
            total = None if total is None or known[1] is None else total + known[1]
        return total

    def per_request(self, latest: pa.Table) -> pa.Array:
        """One cost per result (``latest``: one per request): its answer's if it succeeded, 0 for
        a request not billed, null when unknown (no price, or a lost batch's)."""
        n = latest.num_rows
        succeeded = pc.equal(latest["type"], "succeeded").fill_null(False)
        # Only the columns pricing reads are filtered: a million answers' text is not copied.
        costs, known = self._costs(latest.select(PRICED_COLUMNS).filter(succeeded))
        out = np.zeros(n, dtype=np.float64)
        valid = np.zeros(n, dtype=bool)
        answered = _flags(succeeded)
        out[answered], valid[answered] = costs, known
        not_billed = pc.and_(
            pc.is_in(latest["type"], value_set=pa.array(_NOT_BILLED)).fill_null(False),
            pc.not_equal(latest["error_type"], LOST_ERROR).fill_null(True),
        )
        valid |= _flags(not_billed)  # their cost stays 0
        return pa.array(out, pa.float64(), mask=~valid)

    def _costs(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """The cost of each succeeded result row, and whether it is known (its model has a
        price). Worked out a column at a time: the prices of a model on a batch's day are
        looked up once (a batch is one day), and only answers that wrote to the cache are read
        one by one (their 5-minute / 1-hour split)."""
        n = rows.num_rows
        if n == 0:
            return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=bool)
        table: list[Prices | None]
        only = self._only_model
        if only is not None:  # one model: a price per batch day
            days = pc.dictionary_encode(whole(rows["batch_created_at"]), null_encoding="encode")
            table = [self.book.prices(only[0], _day(when)) for when in days.dictionary.to_pylist()]
            which = np.asarray(days.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        else:
            found: dict[tuple[str | None, float | None], int] = {}
            table, which = [], np.empty(n, dtype=np.int64)
            ids, created = rows["custom_id"].to_pylist(), rows["batch_created_at"].to_pylist()
            for row, (custom_id, when) in enumerate(zip(ids, created, strict=True)):
                key = (self.model(custom_id), when)
                at = found.get(key)
                if at is None:
                    at = found[key] = len(table)
                    table.append(self.book.prices(key[0], _day(when)))
                which[row] = at
        tokens_in, tokens_out, read, written = (_counts(rows[name]) for name in USAGE_FIELDS)
        write_5m, write_1h = written.copy(), np.zeros(n, dtype=np.int64)
        # Only the answers that wrote to the cache become Python strings: a million ids took
        # 0.4 s to make, for none.
        wrote = np.flatnonzero(written)
        writers = rows.select(["batch_id", "custom_id"]).take(pa.array(wrote))
        for at, batch_id, custom_id in zip(
            wrote.tolist(),
            writers["batch_id"].to_pylist(),
            writers["custom_id"].to_pylist(),
            strict=True,
        ):
            write_5m[at], write_1h[at] = self._split(batch_id, custom_id, int(written[at]))
        # Each row's price: the band above ``band_tokens`` for a longer prompt.
        prompt = tokens_in + read + write_5m + write_1h
        band = np.array(
            [
                p.band_tokens if p is not None and p.band_tokens is not None and p.above else -1
                for p in table
            ],
            dtype=np.int64,
        )[which]
        above = (band >= 0) & (prompt > band)
        per = [_rates(p, above=False) for p in table], [_rates(p, above=True) for p in table]
        rates = np.where(above[:, None], np.array(per[1])[which], np.array(per[0])[which])
        standard = (
            tokens_in * rates[:, 0]
            + tokens_out * rates[:, 1]
            + read * rates[:, 2]
            + write_5m * rates[:, 3]
            + write_1h * rates[:, 4]
        )
        preview = _flags(pc.starts_with(rows["batch_id"], PREVIEW_PREFIX).fill_null(False))
        discount = np.where(preview, 1.0, BATCH_DISCOUNT)
        known = np.array([p is not None for p in table], dtype=bool)[which]
        return discount * standard / _MILLION, known

    def _split(self, batch_id: str | None, custom_id: str, written: int) -> tuple[int, int]:
        """(5-minute, 1-hour) cache writes of one answer, as its result line reports them;
        all 5-minute when it does not say."""
        if batch_id is None:
            return written, 0
        if batch_id not in self._splits:
            self._splits[batch_id] = _read_splits(self.store, batch_id)
        one_hour = min(self._splits[batch_id].get(custom_id, (written, 0))[1], written)
        return written - one_hour, one_hour


def _read_splits(store: ResultsStore, batch_id: str) -> dict[str, tuple[int, int]]:
    """custom_id -> (5-minute, 1-hour) cache writes, for the answers of a batch that wrote to
    the cache and say how ({} when its results cannot be read)."""
    try:
        table = store.table(batch_id, ["custom_id", "cache_creation_input_tokens", "raw"])
    except LedgerError as e:  # downloaded again by the job that needs it; writes priced as 5m
        log.info("dsbatch: cannot read the cache writes of batch %s: %s", batch_id, e)
        return {}
    wrote = pc.greater(table["cache_creation_input_tokens"], 0).fill_null(False)
    table = table.filter(wrote)
    splits = {}
    for custom_id, raw in zip(
        table["custom_id"].to_pylist(), table["raw"].to_pylist(), strict=True
    ):
        split = _split_of(raw)
        if split is not None:
            splits[custom_id] = split
    return splits


def _split_of(raw: str | None) -> tuple[int, int] | None:
    try:
        usage = json.loads(raw or "")["result"]["message"]["usage"]
        creation = usage["cache_creation"]
        return int(creation.get("ephemeral_5m_input_tokens") or 0), int(
            creation.get("ephemeral_1h_input_tokens") or 0
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _rates(prices: Prices | None, *, above: bool) -> tuple[float, float, float, float, float]:
    """USD per million input, output, cache-read, 5-minute and 1-hour write tokens (zeros for
    an unknown price: its rows are marked unknown)."""
    if prices is not None and above and prices.above is not None:
        prices = prices.above
    if prices is None:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    return (
        prices.input,
        prices.output,
        prices.cache_read,
        prices.cache_write_5m,
        prices.cache_write_1h,
    )


def _counts(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A token count column as int64, null as 0."""
    return np.asarray(column.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)


def _flags(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)
