"""Training data out of a batch: the reasoning of answers that think (a thinking column read from
the cached raw answers), and each row's conversation in the chat format fine-tuning reads."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from datasets import Dataset, load_from_disk
from pydantic import BaseModel
from support import MODEL, answers, job_dirs, run, sent

import dsbatch
from dsbatch import PromptError
from dsbatch._conversation import conversation_turns
from dsbatch._reasoning import REDACTED, any_thinks, thinking_texts
from dsbatch._render import canonical_json
from dsbatch.testing import Emulator, Faults

THINK = {"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 1024}}
TEXTS = ["Why is the sky blue?", "Why is grass green?", "Why is snow white?"]


class Verdict(BaseModel):
    answer: str
    sure: bool


def thought_about(text: str) -> str:
    """How the emulator's reasoning about a question starts."""
    return f"The user asks about: {text}\nI consider "


def is_conversational(example: dict) -> bool:
    """TRL's own test (trl.data_utils.is_conversational): a supported key holding a list whose
    first item is a dict with "role" and "content"."""
    messages = example.get("messages")
    return (
        isinstance(messages, list)
        and isinstance(messages[0], dict)
        and {"role", "content"} <= messages[0].keys()
    )


# -- thinking ------------------------------------------------------------------------------------


def test_the_reasoning_of_answers_that_think_lands_in_a_thinking_column(emu):
    ds = Dataset.from_dict({"text": TEXTS})
    out = run(ds, emu, params=THINK)
    assert out.column_names == ["text", "response", "thinking", "dsbatch"]
    for text, thought, answer in zip(TEXTS, out["thinking"], out["response"], strict=True):
        assert thought.startswith(thought_about(text)) and thought.endswith("before answering.")
        assert answer == f"echo: {text}"  # the thinking stays out of the answer
    # Thinking tokens are output tokens: more than the answer's own.
    assert all(
        s["output_tokens"] > len(a) // 4 + 20 for s, a in zip(out["dsbatch"], out["response"])
    )


def test_a_job_that_does_not_think_has_no_thinking_column_and_a_mixed_one_has_nulls(emu):
    ds = Dataset.from_dict({"text": TEXTS})
    assert run(ds, emu).column_names == ["text", "response", "dsbatch"]

    def some_think(row, idx):
        return {"messages": [{"role": "user", "content": row["text"]}], **(THINK if idx else {})}

    mixed = run(ds, emu, some_think, with_indices=True)
    assert mixed["thinking"][0] is None
    assert [t.startswith(thought_about(x)) for t, x in zip(mixed["thinking"][1:], TEXTS[1:])] == [
        True,
        True,
    ]


def test_redacted_thinking_is_marked_and_omitted_thinking_is_empty():
    ds = Dataset.from_dict({"text": TEXTS})
    with Emulator(delay=0, faults=Faults(redacted_thinking=1.0)) as emu:
        assert run(ds, emu, params=THINK)["thinking"] == [REDACTED] * 3
    with Emulator(delay=0) as emu:
        # Opus 4.7 omits the text of its thinking unless asked for a summary.
        adaptive = {"thinking": {"type": "adaptive"}, "model": "claude-opus-4-7"}
        assert run(ds, emu, params=adaptive)["thinking"] == ["", "", ""]
        summarized = {"thinking": {"type": "adaptive", "display": "summarized"}}
        out = run(ds, emu, params={**adaptive, **summarized})
        assert all(t.startswith(thought_about(x)) for t, x in zip(out["thinking"], TEXTS))
        # A model that always thinks does so unasked: its rows get the column too.
        assert run(ds, emu, params={"model": "claude-opus-5-5"})["thinking"] == ["", "", ""]


def test_thinking_works_with_native_structured_outputs_and_samples():
    ds = Dataset.from_dict({"text": TEXTS})
    with Emulator(delay=0) as emu:
        out = run(ds, emu, params=THINK, response_format=Verdict, samples=2)
    assert out.column_names == ["text", "response", "answer", "sure", "thinking", "dsbatch"]
    assert [[s["status"] for s in row] for row in out["dsbatch"]] == [["succeeded"] * 2] * 3
    for text, thoughts in zip(TEXTS, out["thinking"], strict=True):
        assert len(thoughts) == 2 and all(t.startswith(thought_about(text)) for t in thoughts)
    assert all(json.loads(r[0])["answer"] == a[0] for r, a in zip(out["response"], out["answer"]))


