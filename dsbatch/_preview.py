"""``dsbatch.preview``: a few rows through the Messages API in seconds, before the batch.

The rows are rendered exactly as ``dsbatch.map`` renders them (the whole dataset, with the same
options and prompt-cache breakpoints), so each preview request is byte for byte a request of the
batch job, with its custom_id. Their answers are stored in the cache's results like a batch's,
under a batch id of their own (``preview_...``, ``_store``), tagged with the origin of the client
that bought them: the batch run that follows finds them and does not buy them again, and they
serve no other origin.

What the cache already answers is not bought again; a request that a batch holds in flight is
not previewed (the next row is taken instead), so nothing is ever paid twice. The calls are
made under the cache lock, which other jobs wait for (seconds).

A call that fails with an answer (an invalid request, an overload after retries...) shows as an
``errored`` row and is not stored: the batch run will try that request itself. A failure of
every call (no credentials, a base URL that does not answer, a refused key) is raised.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pyarrow as pa
import xxhash
from datasets import Dataset, DatasetDict

from dsbatch._backend import Backend, NoCredentials, Unreachable
from dsbatch._collect import Outputs, attach
from dsbatch._collect import _messages as stored_messages
from dsbatch._compat import iter_rows, take_rows
from dsbatch._cost import PriceBook, Pricer
from dsbatch._errors import BatchAPIError
from dsbatch._files import arrow_bytes
from dsbatch._ingest import parse_results
from dsbatch._join import output_table
from dsbatch._ledger import Ledger
from dsbatch._map import find_origin, prepare
from dsbatch._map import map as map_fn
from dsbatch._options import MapOptions
from dsbatch._plan import stand_in_results, survey
from dsbatch._policy import attempts, latest_results, open_requests
from dsbatch._retry import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_fixed,
)
from dsbatch._store import PREVIEW_PREFIX

__all__ = ["preview"]

log = logging.getLogger("dsbatch")

_SINGLE = "data"
_WORKERS = 8  # calls at once
_TIMEOUT = 600.0  # seconds for one answer (a long one at a slow model's pace)
_ATTEMPTS = 4  # per call, for failures the server answered (rate limit, overload, 5xx)
# Failures no other row would escape: raised, not shown as an errored row.
_FATAL_STATUS = frozenset({401, 403})


def _map_defaults() -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(map_fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def preview(
    dataset: Dataset | DatasetDict,
    prompt: Callable[..., Any],
    n: int = 5,
    *,
    seed: int | None = None,
    **map_keywords: Any,
) -> Dataset | DatasetDict:
    """Run the first ``n`` rows (or, with ``seed``, ``n`` rows drawn at random) through the
    Messages API (standard price, answers in seconds) and return them with exactly the columns
    ``dsbatch.map`` gives (``map_keywords`` are ``map``'s: ``model``, ``system``,
    ``response_format``, ``parse``, ``client``...). A ``DatasetDict`` gives a ``DatasetDict``
    of the rows drawn from each split.

    The requests are the batch job's own, byte for byte: their answers are stored in the cache,
    and a ``dsbatch.map`` call with the same arguments reuses them instead of buying them again.
    Rows the prompt skips are passed over, as are rows whose request a batch has in flight.
    """
    if not isinstance(dataset, (Dataset, DatasetDict)):
        raise TypeError(
            f"dsbatch.preview takes a datasets.Dataset or DatasetDict, not {type(dataset).__name__}"
        )
    if not callable(prompt):
        raise TypeError(f"prompt must be a function of the row, not {type(prompt).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of rows, not {n!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int (or None for the first rows), not {seed!r}")
    defaults = _map_defaults()
    unknown = sorted(set(map_keywords) - set(defaults))
    if unknown:
        raise TypeError(
            f"preview() got an unexpected keyword argument {unknown[0]!r} (it takes "
            "dsbatch.map's keywords)"
        )
    given = {**defaults, **map_keywords}
    if given["model"] is inspect.Parameter.empty:
        raise TypeError("preview() missing required keyword argument: 'model' (as for map)")
    client = given["client"]
    options = MapOptions.build(**{k: v for k, v in given.items() if k in _option_names()})
    if options.samples != 1 or options.dry_run:
        # A preview shows one answer per row, bought now: run map for samples or a dry run.
        what = "samples" if options.samples != 1 else "dry_run"
        raise ValueError(
            f"preview() takes no {what}: it buys one answer per row now, at standard price. "
            f"Preview with the default, then pass {what} to dsbatch.map"
        )
    labelled = isinstance(dataset, DatasetDict)
    splits = dict(dataset) if labelled else {_SINGLE: dataset}
    labels = {split: split if labelled else None for split in splits}
    backend = Backend(client, clock=options.clock.now)
    prepared = prepare(splits, prompt, options, backend, labels)
    rendered = prepared.rendered
    ledger = Ledger(options.cache_dir)
    if not rendered.bodies:
        chosen: dict[str, list[int]] = {split: [] for split in splits}
        return _output(splits, chosen, rendered.row_custom_ids, ledger, "", {}, options, labels, {})
    origin = find_origin(backend, ledger, options)
    needed = pa.array(list(rendered.bodies), pa.string())
    started = time.perf_counter()
    with ledger.locked():
        # Decided and bought under the cache lock: no batch takes these requests meanwhile.
        view = survey(ledger, "", needed, origin)
        chosen = _choose(rendered.row_custom_ids, view.waiting_ids, n, seed)
        # In row order: the first row of a shared prefix is the one that writes its cache.
        ids = list(
            dict.fromkeys(
                rendered.row_custom_ids[s][r] or "" for s, rows in chosen.items() for r in rows
            )
        )
        to_buy = open_requests(
            pa.array(ids, pa.string()),
            view.results,
            in_flight=view.waiting_array,
            max_attempts=options.max_attempts,
            resend_canceled=options.resend_canceled,
        ).to_pylist()
        failures = _buy(
            backend, ledger, origin, _waves(to_buy, prepared.groups), rendered.bodies, options
        )
    log.info(
        "dsbatch: preview of %d rows: %d requests bought through the Messages API (standard "
        "price) in %.1f s, %d answered from the cache; dsbatch.map with the same arguments "
        "reuses these answers",
        sum(len(rows) for rows in chosen.values()),
        len(to_buy),
        time.perf_counter() - started,
        len(ids) - len(to_buy),
    )
    return _output(
        splits,
        chosen,
        rendered.row_custom_ids,
        ledger,
        origin,
        failures,
        options,
        labels,
        rendered.bodies,
    )


def _option_names() -> set[str]:
    return {f.name for f in dataclasses.fields(MapOptions) if f.init}


def _choose(
    row_ids: Mapping[str, list[str | None]], flying: set[str], n: int, seed: int | None
) -> dict[str, list[int]]:
    """split -> the rows to preview: the first ``n`` (or ``n`` drawn with ``seed``) that make a
    request no batch has in flight."""
    candidates = [
        (split, row)
        for split, ids in row_ids.items()
        for row, custom_id in enumerate(ids)
        if custom_id is not None and custom_id not in flying
    ]
    picked = (
        candidates[:n]
        if seed is None
        else sorted(
            random.Random(seed).sample(candidates, min(n, len(candidates))),
            key=lambda c: (list(row_ids).index(c[0]), c[1]),
        )
    )
    chosen: dict[str, list[int]] = {split: [] for split in row_ids}
    for split, row in picked:
        chosen[split].append(row)
    return chosen


def _waves(custom_ids: list[str], groups: Mapping[str, int]) -> list[list[str]]:
    """The calls in the order they go: the first request of each shared prompt prefix alone
    (it writes the prompt cache), then every other at once (they read it)."""
    firsts: dict[int, str] = {}
    for custom_id in custom_ids:
        if custom_id in groups:
            firsts.setdefault(groups[custom_id], custom_id)
    first = list(firsts.values())
    rest = [c for c in custom_ids if c not in set(first)]
    return [wave for wave in (first, rest) if wave]


def _buy(
    backend: Backend,
    ledger: Ledger,
    origin: str,
    waves: list[list[str]],
    bodies: Mapping[str, bytes],
    options: MapOptions,
) -> dict[str, BatchAPIError]:
    """Buy these requests through the Messages API, wave after wave, and store the answers
    (origin first); returns custom_id -> why it got no answer. A failure no call would escape
    is raised once the others' answers are stored."""
    schedule = options.schedule
    fixed = schedule.factor == 1.0  # a fixed poll_interval retries that often, as every call
    retrying = Retrying(
        stop=stop_after_attempt(_ATTEMPTS),
        wait=wait_fixed(schedule.initial) if fixed else wait_exponential(1.0, 16.0),
        retry=retry_if_exception(_worth_retrying),
        sleep=options.clock.sleep,
        clock=options.clock.now,
    )

    def buy(custom_id: str) -> dict[str, Any]:
        return retrying.call(backend.message, bodies[custom_id], options.betas, timeout=_TIMEOUT)

    answers: dict[str, dict[str, Any]] = {}
    failures: dict[str, BatchAPIError] = {}
    fatal: BatchAPIError | None = None
    try:
        for wave in waves:
            with ThreadPoolExecutor(max_workers=min(_WORKERS, len(wave))) as pool:
                for custom_id, outcome in zip(
                    wave, pool.map(partial(_outcome, buy), wave), strict=True
                ):
                    if isinstance(outcome, BatchAPIError):
                        failures[custom_id] = outcome
                        if fatal is None and _is_fatal(outcome):
                            fatal = outcome
                    else:
                        answers[custom_id] = outcome
    finally:
        if answers:
            _store(ledger, origin, answers)
    if fatal is not None:
        stored = f" (the {len(answers)} answers that came are stored)" if answers else ""
        raise BatchAPIError(f"dsbatch.preview: {fatal}{stored}", status_code=fatal.status_code)
    return failures


