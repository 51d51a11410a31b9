"""Results, in whatever order they arrive, land on the rows that asked for them."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest

from dsbatch._join import MissingResult, OutputSpec, output_slices, output_table
from dsbatch._ledger import RESULT_SCHEMA
from dsbatch._policy import latest_results


def result(custom_id, kind="succeeded", batch_id="b1", text=..., error_type=None, **extra):
    row = {
        "custom_id": custom_id,
        "type": kind,
        "error_type": error_type,
        "error_message": "boom" if error_type else None,
        "stop_reason": "end_turn" if kind == "succeeded" else None,
        "text": text
        if text is not ...
        else (f"answer {custom_id}" if kind == "succeeded" else None),
        "tool_input": None,
        "input_tokens": 3 if kind == "succeeded" else None,
        "output_tokens": 4 if kind == "succeeded" else None,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "batch_id": batch_id,
        "batch_created_at": 1.0,
        "problem": None,
        "raw": "{}",
    }
    row.update(extra)
    return row


def table(rows):
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA).drop_columns(["raw"])


def join(ids, rows, attempts=None, **spec):
    return output_table(pa.array(ids, pa.string()), table(rows), attempts or {}, OutputSpec(**spec))


def test_shuffled_results_land_on_the_right_rows():
    ids = [f"dsb_{i % 700}" for i in range(1000)]  # repeats, like duplicate prompts
    rows = [result(c) for c in sorted(set(ids))]
    random.Random(1).shuffle(rows)
    out = join(ids, rows, {c: 1 for c in ids}, output_column="answer")
    assert out["answer"].to_pylist() == [f"answer {c}" for c in ids]
    status = out["dsbatch"].to_pylist()
    assert [s["custom_id"] for s in status] == ids
    assert {s["status"] for s in status} == {"succeeded"}


def test_skipped_rows_and_failures_get_a_status_and_no_answer():
    rows = [
        result("a"),
        result("b", "errored", error_type="overloaded_error"),
        result("c", "expired"),
        result("d", "canceled"),
    ]
    out = join(
        ["a", None, "b", "c", "d"], rows, {"a": 1, "b": 3, "c": 2, "d": 1}, output_column="r"
    )
    status = out["dsbatch"].to_pylist()
    assert [s["status"] for s in status] == [
        "succeeded",
        "skipped",
        "errored",
        "expired",
        "canceled",
    ]
    assert out["r"].to_pylist() == ["answer a", None, None, None, None]
    assert status[2]["error"] == "overloaded_error: boom" and status[2]["attempts"] == 3
    assert "expired" in status[3]["error"] and "resend_canceled=True" in status[4]["error"]
    assert status[1]["attempts"] == 0 and status[1]["error"] is None


def test_a_success_anywhere_beats_a_later_failure_and_the_latest_failure_wins():
    rows = [
        result("x", "errored", batch_id="b2", error_type="api_error", batch_created_at=2.0),
        result("x", "succeeded", batch_id="other-job", batch_created_at=0.5),
        result("y", "errored", batch_id="b1", error_type="api_error", batch_created_at=1.0),
        result("y", "expired", batch_id="b2", batch_created_at=2.0),
    ]
    final = latest_results(table(rows))
    by_id = {r["custom_id"]: r for r in final.to_pylist()}
    assert by_id["x"]["type"] == "succeeded"
    assert by_id["y"]["type"] == "expired"
    assert final.num_rows == 2


def test_unreported_cache_counts_of_an_answer_read_as_zero():
    ok = {**result("a"), "cache_read_input_tokens": None, "cache_creation_input_tokens": None}
    failed = {
        **result("b", "expired"),
        "cache_read_input_tokens": None,
        "cache_creation_input_tokens": None,
    }
    a, b = join(["a", "b"], [ok, failed])["dsbatch"].to_pylist()
    assert (a["cache_read_input_tokens"], a["cache_creation_input_tokens"]) == (0, 0)
    assert (b["cache_read_input_tokens"], b["cache_creation_input_tokens"]) == (None, None)


def test_no_paid_answer_is_dropped():
    rows = [
        result("tool", text=None, tool_input='{"topic": "x"}', stop_reason="tool_use"),
        result("both", text="calling", tool_input="{}", stop_reason="tool_use"),
        result("thinking", text=None, stop_reason="max_tokens"),
        result("odd", text=None, problem="message.content is a str, not a list of blocks"),
    ]
    out = join(["tool", "both", "thinking", "odd"], rows)
    assert out["response"].to_pylist() == ['{"topic": "x"}', "calling", None, None]
    status = out["dsbatch"].to_pylist()
    assert [s["status"] for s in status] == ["succeeded", "succeeded", "succeeded", "parse_error"]
    assert status[2]["stop_reason"] == "max_tokens"
    assert status[3]["error"] == (
        "the result line could not be read: message.content is a str, not a list of blocks"
    )


def test_a_request_without_any_result_is_named():
    with pytest.raises(MissingResult, match="row 1: no result for custom_id b"):
        join(["a", "b"], [result("a")])


def test_parse_sees_the_row_and_the_whole_message_and_its_errors_mark_the_row():
    messages = {
        "a": {"content": [{"type": "text", "text": "7"}], "usage": {"output_tokens": 1}},
        "b": {"content": [{"type": "text", "text": "oops"}], "usage": {"output_tokens": 9}},
    }

    def parse(row, message):
        return {"n": int(message["content"][0]["text"]) * row["k"], "tokens": 1}

    out = output_table(
        pa.array(["a", "b", None], pa.string()),
        table([result("a"), result("b")]),
        {},
        OutputSpec(parse=parse),
        rows=lambda: iter([{"k": 2}, {"k": 3}, {"k": 4}]),
        messages=lambda answered: {c: messages[c] for c in answered["custom_id"].to_pylist()},
    )
    assert out.column_names == ["response", "n", "tokens", "dsbatch"]
    assert out["n"].to_pylist() == [14, None, None]
    status = out["dsbatch"].to_pylist()
    assert [s["status"] for s in status] == ["succeeded", "parse_error", "skipped"]
    assert status[1]["error"].startswith("parse raised ValueError: invalid literal")
    assert out["response"].to_pylist() == ["answer a", "answer b", None]  # raw text kept


def test_structured_answers_become_typed_columns_or_parse_errors():
    from pydantic import BaseModel

    class Label(BaseModel):
        topic: str
        confidence: float

    rows = [
        result("ok", text=json.dumps({"topic": "sport", "confidence": 0.5})),
        result("prose", text='Sure! {"topic": "art", "confidence": 1}'),
        result("bad", text="no json here"),
        result("cut", text='{"topic": "sp', stop_reason="max_tokens"),
        result("fail", "expired"),
    ]
    out = join(["ok", "prose", "bad", "cut", "fail"], rows, response_format=Label)
    assert out.column_names == ["response", "topic", "confidence", "dsbatch"]
    assert out.schema.field("confidence").type == pa.float64()
    assert out["topic"].to_pylist() == ["sport", "art", None, None, None]
    status = out["dsbatch"].to_pylist()
    assert [s["status"] for s in status] == [
        "succeeded",
        "succeeded",
        "parse_error",
        "parse_error",
        "expired",
    ]
    assert "no JSON object" in status[2]["error"] and "max_tokens" in status[3]["error"]
    assert out["response"].to_pylist()[2] == "no json here"  # the raw answer stays


def test_a_result_of_no_known_type_is_an_error_that_on_error_sees():
    rows = [
        result("weird", "mystery", text=None, problem="unknown result type 'mystery'"),
        result("none", None, text=None, problem="the line's result is not an object"),
    ]
    status = join(["weird", "none"], rows)["dsbatch"].to_pylist()
    assert [s["status"] for s in status] == ["errored", "errored"]
    assert status[0]["error"] == "the result line could not be read: unknown result type 'mystery'"
    assert status[1]["error"].endswith("the line's result is not an object")


def test_only_a_succeeded_request_has_an_answer_whatever_its_line_holds():
    # A line of an unknown type, or a succeeded line that could not be read, may carry text:
    # it is no answer, and the output column is empty on its row.
    rows = [
        result("ok"),
        result("weird", "mystery", text="words", problem="unknown result type 'mystery'"),
        result("torn", text="half an answ", problem="result.message.content is not a list"),
        result("gone", "expired", text="stale"),
    ]
    out = join(["ok", "weird", "torn", "gone"], rows)
    assert out["response"].to_pylist() == ["answer ok", None, None, None]
    assert [s["status"] for s in out["dsbatch"].to_pylist()] == [
        "succeeded",
        "errored",
        "parse_error",
        "expired",
    ]


# -- a split's columns made a slice of rows at a time --------------------------------------------
def _varied():
    """Rows asking for requests out of order, twice, skipped, failed and retried, with costs,
    parse columns and conversations: every column the join makes."""
    ids = [f"r{i % 7}" if i % 5 else None for i in range(23)]
    rows = [result(f"r{i}") for i in (6, 2, 0, 4)]
    rows += [result("r1", "errored", error_type="api_error"), result("r3", "expired")]
    rows += [result("r5", text="", tool_input='{"x": 1}')]
    latest = latest_results(table(rows))
    cost = pa.array([0.5 * (i + 1) for i in range(latest.num_rows)], pa.float64())
    return ids, latest, cost


def _slices(ids, latest, cost, slice_rows, **spec):
    messages = {
        c: {"content": [{"type": "text", "text": c}]} for c in latest["custom_id"].to_pylist()
    }
    return list(
        output_slices(
            pa.array(ids, pa.string()),
            latest,
            {"r1": 2, "r4": 3},
            OutputSpec(**spec),
            rows=lambda: iter({"k": i} for i in range(len(ids))),
            messages=lambda answered: {c: messages[c] for c in answered["custom_id"].to_pylist()},
            bodies={c: b'{"messages":[{"role":"user","content":"q"}]}' for c in messages},
            cost=cost,
            slice_rows=slice_rows,
        )
    )


@pytest.mark.parametrize("slice_rows", [1, 4, 5, 22])
def test_a_split_made_a_slice_at_a_time_is_the_split_made_at_once(slice_rows):
    ids, latest, cost = _varied()
    spec = {
        "parse": lambda row, message: {"k2": row["k"] * 2, "said": message["content"][0]["text"]},
        "conversation_column": "conversation",
    }
    (whole_table,) = _slices(ids, latest, cost, None, **spec)
    parts = _slices(ids, latest, cost, slice_rows, **spec)
    # Slices of rows in order, each of slice_rows but the last, with one schema.
    assert [p.num_rows for p in parts] == [
        min(slice_rows, len(ids) - at) for at in range(0, len(ids), slice_rows)
    ]
    assert pa.concat_tables(parts).to_pylist() == whole_table.to_pylist()
    assert whole_table.column_names == ["response", "k2", "said", "conversation", "dsbatch"]
    status = whole_table["dsbatch"].to_pylist()
    assert [s["custom_id"] for s in status] == ids
    assert [s["attempts"] for s in status] == [{"r1": 2, "r4": 3}.get(c, 0) for c in ids]
    # Row 0 is skipped, row 1 asks for r1 (errored: not parsed), row 2 for r2 (answered).
    assert whole_table["k2"].to_pylist()[:3] == [None, None, 4]
    assert [s["status"] for s in status][:4] == ["skipped", "errored", "succeeded", "expired"]
    # Each request's cost (in latest's order r6 r2 r0 r4 r1 r3 r5) on the rows that asked.
    assert [s["cost_usd"] for s in status][:4] == [None, 2.5, 1.0, 3.0]


def test_requests_in_order_are_sliced_without_being_taken():
    ids = [f"r{i}" for i in range(10)]
    latest = latest_results(table([result(c) for c in ids]))
    parts = list(output_slices(pa.array(ids), latest, None, OutputSpec(), slice_rows=3))
    assert [p.num_rows for p in parts] == [3, 3, 3, 1]
    assert pa.concat_tables(parts)["response"].to_pylist() == [f"answer {c}" for c in ids]
    assert [s["attempts"] for s in pa.concat_tables(parts)["dsbatch"].to_pylist()] == [1] * 10
