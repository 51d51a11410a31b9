"""Prompt caching of shared prefixes (prompt_caching="auto"): where the breakpoints go, that the
custom_ids follow the bytes sent, that one request per prefix goes first (also in a job resumed
elsewhere, and when it fails), and what it saves on the emulator."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter

import pytest
from datasets import Dataset
from support import MODEL, echo, run, sent, text_of, virtual

import dsbatch
from dsbatch import _models, _prefix
from dsbatch._prefix import (
    CACHE_CONTROL,
    SMALLEST_MINIMUM,
    TemplateMarks,
    estimate_tokens,
    plan_prefix_caching,
)
from dsbatch._render import Rendered, RequestShape, canonical_json, custom_id_for, render_split
from dsbatch.testing import Emulator

SYSTEM = ("You label customer messages. Follow the rubric exactly. " * 440)[:24_000]
MARK = {"type": "ephemeral", "ttl": "1h"}


def render(texts, prompt=None, *, caching=True, **defaults):
    """The requests of these rows as map renders them: (rendered, prefix groups)."""
    defaults = {"model": MODEL, "max_tokens": 256, **defaults}
    marks = TemplateMarks() if caching else None
    rendered = Rendered()
    render_split(
        rendered,
        "data",
        Dataset.from_dict({"text": texts}),
        prompt or (lambda row: row["text"]),
        shape=RequestShape(defaults, mark=marks),
        with_indices=False,
        label=None,
    )
    plan = plan_prefix_caching(rendered, marks=marks) if caching else None
    groups = plan.apply(rendered) if plan else {}
    # Whatever was placed, every body is canonical JSON and its custom_id that of its bytes.
    assert all(c == custom_id_for(body) for c, body in rendered.bodies.items())
    assert all(canonical_json(json.loads(body)) == body for body in rendered.bodies.values())
    assert {c for ids in rendered.row_custom_ids.values() for c in ids} <= set(rendered.bodies)
    return rendered, groups


def bodies(rendered):
    """The params of each row's request, in row order."""
    return [json.loads(rendered.bodies[c]) for c in rendered.row_custom_ids["data"]]


def marks(params):
    """Where a request carries cache_control: "tools[i]", "system[i]", "messages[m][i]"."""
    found = [f"tools[{i}]" for i, t in enumerate(params.get("tools", [])) if "cache_control" in t]
    system = params.get("system")
    if isinstance(system, list):
        found += [f"system[{i}]" for i, b in enumerate(system) if "cache_control" in b]
    for m, message in enumerate(params["messages"]):
        if isinstance(message["content"], list):
            found += [
                f"messages[{m}][{i}]"
                for i, b in enumerate(message["content"])
                if "cache_control" in b
            ]
    return found


def texts(n, prefix="message number"):
    return [f"{prefix} {i}" for i in range(n)]


# -- where the breakpoints go -------------------------------------------------------------------


def test_a_long_shared_system_prompt_gets_one_1h_breakpoint_at_its_end():
    rendered, groups = render(texts(10), system=SYSTEM)
    assert CACHE_CONTROL == MARK
    for params, text in zip(bodies(rendered), texts(10)):
        assert params["system"] == [{"type": "text", "text": SYSTEM, "cache_control": MARK}]
        assert params["messages"] == [{"role": "user", "content": text}]
        assert marks(params) == ["system[0]"]
    # The custom_ids are those of the bytes sent, and every row maps to its own request.
    for custom_id, body in rendered.bodies.items():
        assert custom_id == custom_id_for(body)
        assert body.count(b'"cache_control"') == 1
    assert len(set(rendered.row_custom_ids["data"])) == 10
    assert groups == dict.fromkeys(rendered.row_custom_ids["data"], 0)
    assert sorted(rendered.first_row.values()) == [(None, i) for i in range(10)]


def test_prompt_caching_off_sends_the_bytes_the_prompt_made():
    plain, groups = render(texts(10), caching=False, system=SYSTEM)
    assert groups == {}
    assert all(b'"cache_control"' not in body for body in plain.bodies.values())
    assert bodies(plain)[0]["system"] == SYSTEM


