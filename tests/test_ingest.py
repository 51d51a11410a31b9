"""Raw result lines (as the real API writes them) become one typed row per custom_id."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from dsbatch._ingest import IncompleteDownload, UnreadableResults, parse_results, retry_download

# Result lines in the exact shapes of ../shared/seeds (a peer project's real results).
SUCCEEDED = {
    "custom_id": "first-prompt-in-my-batch",
    "result": {
        "type": "succeeded",
        "message": {
            "id": "msg_014KfxurNm3n65CGkqUNTkCk",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": [{"type": "text", "text": "Here's a fun video game fact."}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 20, "output_tokens": 64},
        },
    },
}
INVALID = {
    "custom_id": "2",
    "result": {
        "type": "errored",
        "error": {
            "error": {
                "message": "max_tokens: Field required",
                "type": "invalid_request_error",
                "details": None,
            },
            "type": "error",
        },
    },
}
TOOL = {
    "custom_id": "t",
    "result": {
        "type": "succeeded",
        "message": {
            "id": "msg_2",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Part one. "},
                {"type": "tool_use", "id": "tu", "name": "f", "input": {"a": [1, {"b": 2}]}},
                {"type": "text", "text": "Part two."},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 5,
                "output_tokens": 6,
                "cache_read_input_tokens": 3,
                "cache_creation_input_tokens": 2,
            },
        },
    },
}
EXPIRED = {"custom_id": "e", "result": {"type": "expired"}}
CANCELED = {"custom_id": "c", "result": {"type": "canceled"}}


def jsonl(*objs, sep=b"\n"):
    return sep.join(json.dumps(o).encode() for o in objs) + sep


def test_every_result_type_becomes_a_row():
    table = parse_results(jsonl(SUCCEEDED, INVALID, TOOL, EXPIRED, CANCELED), batch_id="msgbatch_1")
    rows = {r["custom_id"]: r for r in table.to_pylist()}
    ok = rows["first-prompt-in-my-batch"]
    assert (ok["type"], ok["text"], ok["stop_reason"]) == (
        "succeeded",
        "Here's a fun video game fact.",
        "end_turn",
    )
    assert (ok["input_tokens"], ok["output_tokens"], ok["cache_read_input_tokens"]) == (
        20,
        64,
        None,
    )
    bad = rows["2"]
    assert (bad["type"], bad["error_type"], bad["error_message"]) == (
        "errored",
        "invalid_request_error",
        "max_tokens: Field required",
    )
    assert bad["text"] is None
    tool = rows["t"]
    assert tool["text"] == "Part one. Part two."
    assert (tool["cache_read_input_tokens"], tool["cache_creation_input_tokens"]) == (3, 2)
    assert json.loads(tool["raw"]) == TOOL
    assert rows["e"]["type"] == "expired" and rows["c"]["type"] == "canceled"
    assert set(table["batch_id"].to_pylist()) == {"msgbatch_1"}


def test_crlf_and_blank_lines_are_tolerated():
    table = parse_results(b"\r\n" + jsonl(SUCCEEDED, EXPIRED, sep=b"\r\n") + b"\n\n", batch_id="b")
    assert table["custom_id"].to_pylist() == ["first-prompt-in-my-batch", "e"]
    # Each raw line is the line without its end.
    assert table["raw"].to_pylist() == jsonl(SUCCEEDED, EXPIRED).decode().splitlines()


def test_blank_lines_and_line_ends_leave_the_lines_as_the_api_wrote_them():
    data = b"\n  \n" + jsonl(SUCCEEDED, EXPIRED, INVALID, sep=b"\r\n") + b"\t\n" + jsonl(EXPIRED)
    table = parse_results(data, batch_id="b")
    assert table["custom_id"].to_pylist() == ["first-prompt-in-my-batch", "e", "2", "e"]
    assert table["raw"].to_pylist() == [
        json.dumps(o) for o in (SUCCEEDED, EXPIRED, INVALID, EXPIRED)
    ]
    assert table.drop_columns(["raw"]).equals(
        parse_results(jsonl(SUCCEEDED, EXPIRED, INVALID, EXPIRED), batch_id="b").drop_columns(
            ["raw"]
        )
    )


def test_a_line_that_is_not_utf8_is_named_and_not_worth_downloading_again():
    data = jsonl(SUCCEEDED, EXPIRED) + b'{"custom_id": "x\xff", "result": {}}\n' + jsonl(EXPIRED)
    with pytest.raises(UnreadableResults, match="batch msgbatch_b: line 3 is not UTF-8") as info:
        parse_results(data, batch_id="msgbatch_b")
    assert not retry_download(info.value)


def test_a_cut_last_line_is_an_incomplete_download():
    data = jsonl(SUCCEEDED, EXPIRED)
    with pytest.raises(IncompleteDownload, match="batch msgbatch_cut end in a cut line 3"):
        parse_results(data + data[: len(data) // 3], batch_id="msgbatch_cut")


def test_a_line_that_is_not_json_is_named_and_not_worth_downloading_again():
    data = jsonl(SUCCEEDED) + b"<html>proxy error</html>\n" + jsonl(EXPIRED)
    with pytest.raises(UnreadableResults, match="batch b: line 2 is not JSON") as info:
        parse_results(data, batch_id="b")
    assert not retry_download(info.value)


def _odd(custom_id, **message):
    line = json.loads(json.dumps(SUCCEEDED))
    line["custom_id"] = custom_id
    line["result"]["message"].update(message)
    return line


def test_odd_lines_cost_their_own_fields_never_the_batch():
    data = jsonl(
        SUCCEEDED,
        _odd("float-usage", usage={"input_tokens": 1.0, "output_tokens": 2.5}),
        _odd("string-content", content="just text"),
        {"custom_id": "weird", "result": {"type": "mystery"}},
        INVALID,
        TOOL,
    )
    table = parse_results(data, batch_id="b", batch_created_at=123.0)
    rows = {r["custom_id"]: r for r in table.to_pylist()}
    assert len(rows) == 6 and set(table["batch_created_at"].to_pylist()) == {123.0}
    assert rows["first-prompt-in-my-batch"]["problem"] is None
    assert rows["first-prompt-in-my-batch"]["text"] == "Here's a fun video game fact."
    floaty = rows["float-usage"]
    assert floaty["input_tokens"] == 1 and floaty["output_tokens"] is None
    assert "usage.output_tokens is 2.5" in floaty["problem"]
    assert rows["string-content"]["text"] is None
    assert "content is a str, not a list of blocks" in rows["string-content"]["problem"]
    assert "unknown result type 'mystery'" in rows["weird"]["problem"]
    assert rows["2"]["error_type"] == "invalid_request_error" and rows["2"]["problem"] is None
    assert json.loads(rows["t"]["tool_input"]) == {"a": [1, {"b": 2}]}
    for custom_id, row in rows.items():
        assert json.loads(row["raw"])["custom_id"] == custom_id  # the raw line is always kept


def test_tool_inputs_are_read_in_the_fast_path_too():
    table = parse_results(jsonl(SUCCEEDED, TOOL, EXPIRED), batch_id="b")
    by_id = {r["custom_id"]: r for r in table.to_pylist()}
    assert json.loads(by_id["t"]["tool_input"]) == {"a": [1, {"b": 2}]}
    assert by_id["first-prompt-in-my-batch"]["tool_input"] is None
    assert all(r["problem"] is None for r in by_id.values())


THINKING = {
    "custom_id": "think",
    "result": {
        "type": "succeeded",
        "message": {
            "id": "msg_3",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [
                {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Thought \u00e9 \u2028 out."},
            ],
            "stop_reason": "max_tokens",
            "stop_sequence": None,
            "usage": {"input_tokens": 7, "output_tokens": 8, "service_tier": "batch"},
            "a_field_from_next_year": {"nested": [1, 2]},
        },
        "also_new": True,
    },
    "top_level_extra": "x",
}
EMPTY = {
    "custom_id": "empty",
    "result": {
        "type": "succeeded",
        "message": {**SUCCEEDED["result"]["message"], "content": [], "stop_reason": "refusal"},
    },
}
OVERLOADED = {
    "custom_id": "o",
    "result": {
        "type": "errored",
        "error": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    },
}
MYSTERY = {"custom_id": "u", "result": {"type": "mystery"}}
READABLE = [SUCCEEDED, INVALID, OVERLOADED, TOOL, THINKING, EMPTY, EXPIRED, CANCELED, MYSTERY]


def test_the_fast_parse_reads_every_readable_line_as_the_line_by_line_parse_does(monkeypatch):
    from dsbatch import _ingest

    data = jsonl(*READABLE)
    lenient = _ingest._parse_lenient(_ingest._raw_lines(pa.py_buffer(data), "b", True), "b", 5.0)

    def refuse(*args):
        raise AssertionError("the fast parse fell back to reading line by line")

    monkeypatch.setattr(_ingest, "_parse_lenient", refuse)
    fast = parse_results(data, batch_id="b", batch_created_at=5.0)
    assert fast.equals(lenient)
    rows = {r["custom_id"]: r for r in fast.to_pylist()}
    assert (rows["think"]["text"], rows["think"]["stop_reason"]) == (
        "Thought \u00e9 \u2028 out.",
        "max_tokens",
    )
    assert (rows["think"]["output_tokens"], rows["think"]["cache_read_input_tokens"]) == (8, None)
    assert rows["empty"]["text"] is None and rows["empty"]["stop_reason"] == "refusal"
    assert rows["o"]["error_type"] == "overloaded_error" and rows["o"]["text"] is None
    assert json.loads(rows["think"]["raw"]) == THINKING
    assert json.loads(rows["t"]["tool_input"]) == {"a": [1, {"b": 2}]}
    assert rows["u"]["problem"] == "unknown result type 'mystery'"  # as the slow path says it


def test_lines_spread_over_many_blocks_parse_as_one_block_does(monkeypatch):
    from dsbatch import _ingest

    lines = [
        {**line, "custom_id": f"{line['custom_id']}-{i}"} for i in range(40) for line in READABLE
    ]
    data = jsonl(*lines)
    whole = parse_results(data, batch_id="b")
    monkeypatch.setattr(_ingest, "_BLOCK_BYTES", 1000)  # many blocks, each cut mid-line
    monkeypatch.setattr(_ingest, "_parse_lenient", None)  # the fast path only
    assert len(data) > 20 * 1000 > max(len(json.dumps(line)) for line in lines)
    split = parse_results(data, batch_id="b")
    assert split.equals(whole) and split.num_rows == 40 * len(READABLE) == 360
    assert split["custom_id"].to_pylist() == [line["custom_id"] for line in lines]
    # On one core (a download parsed while the next wave runs): the same rows, in order.
    assert parse_results(data, batch_id="b", use_threads=False).equals(whole)


def test_lines_of_spaces_are_dropped_and_a_line_longer_than_a_block_still_reads_fast(monkeypatch):
    from dsbatch import _ingest

    long = _odd("long", content=[{"type": "text", "text": "word " * 2000}])
    data = b"  \n" + jsonl(SUCCEEDED, long) + b" \t \r\n" + jsonl(EXPIRED)
    monkeypatch.setattr(_ingest, "_BLOCK_BYTES", 1000)  # the long line is 10x a block
    monkeypatch.setattr(_ingest, "_parse_lenient", None)  # the fast path only
    table = parse_results(data, batch_id="b")
    assert table["custom_id"].to_pylist() == ["first-prompt-in-my-batch", "long", "e"]
    assert table["text"].to_pylist()[1] == "word " * 2000


def test_a_download_cut_midway_leaves_no_file_and_a_whole_one_is_read_back(tmp_path):
    from dsbatch._store import ResultsStore

    store = ResultsStore(tmp_path)

    def cut():
        yield b'{"custom_id": "a"}\n'
        raise RuntimeError("the connection dropped")

    with pytest.raises(RuntimeError, match="dropped"):
        store.store_download("msgbatch_1", cut())
    assert list((tmp_path / "downloads").iterdir()) == []  # nothing half-written is left
    buf = store.store_download("msgbatch_1", iter([b"x\n", b"y\n"]))
    assert buf.to_pybytes() == b"x\ny\n"
    (path,) = (tmp_path / "downloads").iterdir()
    assert path.name.startswith("msgbatch_1.") and path.suffix == ".jsonl"
    store.discard_download("msgbatch_1")
    assert not path.exists()
