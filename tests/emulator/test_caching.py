"""Prompt caching, modelled: breakpoints write prefixes, later requests read them within the TTL
(emulator clock), per workspace, from the model's minimum cacheable length; every usage figure
and ``count_tokens`` follow one counting rule (a block is ceil(characters / 4) tokens)."""

from __future__ import annotations

from typing import Any

import pytest

from dsbatch.testing import Emulator

HAIKU = "claude-haiku-4-5"  # minimum cacheable prefix: 4,096 tokens
LONG = "x" * 20_000  # 5,000 tokens
SHORT = "y" * 16_000  # 4,000 tokens: under Haiku 4.5's minimum


def _system(text: str = LONG, ttl: str | None = "1h") -> list[dict[str, Any]]:
    control: dict[str, Any] = {"type": "ephemeral"}
    if ttl is not None:
        control["ttl"] = ttl
    return [{"type": "text", "text": text, "cache_control": control}]


def _params(question: str, model: str = HAIKU, **extra: Any) -> dict[str, Any]:
    params = {
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": question}],
        "system": _system(),
    }
    params.update(extra)
    return params


def _usage(emu: Emulator, items: list[dict[str, Any]], client: Any = None) -> dict[str, Any]:
    """custom_id -> (input, cache creation, cache read, 5m writes, 1h writes) of a new batch."""
    client = client or emu.client()
    batch = client.messages.batches.create(requests=items)
    out = {}
    for line in emu.results_of(batch.id):
        usage = line["result"]["message"]["usage"]
        out[line["custom_id"]] = (
            usage["input_tokens"],
            usage["cache_creation_input_tokens"],
            usage["cache_read_input_tokens"],
            usage["cache_creation"]["ephemeral_5m_input_tokens"],
            usage["cache_creation"]["ephemeral_1h_input_tokens"],
        )
    return out


def _items(*params: dict[str, Any], prefix: str = "q") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i}", "params": p} for i, p in enumerate(params)]


def test_in_a_batch_the_first_request_writes_the_prefix_and_the_later_ones_read_it(
    emu: Emulator,
) -> None:
    usage = _usage(emu, _items(*(_params(f"Q{i}") for i in range(4))))
    # "Qn" is one token; the system block 5,000
    assert usage == {
        "q0": (1, 5000, 0, 0, 5000),
        "q1": (1, 0, 5000, 0, 0),
        "q2": (1, 0, 5000, 0, 0),
        "q3": (1, 0, 5000, 0, 0),
    }


@pytest.mark.parametrize(("ttl", "seconds"), [(None, 300), ("5m", 300), ("1h", 3600)])
def test_a_cached_prefix_lives_for_its_ttl_on_the_emulator_clock(
    ttl: str | None, seconds: int
) -> None:
    with Emulator() as emu:
        first = _usage(emu, _items(_params("A", system=_system(ttl=ttl))))
        bucket = (5000, 0) if seconds == 300 else (0, 5000)  # (5m, 1h) writes
        assert first["q0"] == (1, 5000, 0, *bucket)
        emu.advance(seconds - 1)
        assert _usage(emu, _items(_params("B", system=_system(ttl=ttl))))["q0"] == (
            1,
            0,
            5000,
            0,
            0,
        )
        # the read refreshed it: alive again for a whole TTL from then
        emu.advance(seconds - 1)
        assert _usage(emu, _items(_params("C", system=_system(ttl=ttl))))["q0"][2] == 5000
        emu.advance(seconds + 1)
        assert _usage(emu, _items(_params("D", system=_system(ttl=ttl))))["q0"] == (
            1,
            5000,
            0,
            *bucket,
        )


def test_a_prefix_under_the_models_minimum_is_not_cached_and_is_no_error(emu: Emulator) -> None:
    short = [_params(f"Q{i}", system=_system(SHORT)) for i in range(2)]
    assert _usage(emu, _items(*short)) == {
        "q0": (4001, 0, 0, 0, 0),
        "q1": (4001, 0, 0, 0, 0),
    }
    # Sonnet 4.5 caches from 1,024 tokens: the same prompt caches there
    sonnet = [_params(f"Q{i}", model="claude-sonnet-4-5", system=_system(SHORT)) for i in range(2)]
    assert _usage(emu, _items(*sonnet, prefix="s")) == {
        "s0": (1, 4000, 0, 0, 4000),
        "s1": (1, 0, 4000, 0, 0),
    }


