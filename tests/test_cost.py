"""Issue 14: what a run will cost before paying (``dry_run=True``), a cap (``budget_usd``), and
what it did cost (``Job.status().cost_usd``, the status column's ``cost_usd``, the progress bar).

Figures follow the emulator's counting rule (a block is ceil(characters / 4) tokens) and
Haiku 4.5's prices (standard $1 input, $5 output, $1.25 / $2 cache writes 5m / 1h, $0.10 cache
read per million tokens; every term halved in a batch)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math

import pyarrow as pa
import pytest
from datasets import Dataset
from support import MODEL, cache_root, echo, ids_of, request_for, run, sent

import dsbatch
from dsbatch import _cost
from dsbatch._cost import PriceBook, Pricer, answer_cost
from dsbatch._ledger import RESULT_SCHEMA, Ledger
from dsbatch._models import model_facts
from dsbatch.testing import Emulator, Faults, HttpFault

HALF = 0.5 / 1e6  # the batch discount, per token of a price given per million


def texts(n: int, start: int = 0) -> list[str]:
    """Rows of 20 characters each: 5 tokens, and request bodies all of one size."""
    return [f"row {i:04d} of the plan" for i in range(start, start + n)]


def dry(ds, emu, **kwargs):
    return run(ds, emu, dry_run=True, **kwargs)


def start(ds, emu, **kwargs):
    """A job started without waiting for it (its batches stay in flight)."""
    return dsbatch.map(
        ds, lambda r: r["text"], model=MODEL, max_tokens=256, client=emu.client(),
        poll_interval=0, progress=False, wait=False, **kwargs,
    )  # fmt: skip


def body_bytes(text: str, **params) -> int:
    request = request_for(text)["params"] | params
    return len(json.dumps(request, sort_keys=True, separators=(",", ":")).encode())


# -- dry runs -------------------------------------------------------------------------------------


def test_a_dry_run_of_a_known_job_gives_exact_figures_and_sends_nothing(emu):
    plan = dry(Dataset.from_dict({"text": texts(30)}), emu)
    assert isinstance(plan, dsbatch.Plan)
    assert (plan.rows, plan.requests, plan.cached, plan.in_flight, plan.batches) == (
        30,
        30,
        0,
        0,
        1,
    )
    # 20 requests counted (5 tokens each), the 10 others extrapolated by their bytes (equal).
    assert plan.input_tokens == 150
    assert plan.token_count == "count_tokens on 20 sampled requests, extrapolated by bytes"
    assert plan.output_tokens_max == 30 * 256
    assert plan.cost_usd_max == pytest.approx(30 * (5 * 1 + 256 * 5) * HALF)  # $0.019275
    assert plan.cost_usd_expected == pytest.approx(30 * (5 * 1 + 64 * 5) * HALF)  # a quarter
    assert plan.expected_basis.startswith("25% of max_tokens assumed")
    assert plan.models == (MODEL,)
    # Nothing sent, nothing recorded: only the free token counts were asked.
    assert emu.calls["create"] == 0 and emu.calls["count_tokens"] == 20
    assert not (cache_root() / "jobs").exists()
    shown = repr(plan)
    assert "30 rows, 30 distinct requests: 30 to send in 1 batch" in shown
    assert "input tokens: 150 (count_tokens on 20 sampled requests" in shown
    assert "at most $0.0193 (every answer reaching max_tokens), expected $0.0049" in shown


def test_a_dry_run_extrapolates_by_bytes_from_the_first_twenty_requests_by_custom_id(emu):
    rows = [f"row {i}: " + "word " * (i % 7) for i in range(50)]  # bodies of many sizes
    plan = dry(Dataset.from_dict({"text": rows}), emu)
    sample = set(sorted(ids_of(rows))[:20])
    tokens = {c: math.ceil(len(r) / 4) for c, r in zip(ids_of(rows), rows, strict=True)}
    size = {c: body_bytes(r) for c, r in zip(ids_of(rows), rows, strict=True)}
    per_byte = sum(tokens[c] for c in sample) / sum(size[c] for c in sample)
    rest = sum(size[c] for c in size if c not in sample) * per_byte
    assert plan.input_tokens == round(sum(tokens[c] for c in sample) + rest)
    assert plan.input_tokens != sum(tokens.values())  # an estimate, not a count of every request


def test_a_small_job_is_counted_exactly_and_count_tokens_gets_only_the_keys_it_takes(emu):
    # metadata, stop_sequences and max_tokens would each make count_tokens answer 400.
    params = {"metadata": {"user_id": "u-1"}, "stop_sequences": ["END"]}
    plan = dry(Dataset.from_dict({"text": ["a", "bb cc dd", "x" * 41]}), emu, params=params)
    assert plan.token_count == "count_tokens on all 3 requests"
    assert plan.input_tokens == 1 + 2 + 11
    assert emu.calls["count_tokens"] == 3


def test_offline_the_plan_estimates_three_bytes_per_token_and_says_why():
    ds = Dataset.from_dict({"text": texts(4)})
    # No key anywhere: the dry run still plans (the API origin is known from its URL).
    plan = dsbatch.map(ds, lambda r: r["text"], model=MODEL, max_tokens=256, dry_run=True)
    assert plan.token_count.startswith(
        "offline estimate, 3 bytes per token (count_tokens could not be used: no Anthropic "
        "credentials"
    )
    assert plan.input_tokens == round(4 * body_bytes(texts(1)[0]) / 3)
    assert plan.requests == 4 and plan.cost_usd_max is not None


def test_when_count_tokens_fails_the_plan_falls_back_to_the_offline_estimate():
    faults = Faults(http=[HttpFault("count_tokens", 500, times=1)])
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        plan = dry(Dataset.from_dict({"text": texts(3)}), emu, retries=0)
        assert plan.token_count.startswith("offline estimate, 3 bytes per token")
        assert "HTTP 500" in plan.token_count
        assert emu.calls["count_tokens"] == 1 and emu.calls["create"] == 0


def test_a_dry_run_sees_what_the_cache_holds_and_what_is_in_flight():
    with Emulator(delay=600, responder=echo) as emu:
        rows = texts(30)
        run(Dataset.from_dict({"text": rows[:10]}), emu, wait=600)  # 10 answered
        job = start(Dataset.from_dict({"text": rows[10:15]}), emu)  # 5 in flight
        assert isinstance(job, dsbatch.Job)
        creates = emu.calls["create"]
        plan = dry(Dataset.from_dict({"text": rows}), emu)
        assert (plan.requests, plan.cached, plan.in_flight) == (15, 10, 5)
        assert emu.calls["create"] == creates
    # "echo: row 0000 of the plan" is 7 tokens of 256: the 10 answers used 70 of 2,560.
    ratio = 70 / 2560
    assert plan.expected_basis == (
        f"{ratio:.0%} of max_tokens, as the 10 answers of this job in the cache used"
    )
    assert plan.cost_usd_expected == pytest.approx(15 * (5 + round(ratio * 256) * 5) * HALF)
    assert plan.cost_usd_max == pytest.approx(15 * (5 + 256 * 5) * HALF)


def test_a_cache_breakpoint_prices_the_maximum_as_cache_writes(emu):
    system = [{"type": "text", "text": "s" * 400, "cache_control": {"type": "ephemeral"}}]
    plan = dry(Dataset.from_dict({"text": texts(2)}), emu, system=system)
    one_hour = [{**system[0], "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    plan_1h = dry(Dataset.from_dict({"text": texts(2)}), emu, system=one_hour)
    assert plan.input_tokens == plan_1h.input_tokens == 2 * (100 + 5)
    assert plan.cost_usd_max == pytest.approx(2 * (105 * 1.25 + 256 * 5) * HALF)
    assert plan_1h.cost_usd_max == pytest.approx(2 * (105 * 2 + 256 * 5) * HALF)
    assert plan.cost_usd_expected == pytest.approx(2 * (105 * 1 + 64 * 5) * HALF)


def test_the_expected_cost_writes_a_shared_cached_prefix_once_and_reads_it_after(emu):
    # A 5,000-token system prompt with a 1-hour breakpoint, over Haiku 4.5's 4,096 minimum.
    system = [
        {"type": "text", "text": "b" * 20_000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    plan = dry(Dataset.from_dict({"text": texts(10)}), emu, system=system)
    assert plan.input_tokens == 10 * 5005
    first = 5 + 5000 * 2 + 64 * 5  # writes the prefix at the 1-hour price
    others = 5 + 5000 * 0.10 + 64 * 5  # read it
    assert plan.cost_usd_expected == pytest.approx((first + 9 * others) * HALF)
    assert plan.expected_basis.endswith(
        "each cached prefix written by the first request that has it and read by the others"
    )
    assert plan.cost_usd_max == pytest.approx(10 * (5005 * 2 + 256 * 5) * HALF)


# -- budgets --------------------------------------------------------------------------------------


def test_a_budget_under_the_maximum_refuses_before_any_create_naming_both_figures(emu):
    ds = Dataset.from_dict({"text": texts(30)})
    with pytest.raises(dsbatch.BudgetExceededError) as raised:
        run(ds, emu, budget_usd=0.01)
    error = raised.value
    assert error.budget_usd == 0.01
    assert error.cost_usd_max == pytest.approx(0.019275)
    assert error.plan.requests == 30
    message = str(error)
    assert "the 30 requests still to send may cost up to $0.0193" in message
    assert "over budget_usd=$0.01. Nothing was sent" in message
    assert emu.calls["create"] == 0 and not emu.received
    assert not (cache_root() / "jobs").exists()
    # A budget under a cent is shown as given, never rounded to "$0.00".
    with pytest.raises(dsbatch.BudgetExceededError, match=r"over budget_usd=\$0\.0049\. Nothing"):
        run(ds, emu, budget_usd=0.0049)


def test_a_budget_above_the_maximum_sends_and_counts_only_what_is_still_to_send(emu):
    rows = texts(30)
    out = run(Dataset.from_dict({"text": rows}), emu, budget_usd=0.02)
    assert len(out) == 30 and sent(emu) == dict.fromkeys(ids_of(rows), 1)
    # Half of it is answered: the rest's maximum fits a budget the whole would not.
    more = texts(30, start=15)
    run(Dataset.from_dict({"text": more}), emu, budget_usd=0.01)
    assert sent(emu) == dict.fromkeys(ids_of([*rows, *more[15:]]), 1)


def test_a_budget_cannot_be_checked_without_a_price_and_nothing_is_sent(emu, caplog):
    with pytest.raises(dsbatch.BudgetExceededError, match="no price is known for model"):
        run(Dataset.from_dict({"text": texts(2)}), emu, model="claude-mythos-5", budget_usd=5)
    assert emu.calls["create"] == 0


@pytest.mark.parametrize(
    ("budget", "error"),
    [(-1, ValueError), (float("nan"), ValueError), ("10", TypeError), (True, TypeError)],
)
def test_a_bad_budget_is_refused_naming_the_keyword(emu, budget, error):
    with pytest.raises(error, match="budget_usd must be"):
        run(Dataset.from_dict({"text": texts(2)}), emu, budget_usd=budget)


# -- actual cost ----------------------------------------------------------------------------------


def test_the_cost_of_a_job_in_its_status_its_rows_and_its_progress_bar(emu, capsys):
    rows = texts(20)
    ds = Dataset.from_dict({"text": [*rows, rows[0]]})  # the last row repeats the first
    out = run(ds, emu, progress=True)
    statuses = out["dsbatch"]
    # Each answer: 5 tokens in, "echo: row 0000 of the plan" (7 tokens) out.
    each = (5 * 1 + 7 * 5) * HALF
    assert [s["cost_usd"] for s in statuses] == pytest.approx([each] * 21)
    job = dsbatch.Job.load(dsbatch.jobs()[0].fingerprint, client=emu.client())
    status = job.status()
    assert status.cost_usd == pytest.approx(20 * each)  # distinct requests: paid once each
    assert f"cost ${20 * each:,.4f}" in str(status)
    assert f"cost=${20 * each:,.4f}" in capsys.readouterr().err


def test_skipped_rows_have_no_cost_and_failed_requests_cost_nothing():
    with Emulator(delay=0, responder=echo, faults=Faults(invalid=0.5)) as emu:
        rows = texts(20)
        out = run(
            Dataset.from_dict({"text": rows}),
            emu,
            fn=lambda r: None if r["text"] == rows[0] else r["text"],
        )
    by_status: dict[str, list] = {}
    for s in out["dsbatch"]:
        by_status.setdefault(s["status"], []).append(s["cost_usd"])
    assert set(by_status) == {"skipped", "errored", "succeeded"}
    assert set(by_status["skipped"]) == {None}
    assert set(by_status["errored"]) == {0.0}
    answered = by_status["succeeded"]
    assert answered == pytest.approx([(5 + 7 * 5) * HALF] * len(answered))


def test_cache_writes_and_reads_are_priced_by_their_ttl(emu):
    # A 5,000-token system prompt over Haiku 4.5's 4,096 minimum: the first request of each
    # batch writes it, the others read it.
    system_5m = [{"type": "text", "text": "a" * 20_000, "cache_control": {"type": "ephemeral"}}]
    system_1h = [
        {"type": "text", "text": "b" * 20_000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    for system, write_price in ((system_5m, 1.25), (system_1h, 2.0)):
        out = run(Dataset.from_dict({"text": texts(4)}), emu, system=system)
        statuses = out["dsbatch"]
        writes = [s for s in statuses if s["cache_creation_input_tokens"]]
        reads = [s for s in statuses if s["cache_read_input_tokens"]]
        assert [s["cache_creation_input_tokens"] for s in writes] == [5000]
        assert [s["cache_read_input_tokens"] for s in reads] == [5000] * 3
        assert {s["input_tokens"] for s in statuses} == {5}
        assert writes[0]["cost_usd"] == pytest.approx((5 + 5000 * write_price + 7 * 5) * HALF)
        for s in reads:
            assert s["cost_usd"] == pytest.approx((5 + 5000 * 0.10 + 7 * 5) * HALF)
        job = dsbatch.jobs(client=emu.client())[0]
        assert job.status().cost_usd == pytest.approx(sum(s["cost_usd"] for s in statuses))


def test_cache_writes_without_a_ttl_split_are_priced_at_the_5_minute_price():
    def responder(custom_id, params):
        usage = {
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_creation_input_tokens": 1000,
            "cache_read_input_tokens": 0,
        }
        message = {
            "id": "msg_" + custom_id[-12:],
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        return {"type": "succeeded", "message": message}

    with Emulator(delay=0, responder=responder) as emu:
        out = run(Dataset.from_dict({"text": ["a"]}), emu)
    assert out["dsbatch"][0]["cost_usd"] == pytest.approx((10 + 1000 * 1.25 + 20 * 5) * HALF)


def test_a_model_without_a_price_has_no_cost_and_one_warning_per_process(emu, caplog, monkeypatch):
    monkeypatch.setattr(_cost, "_WARNED", set())  # this process may have warned already
    caplog.set_level(logging.WARNING, logger="dsbatch")
    model = "claude-mythos-5-1"  # in the table, without a published price
    out = run(Dataset.from_dict({"text": texts(3)}), emu, model=model)
    assert {s["cost_usd"] for s in out["dsbatch"]} == {None}
    job = dsbatch.jobs(client=emu.client())[0]
    assert job.status().cost_usd is None and "cost unknown" in str(job.status())
    warned = [r for r in caplog.records if "no price is known for model" in r.getMessage()]
    assert len(warned) == 1 and model in warned[0].getMessage()


def test_user_prices_override_the_table_and_price_unknown_models(emu, tmp_path, monkeypatch):
    prices = {"claude-mythos-5": {"input": 3, "output": 15}}
    out = run(Dataset.from_dict({"text": texts(2)}), emu, model="claude-mythos-5", prices=prices)
    assert out["dsbatch"][0]["cost_usd"] == pytest.approx((5 * 3 + 7 * 15) * HALF)
    # A file named by DSBATCH_PRICES, for a model matched whatever its date suffix.
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"claude-haiku-4-5-20251001": {"input": 10, "output": 100}}))
    monkeypatch.setenv("DSBATCH_PRICES", str(path))
    out = run(Dataset.from_dict({"text": texts(2)}), emu)
    assert out["dsbatch"][0]["cost_usd"] == pytest.approx((5 * 10 + 7 * 100) * HALF)
    # prices= wins over the file; the finished columns follow a change of prices.
    mine = {"claude-haiku-4-5": {"input": 1, "output": 1}}
    out = run(Dataset.from_dict({"text": texts(2)}), emu, prices=mine)
    assert out["dsbatch"][0]["cost_usd"] == pytest.approx((5 + 7) * HALF)
    assert emu.calls["create"] == 2  # repricing is free


@pytest.mark.parametrize(
    ("prices", "error", "match"),
    [
        ([1, 2], TypeError, "prices must map model names to prices"),
        ({"m": {"input": 1}}, ValueError, r"prices\['m'\] has no output"),
        ({"m": {"input": 1, "output": 2, "outptu": 3}}, ValueError, "unknown keys"),
        ({"m": {"input": -1, "output": 2}}, ValueError, "finite number >= 0"),
    ],
)
def test_bad_prices_are_refused_naming_what_is_wrong(emu, prices, error, match):
    with pytest.raises(error, match=match):
        run(Dataset.from_dict({"text": texts(1)}), emu, prices=prices)


def test_a_bad_prices_file_is_refused_naming_the_variable(emu, tmp_path, monkeypatch):
    path = tmp_path / "prices.json"
    path.write_text("{not json")
    monkeypatch.setenv("DSBATCH_PRICES", str(path))
    with pytest.raises(ValueError, match=f"DSBATCH_PRICES={path}: cannot read it as JSON"):
        run(Dataset.from_dict({"text": texts(1)}), emu)
    assert emu.calls["create"] == 0


# -- the formula ----------------------------------------------------------------------------------


def test_an_answer_costs_half_of_every_standard_price_it_used():
    haiku = model_facts("claude-haiku-4-5").prices_on()  # type: ignore[union-attr]
    cost = answer_cost(
        haiku, input_tokens=1000, output_tokens=200, cache_read=3000, write_5m=400, write_1h=500
    )
    standard = 1000 * 1 + 200 * 5 + 3000 * 0.10 + 400 * 1.25 + 500 * 2
    assert cost == pytest.approx(standard * HALF)


def test_haiku_5_5_prices_a_long_prompt_at_its_higher_band_output_included():
    prices = model_facts("claude-haiku-5-5").prices_on()  # type: ignore[union-attr]
    short = answer_cost(prices, input_tokens=60_000, output_tokens=1000, cache_read=40_000)
    long = answer_cost(prices, input_tokens=60_001, output_tokens=1000, cache_read=40_000)
    assert short == pytest.approx((60_000 * 0.10 + 1000 * 0.50 + 40_000 * 0.01) * HALF)
    assert long == pytest.approx((60_001 * 0.50 + 1000 * 2.50 + 40_000 * 0.05) * HALF)


@pytest.mark.parametrize("models_known", [False, True])
def test_answers_are_priced_on_the_day_their_batch_was_made(tmp_path, models_known):
    # models_known: the requests file gave every request's model (one model: priced a column
    # at a time), else each body is read.
    # Sonnet 5.5's cache reads went from $0.20 to $0.10 per million on 2026-10-07.
    def at(day: dt.date) -> float:
        return dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.timezone.utc).timestamp()

    rows = [
        {"custom_id": c, "type": "succeeded", "input_tokens": 0, "output_tokens": 0,
         "cache_read_input_tokens": 1_000_000, "cache_creation_input_tokens": 0,
         "batch_id": b, "batch_created_at": at(day)}
        for c, b, day in (("a", "b1", dt.date(2026, 10, 6)), ("b", "b2", dt.date(2026, 10, 7)))
    ]  # fmt: skip
    schema = RESULT_SCHEMA.remove(RESULT_SCHEMA.get_field_index("raw"))
    table = pa.Table.from_pylist(rows, schema=schema)
    body = json.dumps({"model": "claude-sonnet-5-5"}).encode()
    models = {"a": "claude-sonnet-5-5", "b": "claude-sonnet-5-5"} if models_known else None
    pricer = Pricer(Ledger(tmp_path).store, {"a": body, "b": body}, PriceBook(), models=models)
    assert pricer.per_request(table).to_pylist() == [pytest.approx(0.10), pytest.approx(0.05)]
    assert pricer.total(table) == pytest.approx(0.15)


@pytest.mark.parametrize("one_model", [True, False])
def test_each_answer_costs_exactly_what_answer_cost_says_row_by_row(tmp_path, one_model):
    # Pricing works a column at a time; every figure must equal the one-answer formula to the
    # last bit: two models (one without a price), two batch days, a prompt past Haiku 5.5's
    # band, a preview at standard price, cache writes, and results that are not billed.
    day = dt.datetime(2026, 11, 2, 12, tzinfo=dt.timezone.utc).timestamp()
    haiku = json.dumps({"model": "claude-haiku-5-5"}).encode()
    other = haiku if one_model else json.dumps({"model": "claude-mystery-1"}).encode()
    rows, bodies = [], {}
    for i in range(40):
        custom_id = f"c{i}"
        bodies[custom_id] = other if i % 5 == 4 else haiku
        rows.append({
            "custom_id": custom_id,
            "type": "expired" if i == 21 else "errored" if i % 5 == 3 else "succeeded",
            "error_type": "batch_lost" if i == 13 else None,
            "input_tokens": 7 * i + (100_001 if i % 7 == 0 else 3),
            "output_tokens": 11 * i + 1,
            "cache_read_input_tokens": 13 * i if i % 3 else None,
            "cache_creation_input_tokens": 0,
            "batch_id": "preview_x" if i % 6 == 0 else f"msgbatch_{i % 2}",
            "batch_created_at": day + 86_400 * (i % 2),
        })  # fmt: skip
    schema = RESULT_SCHEMA.remove(RESULT_SCHEMA.get_field_index("raw"))
    table = pa.Table.from_pylist(rows, schema=schema)
    models = {c: "claude-haiku-5-5" for c in bodies} if one_model else None  # as a job has
    pricer = Pricer(Ledger(tmp_path).store, bodies, PriceBook(), default_model=MODEL, models=models)
    book = PriceBook()
    expected = []
    for row in rows:
        model = json.loads(bodies[row["custom_id"]])["model"]
        prices = book.prices(model, dt.date(2026, 11, 2 + (row["batch_created_at"] > day)))
        if row["type"] != "succeeded":
            expected.append(None if row["error_type"] == "batch_lost" else 0.0)
        elif prices is None:
            expected.append(None)
        else:
            expected.append(
                answer_cost(
                    prices,
                    input_tokens=row["input_tokens"],
                    output_tokens=row["output_tokens"],
                    cache_read=row["cache_read_input_tokens"] or 0,
                    discount=1.0 if row["batch_id"] == "preview_x" else 0.5,
                )
            )
    assert pricer.per_request(table).to_pylist() == expected  # exact, not approximately
    assert sum(e is None for e in expected) == (1 if one_model else 9)
    answered = table.filter(pa.compute.equal(table["type"], "succeeded"))
    priced = [e for e, r in zip(expected, rows) if r["type"] == "succeeded"]
    total = pricer.total(answered)
    assert total == (None if None in priced else math.fsum(priced))


def test_a_jobs_models_are_read_as_columns_and_looked_up_only_with_two_models(tmp_path):
    # One model (the usual job): priced without a Python string per request; two: each request
    # priced at its own model's prices.
    body = json.dumps({"model": "claude-haiku-4-5"}).encode()
    for models, expected in ((["claude-haiku-4-5"] * 3, 3), (["claude-haiku-4-5", "m2", "m2"], 1)):
        job = Ledger(tmp_path / str(expected)).job("f" * 32)
        job.write_requests((f"c{i}", body, m) for i, m in enumerate(models))
        kept = job.request_models()
        assert dict(kept) == {f"c{i}": m for i, m in enumerate(models)}
        assert kept.distinct() == set(models)
        fresh = job.request_models()
        pricer = Pricer(Ledger(tmp_path).store, {}, PriceBook(), models=fresh)
        rows = [
            {"custom_id": f"c{i}", "type": "succeeded", "input_tokens": 1_000_000,
             "output_tokens": 0, "batch_id": "b", "batch_created_at": 1.8e9}
            for i in range(3)
        ]  # fmt: skip
        schema = RESULT_SCHEMA.remove(RESULT_SCHEMA.get_field_index("raw"))
        costs = pricer.per_request(pa.Table.from_pylist(rows, schema=schema)).to_pylist()
        assert sum(c is not None for c in costs) == expected  # m2 has no price
        assert (fresh._lookup is None) == (expected == 3)
