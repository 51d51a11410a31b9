"""Results, in whatever order they arrive, land on the rows that asked for them."""

from __future__ import annotations

import random

import pyarrow as pa

from dsbatch._join import final_results, output_table
from dsbatch._ledger import RESULT_SCHEMA


def result(custom_id, kind="succeeded", batch_id="b1", text=None, error_type=None):
    return {
        "custom_id": custom_id,
        "type": kind,
        "error_type": error_type,
        "error_message": "boom" if error_type else None,
        "stop_reason": "end_turn" if kind == "succeeded" else None,
        "text": text
        if text is not None
        else (f"answer {custom_id}" if kind == "succeeded" else None),
        "input_tokens": 3 if kind == "succeeded" else None,
        "output_tokens": 4 if kind == "succeeded" else None,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "batch_id": batch_id,
        "raw": "{}",
    }


def table(rows):
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def test_shuffled_results_land_on_the_right_rows():
    ids = [f"dsb_{i % 700}" for i in range(1000)]  # repeats, like duplicate prompts
    rows = [result(c) for c in sorted(set(ids))]
    random.Random(1).shuffle(rows)
    out = output_table(ids, table(rows), {c: 1 for c in ids}, output_column="answer")
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
    out = output_table(
        ["a", None, "b", "c", "d"], table(rows), {"a": 1, "b": 3, "c": 2, "d": 1}, output_column="r"
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
    assert "expired" in status[3]["error"] and "canceled" in status[4]["error"]
    assert status[1]["attempts"] == 0 and status[1]["error"] is None


def test_a_success_anywhere_beats_a_later_failure_and_the_latest_failure_wins():
    rows = [
        result("x", "errored", batch_id="b2", error_type="api_error"),
        result("x", "succeeded", batch_id="other-job"),
        result("y", "errored", batch_id="b1", error_type="api_error"),
        result("y", "expired", batch_id="b2"),
    ]
    final = final_results(table(rows), {"b1": 0, "b2": 1})
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
    out = output_table(["a", "b"], table([ok, failed]), {}, output_column="r")
    a, b = out["dsbatch"].to_pylist()
    assert (a["cache_read_input_tokens"], a["cache_creation_input_tokens"]) == (0, 0)
    assert (b["cache_read_input_tokens"], b["cache_creation_input_tokens"]) == (None, None)