@pytest.mark.parametrize(
    ("model", "chars", "cached"),
    [
        ("claude-haiku-4-5", 12_000, False),  # 3,000 tokens, under Haiku 4.5's 4,096
        ("claude-sonnet-4-5", 12_000, True),  # Sonnet 4.5 caches from 1,024
        ("claude-sonnet-4-6", 12_000, True),  # 2,048
        ("claude-sonnet-4-6", 8_188, False),  # 2,047
        ("claude-haiku-4-5", 16_384, True),  # exactly 4,096
        ("claude-haiku-4-5", 16_380, False),  # 4,095
        ("my-own-model", 16_000, False),  # unknown: the largest known minimum, 4,096
        ("my-own-model", 16_384, True),
    ],
)
def test_the_minimum_cacheable_length_follows_the_model(model, chars, cached):
    rendered, groups = render(texts(5), model=model, system="s" * chars)
    assert [marks(p) for p in bodies(rendered)] == [["system[0]"] if cached else []] * 5
    assert len(groups) == (5 if cached else 0)


def test_a_prefix_shared_by_two_requests_is_not_cached_three_are():
    # A 1-hour write costs 2x: two requests would pay 2.1x for the prefix instead of 2x. The
    # text template was rendered with its breakpoint already: those rows are rendered again.
    for rows in (texts(2), ["same", "same", "other"]):  # two distinct requests each
        rendered, groups = render(rows, system=SYSTEM)
        plain, _ = render(rows, caching=False, system=SYSTEM)
        assert groups == {}
        assert rendered.row_custom_ids == plain.row_custom_ids
        assert rendered.bodies == plain.bodies
    rendered, groups = render(texts(3), system=SYSTEM)
    assert len(groups) == 3 and all(marks(p) == ["system[0]"] for p in bodies(rendered))


def test_a_prompt_that_sets_cache_control_itself_is_left_alone():
    def prompt(row):
        i = int(row["text"].split()[-1])
        messages = [{"role": "user", "content": row["text"]}]
        if i < 4:  # its own breakpoint (5 minutes)
            system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
            return {"system": system, "messages": messages}
        if i < 8:  # the top-level automatic caching
            return {"cache_control": {"type": "ephemeral"}, "messages": messages}
        return messages

    rendered, groups = render(texts(12), prompt, system=SYSTEM)
    plain, _ = render(texts(12), prompt, caching=False, system=SYSTEM)
    ids, plain_ids = rendered.row_custom_ids["data"], plain.row_custom_ids["data"]
    assert ids[:8] == plain_ids[:8]  # byte for byte what the prompt made
    assert [rendered.bodies[c] for c in ids[:8]] == [plain.bodies[c] for c in plain_ids[:8]]
    assert [marks(p) for p in bodies(rendered)[8:]] == [["system[0]"]] * 4
    assert set(groups) == set(ids[8:])


def test_each_task_type_gets_its_own_breakpoint_and_group():
    other = SYSTEM.replace("label", "summarize")

    def prompt(row):
        i = int(row["text"].split()[-1])
        return {
            "system": SYSTEM if i % 2 else other,
            "messages": [{"role": "user", "content": row["text"]}],
        }

    rendered, groups = render(texts(12), prompt)
    params = bodies(rendered)
    assert all(marks(p) == ["system[0]"] for p in params)
    ids = rendered.row_custom_ids["data"]
    assert {groups[c] for c in ids[0::2]} == {0} and {groups[c] for c in ids[1::2]} == {1}
    assert {p["system"][0]["text"] for p in params[0::2]} == {other}


def test_shared_few_shot_turns_get_the_breakpoint_on_the_last_shared_turn():
    def prompt(row):
        return [
            {"role": "user", "content": "Exemples — «é»:\n" + SYSTEM},
            {"role": "assistant", "content": "Understood."},
            {"role": "user", "content": row["text"]},
        ]

    rendered, groups = render(texts(5), prompt)
    for params, text in zip(bodies(rendered), texts(5)):
        assert marks(params) == ["messages[1][0]"]
        assert params["messages"][1]["content"] == [
            {"type": "text", "text": "Understood.", "cache_control": MARK}
        ]
        assert params["messages"][0]["content"] == "Exemples — «é»:\n" + SYSTEM  # unchanged
        assert params["messages"][2]["content"] == text
    assert set(groups.values()) == {0}


def tool(description):
    return {
        "name": "lookup",
        "description": description,
        "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
    }


def test_shared_tools_and_a_system_prompt_per_type_get_two_breakpoints():
    tools = [tool("Look a customer up. " * 1_000)]
    systems = ["Type A rubric. " * 600, "Type B rubric. " * 600]

    def prompt(row):
        i = int(row["text"].split()[-1])
        return {"tools": tools, "system": systems[i % 2], "messages": row["text"]}

    def as_made(row):
        answer = prompt(row)
        return {**answer, "messages": [{"role": "user", "content": answer["messages"]}]}

    rendered, groups = render(texts(8), as_made)
    assert [marks(p) for p in bodies(rendered)] == [["tools[0]", "system[0]"]] * 8
    ids = rendered.row_custom_ids["data"]
    assert [groups[c] for c in ids] == [0, 1] * 4