def test_caches_are_per_workspace_and_per_model() -> None:
    with Emulator(workspaces={"key-b": "lab"}) as emu:
        assert _usage(emu, _items(_params("A")))["q0"][1] == 5000
        assert _usage(emu, _items(_params("A")))["q0"][2] == 5000
        lab = emu.client(api_key="key-b")
        assert _usage(emu, _items(_params("A")), client=lab)["q0"][1:3] == (5000, 0)
        opus = _params("A", model="claude-opus-4-5")
        assert _usage(emu, _items(opus))["q0"][1:3] == (5000, 0)


def test_one_row_can_read_one_prefix_and_write_a_longer_one(emu: Emulator) -> None:
    def with_document(name: str) -> dict[str, Any]:
        document = {
            "type": "text",
            "text": name * 8000,  # 2,000 tokens
            "cache_control": {"type": "ephemeral"},
        }
        question = {"type": "text", "text": "Summarize it."}
        return _params("", messages=[{"role": "user", "content": [document, question]}])

    first = _usage(emu, _items(with_document("a")))["q0"]
    second = _usage(emu, _items(with_document("b")))["q0"]
    # the system prompt (1h) then the document (5m): both written, then the system read
    assert first == (4, 7000, 0, 2000, 5000)
    assert second == (4, 2000, 5000, 2000, 0)


def test_automatic_caching_writes_each_rows_own_prompt_and_reads_only_a_repeat(
    emu: Emulator,
) -> None:
    def automatic(question: str) -> dict[str, Any]:
        return _params(
            question, system=[{"type": "text", "text": LONG}], cache_control={"type": "ephemeral"}
        )

    rows = _usage(emu, _items(automatic("Q0"), automatic("Q1")))
    assert rows == {"q0": (0, 5001, 0, 5001, 0), "q1": (0, 5001, 0, 5001, 0)}
    again = _usage(emu, _items(automatic("Q1")))
    assert again == {"q0": (0, 0, 5001, 0, 0)}


def test_a_breakpoint_finds_a_prefix_cached_within_the_20_blocks_before_it(
    emu: Emulator,
) -> None:
    primer = _params("Q0")
    later = _params(
        "Q1", system=[{"type": "text", "text": LONG}], cache_control={"type": "ephemeral"}
    )
    usage = _usage(emu, _items(primer, later))
    assert usage["q1"] == (0, 1, 5000, 1, 0)


def test_count_tokens_is_the_whole_input_that_usage_reports(emu: Emulator) -> None:
    client = emu.client()
    params = [_params(f"Question {i}?" * (i + 1)) for i in range(3)]
    usage = _usage(emu, _items(*params))
    for i, p in enumerate(params):
        counted = client.messages.count_tokens(
            model=p["model"], system=p["system"], messages=p["messages"]
        ).input_tokens
        assert counted == sum(usage[f"q{i}"][:3])
    assert usage["q2"][0] == len("Question 2?" * 3) // 4 + 1


def test_the_messages_api_shares_the_cache_of_the_workspace(emu: Emulator) -> None:
    client = emu.client()
    _usage(emu, _items(_params("Q0")))
    live = client.messages.create(**_params("Q1"))
    assert (live.usage.cache_read_input_tokens, live.usage.cache_creation_input_tokens) == (5000, 0)
    assert live.usage.input_tokens == 1


def test_the_cost_of_400_rows_sharing_a_6000_token_prefix_falls_by_more_than_80_percent(
    emu: Emulator,
) -> None:
    """Input cost in units of an input token's price: 1h writes at 2x, reads at 0.1x."""
    system = _system("z" * 24_000)  # 6,000 tokens
    rows = [_params(f"Row {i}: what is it?", system=system) for i in range(400)]
    primer = _usage(emu, _items(rows[0], prefix="p"))
    rest = _usage(emu, _items(*rows[1:]))
    cached = sum(
        inputs + 2.0 * creation + 0.1 * read
        for inputs, creation, read, *_ in (*primer.values(), *rest.values())
    )
    uncached = sum(inputs + creation + read for inputs, creation, read, *_ in rest.values())
    uncached += sum(primer["p0"][:3])
    assert sum(u[2] for u in rest.values()) == 399 * 6000
    assert cached < 0.2 * uncached
