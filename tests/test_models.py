"""The model table: ids resolve to one model whatever their date suffix, and the facts that
decide what is refused and what a job costs are the documented ones."""

from __future__ import annotations

import datetime as dt

import pytest

from dsbatch._models import OUTPUT_300K_BETA, model_facts, parse_model


@pytest.mark.parametrize(
    "model",
    [
        "claude-haiku-4-5",
        "claude-haiku-4-5-20251001",
        "claude-haiku-4-5@20251001",
        "CLAUDE-HAIKU-4-5",
    ],
)
def test_a_model_id_resolves_whatever_its_date_suffix(model):
    facts = model_facts(model)
    assert facts is not None and facts.name == "Claude Haiku 4.5"
    assert facts.max_output == 64_000 and facts.context == 200_000


def test_sampling_is_accepted_only_up_to_the_4_6_models_and_never_by_a_newer_unknown_one():
    accepts = {m: model_facts(m).accepts_sampling for m in [  # type: ignore[union-attr]
        "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-6", "claude-opus-4-7",
        "claude-sonnet-5", "claude-haiku-5-5", "claude-fable-5-1", "claude-mythos-5",
        "claude-sonnet-6", "claude-nova-5",
    ]}  # fmt: skip
    assert [m for m, ok in accepts.items() if ok] == [
        "claude-haiku-4-5",
        "claude-sonnet-4-6",
        "claude-opus-4-6",
    ]
    newer = model_facts("claude-sonnet-6")
    assert newer is not None and not newer.known and newer.max_output is None
    assert newer.prices_on() is None


def test_models_older_than_the_table_or_not_claude_are_unknown():
    assert model_facts("claude-sonnet-4") is None
    assert model_facts("claude-3-5-sonnet-20241022") is None
    assert model_facts("gpt-4o") is None
    assert parse_model("claude-opus-4-1-20250805") == ("opus", (4, 1))


def test_thinking_forms_and_output_limits():
    haiku, opus47, fable51 = (
        model_facts(m) for m in ("claude-haiku-4-5", "claude-opus-4-7", "claude-fable-5-1")
    )
    assert haiku and opus47 and fable51
    assert haiku.thinking_forms == {"enabled"} and opus47.thinking_forms == {"adaptive"}
    assert fable51.always_thinking and not opus47.always_thinking
    assert opus47.output_limit() == 128_000
    assert opus47.output_limit([OUTPUT_300K_BETA]) == 300_000
    assert haiku.output_limit([OUTPUT_300K_BETA]) == 64_000


def test_prices_follow_their_effective_dates():
    sonnet55 = model_facts("claude-sonnet-5-5")
    assert sonnet55 is not None
    assert sonnet55.prices_on(dt.date(2026, 10, 6)).cache_read == 0.20  # type: ignore[union-attr]
    assert sonnet55.prices_on(dt.date(2026, 10, 7)).cache_read == 0.10  # type: ignore[union-attr]
    haiku55 = model_facts("claude-haiku-5-5").prices_on()  # type: ignore[union-attr]
    assert haiku55 is not None and haiku55.band_tokens == 100_000
    assert (haiku55.input, haiku55.above.input, haiku55.above.output) == (0.10, 0.50, 2.50)  # type: ignore[union-attr]
    haiku45 = model_facts("claude-haiku-4-5").prices_on()  # type: ignore[union-attr]
    assert (haiku45.input, haiku45.cache_write_5m, haiku45.cache_write_1h) == (1, 1.25, 2)  # type: ignore[union-attr]
    assert model_facts("claude-mythos-5").prices_on() is None  # type: ignore[union-attr]