def _outcome(
    buy: Callable[[str], dict[str, Any]], custom_id: str
) -> dict[str, Any] | BatchAPIError:
    try:
        return buy(custom_id)
    except BatchAPIError as e:
        return e


def _worth_retrying(error: BaseException) -> bool:
    """Failures the server answered (nothing was bought) and connections never made; not a
    call whose answer may have been lost after the request went out (it may be billed)."""
    if isinstance(error, Unreachable):
        return True
    status = getattr(error, "status_code", None)
    return (
        isinstance(error, BatchAPIError)
        and status is not None
        and (status in (408, 429) or status >= 500)
    )


def _is_fatal(error: BatchAPIError) -> bool:
    return isinstance(error, (NoCredentials, Unreachable)) or error.status_code in _FATAL_STATUS


def _store(ledger: Ledger, origin: str, answers: Mapping[str, dict[str, Any]]) -> None:
    """The answers as result lines under a preview's batch id, its origin recorded first."""
    now = time.time()
    ids = sorted(answers)
    tag = xxhash.xxh3_64_hexdigest(f"{time.time_ns()}|{os.getpid()}|{','.join(ids)}".encode())
    batch_id = PREVIEW_PREFIX + tag
    lines = b"".join(
        json.dumps(
            {"custom_id": c, "result": {"type": "succeeded", "message": answers[c]}},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        + b"\n"
        for c in ids
    )
    ledger.store.remember_preview(batch_id, origin, now, len(ids))
    ledger.store.write(batch_id, parse_results(lines, batch_id=batch_id, batch_created_at=now))


def _output(
    splits: Mapping[str, Dataset],
    chosen: Mapping[str, list[int]],
    row_ids: Mapping[str, list[str | None]],
    ledger: Ledger,
    origin: str,
    failures: Mapping[str, BatchAPIError],
    options: MapOptions,
    labels: Mapping[str, str | None],
    bodies: Mapping[str, bytes],
) -> Dataset | DatasetDict:
    """The previewed rows with the columns ``map`` adds, from the cache's results (and the
    failed calls' errors); ``bodies`` tell each answer's model, for its cost."""
    picked = {split: take_rows(splits[split], rows) for split, rows in chosen.items()}
    ids = {
        split: pa.array([row_ids[split][r] for r in rows], pa.string())
        for split, rows in chosen.items()
    }
    needed = pa.array(sorted({c for a in ids.values() for c in a.to_pylist() if c}), pa.string())
    results = survey(ledger, "", needed, origin).results if len(needed) else None
    if results is None:
        results = stand_in_results(pa.array([], pa.string()), kind="errored")
    if failures:
        failed = [
            stand_in_results(
                pa.array([custom_id]),
                kind="errored",
                error_type=_error_type(error),
                error_message=str(error),
                created_at=time.time(),
            )
            for custom_id, error in failures.items()
        ]
        results = pa.concat_tables([results, *failed])
    latest = latest_results(results)
    sent = attempts(results)
    pricer = Pricer(ledger.store, bodies, PriceBook(options.prices), default_model=options.model)
    costs = pricer.per_request(latest)
    outputs = Outputs({}, {})
    for split, table in picked.items():
        outputs.tables[split] = output_table(
            ids[split],
            latest,
            sent,
            options.output,
            rows=partial(iter_rows, table),
            messages=partial(stored_messages, ledger),
            cost=costs,
        )
        # What datasets caches a later .map on the preview by: the answers themselves.
        outputs.digests[split] = xxhash.xxh3_64_hexdigest(
            memoryview(arrow_bytes(outputs.tables[split]))
        )
    out = attach(
        picked,
        outputs,
        status_column=options.status_column,
        on_error=options.on_error,
        output_key=None,
        labels=labels,
    )
    if set(out) == {_SINGLE} and labels.get(_SINGLE) is None:
        return out[_SINGLE]
    return DatasetDict(out)


def _error_type(error: BatchAPIError) -> str:
    if error.status_code in (400, 413, 422):
        return "invalid_request_error"
    if error.status_code == 429:
        return "rate_limit_error"
    if error.status_code == 529:
        return "overloaded_error"
    return "api_error"