def nested(row):
    """Five nested levels, each shared by fewer requests (48, 24, 12, 6, 3), each long enough
    for Sonnet 4.5 (1,024 tokens)."""
    i = int(row["text"].split()[-1])
    levels = [f"level {k} part {i // size}. " * 300 for k, size in enumerate((48, 24, 12, 6, 3))]
    blocks = [{"type": "text", "text": t} for t in levels]
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": row["text"]}]}]


def test_a_block_whose_first_key_sorts_before_cache_control_keeps_canonical_order():
    looked_up = {**tool("Look a customer up. " * 1_000), "allowed_callers": ["direct"]}

    def prompt(row):
        return {"tools": [looked_up], "messages": [{"role": "user", "content": row["text"]}]}

    rendered, groups = render(texts(4), prompt)
    for params in bodies(rendered):
        assert params["tools"] == [{**looked_up, "cache_control": MARK}]
    assert len(groups) == 4


def test_never_more_than_four_breakpoints_the_deepest_are_kept():
    rendered, groups = render(texts(48), nested, model="claude-sonnet-4-5")
    for params in bodies(rendered):
        assert marks(params) == [f"messages[0][{k}]" for k in (1, 2, 3, 4)]
    assert len(set(groups.values())) == 16  # the deepest level: 48 / 3


def test_a_thinking_block_never_carries_a_breakpoint():
    thinking = {"type": "thinking", "thinking": "Let me think.", "signature": "c2lnbmF0dXJl"}

    def prompt(row):
        return [
            {"role": "user", "content": "Examples:\n" + SYSTEM},
            {"role": "assistant", "content": [thinking]},
            {"role": "user", "content": row["text"]},
        ]

    rendered, _ = render(texts(4), prompt, model="claude-sonnet-4-5")
    for params in bodies(rendered):
        assert marks(params) == ["messages[0][0]"]  # the last shared block that can carry one
        assert params["messages"][1]["content"] == [thinking]