def test_choosing_or_renaming_the_thinking_column_never_pays_again(emu):
    ds = Dataset.from_dict({"text": TEXTS})
    first = run(ds, emu, params=THINK)
    emu.reset_stats()
    renamed = run(ds, emu, params=THINK, thinking_column="reasoning")
    off = run(ds, emu, params=THINK, thinking_column=None)
    assert sum(sent(emu).values()) == 0 and emu.calls["create"] == 0
    assert renamed["reasoning"] == first["thinking"]
    assert off.column_names == ["text", "response", "dsbatch"]


def test_a_thinking_column_that_would_overwrite_one_is_refused_before_sending(emu):
    ds = Dataset.from_dict({"text": TEXTS, "thinking": ["x", "y", "z"]})
    with pytest.raises(ValueError, match="already has a column 'thinking', which the answers'"):
        run(ds, emu, params=THINK)
    assert emu.calls["create"] == 0
    assert run(ds, emu)["thinking"] == ["x", "y", "z"]  # no thinking: nothing to overwrite
    assert run(ds, emu, params=THINK, thinking_column="reasoning")["thinking"] == ["x", "y", "z"]


def test_a_thinking_column_named_like_another_new_column_matters_only_when_the_job_thinks(emu):
    ds = Dataset.from_dict({"text": TEXTS})
    assert run(ds, emu, output_column="thinking")["thinking"] == answers(TEXTS)
    with pytest.raises(ValueError, match="output_column and thinking_column are both 'thinking'"):
        run(ds, emu, params=THINK, output_column="thinking")
    assert sum(sent(emu).values()) == 3  # the thinking job sent nothing
    out = run(ds, emu, params=THINK, output_column="thinking", thinking_column="reasoning")
    assert out.column_names == ["text", "thinking", "reasoning", "dsbatch"]


def test_thinking_texts_join_blocks_mark_redaction_and_read_odd_lines():
    def line(*content, custom_id="a"):
        message = {"content": list(content), "usage": {"output_tokens": 5}}
        return json.dumps(
            {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}
        )

    think = {"type": "thinking", "thinking": "first", "signature": "s"}
    lines = [
        line(think, {"type": "text", "text": "ok"}, {"type": "thinking", "thinking": "then"}),
        line({"type": "redacted_thinking", "data": "xyz"}, {"type": "text", "text": "ok"}),
        line({"type": "text", "text": 'I was thinking" about it'}),
        line({"type": "thinking", "thinking": "", "signature": "s"}),
    ]
    expected = ["first\n\nthen", REDACTED, None, ""]
    assert thinking_texts(pa.array(lines, pa.large_string())).to_pylist() == expected
    odd = line({"type": "thinking", "thinking": 5}, think)  # not a string: read line by line
    assert thinking_texts(pa.array([odd, *lines])).to_pylist() == ["first", *expected]


def test_which_requests_think():
    def body(**params):
        return canonical_json({"model": MODEL, "max_tokens": 9, "messages": [], **params})

    assert not any_thinks([body(), body(thinking={"type": "disabled"})])
    assert any_thinks([body(), body(thinking={"type": "adaptive"})])
    assert any_thinks([body()] * 5000 + [body(model="claude-fable-5-1")])
    # A tool schema with a "thinking" property is no thinking request.
    tool = {"name": "t", "input_schema": {"properties": {"thinking": {"type": "string"}}}}
    assert not any_thinks([body(tools=[tool])])


# -- conversations -------------------------------------------------------------------------------


def test_each_row_gets_its_conversation_with_and_without_a_system_prompt(emu):
    ds = Dataset.from_dict({"text": TEXTS})
    out = run(ds, emu, conversation_column="messages")
    assert out["messages"] == [
        [{"role": "user", "content": t}, {"role": "assistant", "content": a}]
        for t, a in zip(TEXTS, answers(TEXTS), strict=True)
    ]
    system = run(ds, emu, system="Answer in one line.", conversation_column="messages")
    assert system["messages"][0] == [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": TEXTS[0]},
        {"role": "assistant", "content": answers(TEXTS)[0]},
    ]
    blocks = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]
    assert run(ds, emu, system=blocks, conversation_column="messages")["messages"][1][0] == {
        "role": "system",
        "content": "Be brief.\n\nBe kind.",
    }