def test_tokens_are_estimated_as_the_emulator_counts_them_images_count_nothing():
    assert estimate_tokens("abcdefghij") == 3
    assert estimate_tokens({"type": "text", "text": "a" * 4_000}) == 1_000
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "A" * 9_000},
    }
    assert estimate_tokens(image) == 0
    result = {"type": "tool_result", "tool_use_id": "t1", "content": [image]}
    assert estimate_tokens(result) == -(
        -(len(json.dumps(result, separators=(",", ":"))) - 9_000) // 4
    )
    described = tool("x" * 400)
    assert estimate_tokens(described) == -(-len(json.dumps(described, separators=(",", ":"))) // 4)


def test_bodies_too_short_for_any_model_are_never_parsed(monkeypatch):
    # Fewer than 4 x the smallest minimum bytes cannot hold a prefix worth a breakpoint.
    assert min(m.minimum_cacheable for m in _models._TABLE) == SMALLEST_MINIMUM
    parsed = []
    loads = json.loads
    monkeypatch.setattr(_prefix.json, "loads", lambda b: parsed.append(len(b)) or loads(b))

    def few_shot(size):
        return lambda r: [
            {"role": "user", "content": "x" * size},
            {"role": "assistant", "content": "Understood."},
            {"role": "user", "content": r["text"]},
        ]

    rendered = Rendered()
    render_split(
        rendered, "data", Dataset.from_dict({"text": texts(6)}), few_shot(3_900),
        shape=RequestShape({"model": "claude-sonnet-4-5", "max_tokens": 9}),
        with_indices=False, label=None,
    )  # fmt: skip
    assert all(len(b) < 4 * SMALLEST_MINIMUM for b in rendered.bodies.values())
    assert plan_prefix_caching(rendered) is None and parsed == []
    rendered, groups = render(texts(6), few_shot(4_200), model="claude-sonnet-4-5")
    assert len(groups) == 6 and len(parsed) == 12  # read by the plan, again to mark


def test_prompt_caching_takes_auto_or_off():
    ds = Dataset.from_dict({"text": ["a"]})
    with pytest.raises(ValueError, match="prompt_caching must be 'auto' or 'off', not 'on'"):
        dsbatch.map(ds, lambda r: r["text"], model=MODEL, prompt_caching="on")


# -- on the emulator: priming, and what it saves ------------------------------------------------


def batch_sizes(emu):
    """Requests per batch, in the order the batches were created."""
    counts = Counter(b for b, _ in emu.received)
    return [counts[b] for b in dict.fromkeys(b for b, _ in emu.received)]


def moment(value):
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def input_cost(status):
    """Input tokens priced as multiples of the input price: 1-hour writes 2x, reads 0.1x."""
    return sum(
        s["input_tokens"]
        + 2 * s["cache_creation_input_tokens"]
        + 0.1 * s["cache_read_input_tokens"]
        for s in status
    )


def run_system(ds, emu, **kwargs):
    return run(ds, emu, system=SYSTEM, wait=30, **kwargs)


def test_400_rows_sharing_a_6000_token_system_prompt_pay_over_80_percent_less_input(caplog):
    ds = Dataset.from_dict({"text": texts(400)})
    with Emulator(delay=300, responder=echo) as emu, caplog.at_level(logging.INFO, "dsbatch"):
        cached = run_system(ds, emu)
        assert batch_sizes(emu) == [1, 399]  # the primer, alone, then the rest
        emu.reset_stats()
        plain = run_system(ds, emu, prompt_caching="off")
        assert batch_sizes(emu) == [400]
    status = cached["dsbatch"]
    assert (status[0]["cache_creation_input_tokens"], status[0]["cache_read_input_tokens"]) == (
        6_000,
        0,
    )
    assert {
        (s["cache_creation_input_tokens"], s["cache_read_input_tokens"]) for s in status[1:]
    } == {(0, 6_000)}
    assert [s["input_tokens"] for s in status] == [
        s["input_tokens"] - 6_000 for s in plain["dsbatch"]
    ]
    assert cached["response"] == plain["response"] == [f"echo: {t}" for t in texts(400)]
    saved = 1 - input_cost(status) / input_cost(plain["dsbatch"])
    costs = f"{input_cost(status):,.0f} against {input_cost(plain['dsbatch']):,.0f}"
    print(f"input cost (tokens at the input price): cached {costs} uncached, {saved:.1%} less")
    assert saved >= 0.80
    assert not [r for r in caplog.records if "when called again" in r.getMessage()]


def test_cache_reads_and_writes_land_in_their_own_status_fields():
    tools = [tool("Look a customer up. " * 1_000)]
    systems = ["Type A rubric. " * 600, "Type B rubric. " * 600]

    def prompt(row):
        i = int(row["text"].split()[-1])
        return {
            "tools": tools,
            "system": systems[i % 2],
            "messages": [{"role": "user", "content": row["text"]}],
        }

    with Emulator(delay=60, responder=echo) as emu:
        out = run(Dataset.from_dict({"text": texts(8)}), emu, prompt, wait=30)
        assert batch_sizes(emu) == [2, 6]  # one primer per type, then the rest
    tool_tokens = -(-len(json.dumps(tools[0], separators=(",", ":"))) // 4)
    system_tokens = len(systems[1]) // 4
    first_b = out["dsbatch"][1]  # type B's primer: reads the tools type A wrote, writes its own
    assert first_b["cache_read_input_tokens"] == tool_tokens
    assert first_b["cache_creation_input_tokens"] == system_tokens
    assert tool_tokens != system_tokens and tool_tokens > 0 and system_tokens > 0
    assert out["dsbatch"][0]["cache_creation_input_tokens"] == tool_tokens + system_tokens
    for later in out["dsbatch"][2:]:
        assert later["cache_read_input_tokens"] == tool_tokens + system_tokens
        assert later["cache_creation_input_tokens"] == 0


def test_a_job_resumed_in_another_process_still_waits_for_its_primer():
    ds = Dataset.from_dict({"text": texts(20)})
    with Emulator(delay=600, responder=echo) as emu:
        client = emu.client()
        job = dsbatch.map(
            ds,
            lambda r: r["text"],
            model=MODEL,
            max_tokens=256,
            system=SYSTEM,
            client=client,
            poll_interval=virtual(emu, 60),
            progress=False,
            wait=False,
        )
        assert batch_sizes(emu) == [1]  # only the primer: the rest waits for it
        # Another process: nothing of the first call's memory, the same decision.
        again = dsbatch.Job.load(job.fingerprint, client=client, poll_interval=virtual(emu, 60))
        again.wait(timeout=0)
        assert batch_sizes(emu) == [1]
        # What the progress bar is fed: 19 held back are not "ended".
        standing = again._loop().step()
        assert (standing.sent, standing.waiting, standing.held, standing.ended) == (0, 1, 19, 0)
        assert not standing.done
        again.wait()
        assert batch_sizes(emu) == [1, 19]
        primer, rest = (emu.batches[b] for b in dict.fromkeys(b for b, _ in emu.received))
        assert moment(rest["created_at"]) >= moment(primer["ended_at"])
        out = again.result()
    assert out["response"] == [f"echo: {t}" for t in texts(20)]
    assert [s["cache_read_input_tokens"] for s in out["dsbatch"]] == [0] + [6_000] * 19


@pytest.mark.parametrize("failure", ["errored", "expired"])
def test_a_primer_that_fails_releases_its_group_once_its_batch_has_ended(failure):
    seen = Counter()

    def responder(custom_id, params):
        text = text_of(params["messages"][-1]["content"])
        seen[text] += 1
        if text == "message number 0" and seen[text] == 1:
            if failure == "expired":
                return {"type": "expired"}
            error = {"type": "overloaded_error", "message": "Overloaded"}
            return {"type": "errored", "error": {"type": "error", "error": error}}
        return echo(custom_id, params)

    with Emulator(delay=60, responder=responder) as emu:
        out = run_system(Dataset.from_dict({"text": texts(6)}), emu)
        # The failed primer goes again with the rest: no second primer round.
        assert batch_sizes(emu) == [1, 6]
    assert out["response"] == [f"echo: {t}" for t in texts(6)]
    assert [s["attempts"] for s in out["dsbatch"]] == [2, 1, 1, 1, 1, 1]


def test_requests_of_no_shared_prefix_do_not_wait_for_a_primer():
    def prompt(row):
        i = int(row["text"].split()[-1])
        messages = [{"role": "user", "content": row["text"]}]
        return {"system": SYSTEM, "messages": messages} if i < 6 else messages

    with Emulator(delay=600, responder=echo) as emu:
        run(Dataset.from_dict({"text": texts(10)}), emu, prompt, wait=60)
        assert batch_sizes(emu) == [1, 4, 5]
        primer, free, rest = (emu.batches[b] for b in dict.fromkeys(b for b, _ in emu.received))
        # The 4 without the prefix went while the primer was in flight; the 5 once it ended.
        assert moment(free["created_at"]) < moment(primer["ended_at"])
        assert moment(rest["created_at"]) >= moment(primer["ended_at"])


def test_four_breakpoints_of_five_nested_prefixes_go_through_the_apis_rules(emu):
    out = dsbatch.map(
        Dataset.from_dict({"text": texts(48)}),
        nested,
        model="claude-sonnet-4-5",
        max_tokens=256,
        client=emu.client(),
        poll_interval=0,
        progress=False,
    )
    assert {s["status"] for s in out["dsbatch"]} == {"succeeded"}
    assert batch_sizes(emu) == [16, 32]  # a primer per deepest prefix, then the rest
    status = out["dsbatch"]
    used = [(s["cache_read_input_tokens"], s["cache_creation_input_tokens"]) for s in status]
    # Level 0 (shared by all 48) got no breakpoint, the 5th: each half's first primer writes
    # everything; the other primers read what an earlier one wrote and write their own levels.
    assert [i for i, (read, _) in enumerate(used) if read == 0] == [0, 24]
    assert used[3] == (4_800, 1_200) and used[12] == (2_400, 3_600)
    for i, (read, written) in enumerate(used):
        if i % 3:
            assert (read, written) == (sum(used[i - i % 3]), 0)


def test_samples_share_their_requests_prefix_and_a_wave_limit_holds_the_rest():
    ds = Dataset.from_dict({"text": texts(10)})
    with Emulator(delay=60, responder=echo) as emu:
        out = run_system(ds, emu, samples=3, max_queued_requests=12)
        # The primer alone; once it ends, waves of at most 12 (each once the last one ended).
        assert batch_sizes(emu) == [1, 12, 12, 5]
        assert sum(sent(emu).values()) == 30 and max(sent(emu).values()) == 1
        status = out["dsbatch"]
        assert [len(s) for s in status] == [3] * 10
        firsts = [s for row in status for s in row if s["cache_creation_input_tokens"]]
        assert len(firsts) == 1 and firsts[0]["custom_id"] == status[0][0]["custom_id"]
        assert sum(s["cache_read_input_tokens"] == 6_000 for row in status for s in row) == 29
        assert {s["custom_id"][:36] for s in status[0]} == {status[0][0]["custom_id"]}
        assert [len(set(r)) for r in out["response"]] == [1] * 10  # echo: one text per row
        emu.reset_stats()
        again = run_system(ds, emu, samples=3, max_queued_requests=12)
        assert emu.calls["create"] == 0 and again["response"] == out["response"]