def test_multi_turn_prompts_keep_their_turns_and_a_prefill_is_continued(emu):
    def turns(row):
        return [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi! Ask away."}]},
            {"role": "user", "content": [{"type": "text", "text": row["text"]}]},
        ]

    ds = Dataset.from_dict({"text": TEXTS})
    out = run(ds, emu, turns, conversation_column="chat", params=THINK)
    assert out["chat"][1] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! Ask away."},
        {"role": "user", "content": TEXTS[1]},
        {"role": "assistant", "content": answers(TEXTS)[1]},
    ]
    assert out["thinking"][1].startswith(thought_about(TEXTS[1]))  # not in the conversation

    def prefilled(row):
        return [*turns(row), {"role": "assistant", "content": "Because"}]

    out = run(ds, emu, prefilled, conversation_column="chat")
    assert out["chat"][0] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! Ask away."},
        {"role": "user", "content": TEXTS[0]},
        {"role": "assistant", "content": "Because" + out["response"][0]},
    ]


def test_tool_calls_become_json_text_and_thinking_blocks_are_left_out():
    params = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should look.", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "18 C, clear"}],
                    }
                ],
            },
        ]
    }
    assert conversation_turns(params) == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": '{"city": "Paris"}'},
        {"role": "user", "content": "18 C, clear"},
    ]


def test_a_row_without_an_answer_has_no_conversation():
    texts = [f"question {i}" for i in range(10)]
    ds = Dataset.from_dict({"text": texts})
    with Emulator(delay=0, faults=Faults(invalid=0.4)) as emu:
        out = run(ds, emu, conversation_column="messages")
    ok = [s["status"] == "succeeded" for s in out["dsbatch"]]
    assert 0 < sum(ok) < 10
    assert [m is not None for m in out["messages"]] == ok


def test_a_parse_error_has_no_conversation():
    ds = Dataset.from_dict({"text": TEXTS})
    with Emulator(delay=0, faults=Faults(no_json=1.0)) as emu:
        out = run(ds, emu, response_format=Verdict, conversation_column="messages")
    assert [s["status"] for s in out["dsbatch"]] == ["parse_error"] * 3
    assert out["messages"] == [None] * 3 and all(out["response"])


def test_an_image_in_the_prompt_is_refused_before_anything_is_sent(emu):
    from PIL import Image

    image = Image.new("RGB", (4, 4), "red")
    ds = Dataset.from_dict({"text": TEXTS})

    def with_image(row):
        return [{"role": "user", "content": [image, {"type": "text", "text": row["text"]}]}]

    with pytest.raises(PromptError, match=r"row 0: message 0 \(user\) holds a 'image' block") as e:
        run(ds, emu, with_image, conversation_column="messages")
    assert "pass conversation_column=None" in str(e.value)
    assert emu.calls["create"] == 0
    assert run(ds, emu, with_image)["response"] == answers(TEXTS)  # without it, it is sent


def test_a_conversation_column_saved_and_loaded_is_what_trl_reads(emu, tmp_path):
    ds = Dataset.from_dict({"text": TEXTS})
    out = run(
        ds, emu, system="Be brief.", samples=2, samples_as="rows", conversation_column="messages"
    )
    out.save_to_disk(str(tmp_path / "sft"))
    loaded = load_from_disk(str(tmp_path / "sft"))
    assert loaded.features["messages"] == out.features["messages"]
    assert len(loaded) == 6
    for example in loaded:
        assert is_conversational(example)
        messages = example["messages"]
        assert all(type(m) is dict and set(m) == {"role", "content"} for m in messages)
        assert all(type(m["content"]) is str for m in messages)
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert loaded[3]["messages"][-1]["content"] == answers(TEXTS)[1]
    # The columns TRL's SFTTrainer needs alone: the conversation.
    sft = loaded.select_columns(["messages"])
    assert sft.column_names == ["messages"] and is_conversational(sft[0])


def test_a_conversation_column_that_would_overwrite_one_is_refused(emu):
    ds = Dataset.from_dict({"text": TEXTS, "messages": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="already has a column 'messages', which the conv"):
        run(ds, emu, conversation_column="messages")
    assert emu.calls["create"] == 0


def test_the_conversation_column_is_an_output_option_never_paid_again(emu):
    ds = Dataset.from_dict({"text": TEXTS})
    plain = run(ds, emu)
    emu.reset_stats()
    chat = run(ds, emu, conversation_column="messages")
    assert sum(sent(emu).values()) == 0 and len(job_dirs()) == 1
    assert chat["response"] == plain["response"]
    job = dsbatch.Job.load(job_dirs()[0].name, client=emu.client(), poll_interval=0)
    assert job.result()["messages"] == chat["messages"]
