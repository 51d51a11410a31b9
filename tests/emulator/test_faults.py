"""Each fault the emulator injects, as the official SDK sees it."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import anthropic
import httpx2
import pytest
from jsonschema import validate

from dsbatch.testing import Emulator, Faults, HttpFault

from .helpers import (
    LABEL_SCHEMA,
    forced_tool_params,
    json_schema_params,
    request,
    requests,
    result_lines,
    results_by_id,
)

# --- HTTP errors ---------------------------------------------------------------------------


def test_429_is_retried_by_the_sdk_and_succeeds_when_times_is_below_its_retries() -> None:
    with Emulator(faults=Faults(http=[HttpFault("create", 429, times=2)])) as emu:
        batch = emu.client().messages.batches.create(requests=requests(2))  # max_retries=2
        assert emu.calls["create"] == 3
        assert list(emu.batches) == [batch.id]
        assert emu.faults.http[0].times == 0


def test_429_without_retries_is_a_rate_limit_error_with_retry_after() -> None:
    with Emulator(faults=Faults(http=[HttpFault("retrieve", 429, retry_after=2.5)])) as emu:
        client = emu.client(max_retries=0)
        batch = client.messages.batches.create(requests=requests(1))
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.batches.retrieve(batch.id)
        headers = caught.value.response.headers
        assert (headers["retry-after"], headers["retry-after-ms"]) == ("2.5", "2500")
        assert caught.value.type == "rate_limit_error"
        assert client.messages.batches.retrieve(batch.id).processing_status == "ended"


def test_the_default_retry_after_keeps_sdk_retries_instant() -> None:
    with Emulator(faults=Faults(http=[HttpFault("list", 429, times=1)])) as emu:
        client = emu.client(max_retries=0)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.batches.list()
        assert float(caught.value.response.headers["retry-after"]) <= 0.001


@pytest.mark.parametrize(
    ("status", "error", "error_type"),
    [
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_server_errors_surface_with_their_type_and_are_retried(
    status: int, error: type[anthropic.APIStatusError], error_type: str
) -> None:
    faults = Faults(http=[HttpFault("results", status, times=1)])
    with Emulator(faults=faults) as emu:
        client = emu.client(max_retries=0)
        batch = client.messages.batches.create(requests=requests(3))
        with pytest.raises(error) as caught:
            list(client.messages.batches.results(batch.id))
        assert caught.value.status_code == status and caught.value.type == error_type

        emu.faults.http.append(HttpFault("results", status, times=2))
        retried = list(emu.client(max_retries=2).messages.batches.results(batch.id))
        assert len(retried) == 3
        assert emu.calls["results"] == 4


def test_a_star_fault_hits_whatever_endpoint_comes_next(emu: Emulator) -> None:
    client = emu.client(max_retries=0)
    batch = client.messages.batches.create(requests=requests(1))
    emu.faults.http.append(HttpFault("*", 503, times=2))
    with pytest.raises(anthropic.APIStatusError):
        client.messages.batches.retrieve(batch.id)
    with pytest.raises(anthropic.APIStatusError):
        client.messages.batches.list()
    assert client.messages.batches.cancel(batch.id).processing_status == "ended"
    assert emu.calls == {"create": 1, "retrieve": 1, "list": 1, "cancel": 1}


# --- a create whose answer is lost -----------------------------------------------------------


def test_a_lost_create_answer_makes_the_sdk_create_a_second_batch() -> None:
    with Emulator(faults=Faults(lose_create=1)) as emu:
        batch = emu.client().messages.batches.create(requests=requests(3))
        assert emu.calls["create"] == 2
        assert len(emu.batches) == 2 and batch.id in emu.batches
        assert emu.duplicate_custom_ids == {"r0", "r1", "r2"}  # paid twice


def test_a_lost_create_answer_without_retries_is_a_connection_error_but_the_batch_exists() -> None:
    with Emulator(faults=Faults(lose_create=1)) as emu:
        client = emu.client(max_retries=0)
        with pytest.raises(anthropic.APIConnectionError):
            client.messages.batches.create(requests=requests(3))
        assert len(emu.batches) == 1
        newest = client.messages.batches.list(limit=1).data[0]  # how a client reconciles
        assert newest.id in emu.batches and newest.request_counts.succeeded == 3


# --- a results download cut midway ------------------------------------------------------------


# What the SDK raises when a results download is cut while it iterates the lines: httpx2's own
# TransportError (RemoteProtocolError, "incomplete chunked read"), which anthropic 2.17 wraps
# in its connection error. A raw byte reader still gets the transport's error.
CUT_ITERATION = (httpx2.TransportError, anthropic.APIConnectionError)


def test_a_cut_download_breaks_the_sdks_results_iteration_midway() -> None:
    with Emulator(faults=Faults(cut_results=1)) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(10))
        seen = []
        with pytest.raises(CUT_ITERATION):
            for line in client.messages.batches.results(batch.id):
                seen.append(line.custom_id)
        assert len(seen) == 5 < client.messages.batches.retrieve(batch.id).request_counts.succeeded
        assert len(list(client.messages.batches.results(batch.id))) == 10  # the next one is whole


def test_a_short_download_looks_complete_but_holds_half_the_lines() -> None:
    with Emulator(faults=Faults(short_results=1)) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(10))
        with client.messages.batches.with_streaming_response.results(batch.id) as response:
            body = b"".join(response.iter_bytes())  # no transport error: the body ends cleanly
        assert body.count(b"\n") == 5 and body.endswith(b"\n")
        assert len(list(client.messages.batches.results(batch.id))) == 10  # the next one is whole


def test_a_cut_download_is_detected_by_a_raw_byte_reader() -> None:
    with Emulator(faults=Faults(cut_results=1)) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(10))
        client.messages.batches.retrieve(batch.id)
        received = bytearray()
        with (
            pytest.raises(httpx2.TransportError),
            client.messages.batches.with_streaming_response.results(batch.id) as response,
        ):
            for chunk in response.iter_bytes():
                received += chunk
        assert received.count(b"\n") == 5 and not received.endswith(b"\n")


def test_a_cut_download_fails_the_async_client_too() -> None:
    import asyncio

    async def download(emu: Emulator, batch_id: str) -> list[str]:
        seen: list[str] = []
        # Hold the client through the download: an AsyncAnthropic nothing refers to any more
        # closes its connection pool from __del__ when the garbage collector reaches it, and
        # with it the connection the results stream on, maybe before the first line is read.
        async with emu.async_client() as client:
            results = await client.messages.batches.results(batch_id)
            with pytest.raises(CUT_ITERATION):
                async for line in results:
                    seen.append(line.custom_id)
        return seen

    with Emulator(faults=Faults(cut_results=1)) as emu:
        batch = emu.client().messages.batches.create(requests=requests(4))
        assert len(asyncio.run(download(emu, batch.id))) == 2


# --- per-request fates ------------------------------------------------------------------------


def _fates(emu: Emulator, batch_id: str) -> dict[str, str]:
    client = emu.client()
    out = {}
    for line in result_lines(client, batch_id):
        result = line.result
        out[line.custom_id] = result.error.error.type if result.type == "errored" else result.type
    return out


def _run_batch(faults: Faults, reqs: list[Any]) -> tuple[dict[str, str], dict[str, int]]:
    with Emulator(faults=faults) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=reqs)
        counts = client.messages.batches.retrieve(batch.id).request_counts.model_dump()
        return _fates(emu, batch.id), counts


def test_fault_fractions_give_each_result_type_deterministically() -> None:
    faults = Faults(errored=0.2, invalid=0.1, expired=0.1)
    fates, counts = _run_batch(faults, requests(2000))
    tally = Counter(fates.values())
    assert 170 <= tally["invalid_request_error"] <= 230
    assert 160 <= tally["overloaded_error"] <= 200 and 160 <= tally["api_error"] <= 200
    assert 150 <= tally["expired"] <= 210
    assert counts["errored"] == sum(
        tally[kind] for kind in ("invalid_request_error", "overloaded_error", "api_error")
    )
    assert counts["expired"] == tally["expired"] and counts["succeeded"] == tally["succeeded"]

    again, _ = _run_batch(Faults(errored=0.2, invalid=0.1, expired=0.1), requests(2000))
    assert again == fates


def test_a_retried_request_gets_a_fresh_draw_but_an_invalid_one_stays_invalid() -> None:
    with Emulator(faults=Faults(errored=0.5, invalid=0.2)) as emu:
        client = emu.client()
        first = client.messages.batches.create(requests=requests(200))
        fates = _fates(emu, first.id)
        retry = [cid for cid, fate in fates.items() if fate != "succeeded"]
        second = client.messages.batches.create(requests=[request(cid) for cid in retry])
        again = _fates(emu, second.id)
    invalid = {cid for cid, fate in fates.items() if fate == "invalid_request_error"}
    assert {cid for cid, fate in again.items() if fate == "invalid_request_error"} == invalid
    transient = [cid for cid in retry if cid not in invalid]
    assert sum(again[cid] == "succeeded" for cid in transient) > len(transient) / 3


def _spoiled(faults: Faults) -> dict[str, Any]:
    """custom_id -> message, for a native, a forced-tool and a plain request under ``faults``."""
    reqs = [
        request("schema", **json_schema_params(LABEL_SCHEMA)),
        request("tool", **forced_tool_params(LABEL_SCHEMA)),
        request("plain"),
    ]
    with Emulator(faults=faults) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=reqs)
        client.messages.batches.retrieve(batch.id)
        return {cid: result.message for cid, result in results_by_id(client, batch.id).items()}


def test_preamble_puts_prose_before_the_json_of_a_native_structured_answer() -> None:
    messages = _spoiled(Faults(preamble=1.0))
    (block,) = messages["schema"].content
    assert block.type == "text" and messages["schema"].stop_reason == "end_turn"
    prose, _, payload = block.text.partition("\n\n")
    assert prose == "Here is the JSON you asked for:"
    with pytest.raises(json.JSONDecodeError):
        json.loads(block.text)
    validate(json.loads(payload), LABEL_SCHEMA)
    assert messages["plain"].content[0].text.startswith("Summary of:")


def test_preamble_in_tool_mode_is_a_sentence_before_a_valid_tool_call() -> None:
    message = _spoiled(Faults(preamble=1.0))["tool"]
    prose, call = message.content
    assert prose.type == "text" and "{" not in prose.text and prose.text
    assert call.type == "tool_use" and call.name == "record"
    validate(call.input, LABEL_SCHEMA)
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens > len(json.dumps(call.input)) // 4


def test_no_json_answers_structured_requests_in_prose_only() -> None:
    messages = _spoiled(Faults(no_json=1.0))
    for custom_id in ("schema", "tool"):  # in tool mode: no tool call at all
        message = messages[custom_id]
        (block,) = message.content
        assert block.type == "text" and "{" not in block.text
        assert message.stop_reason == "end_turn"
    assert messages["plain"].content[0].text.startswith("Summary of:")


def test_a_spoiled_tool_answer_still_obeys_max_tokens() -> None:
    reqs = [
        request("in_prose", max_tokens=2, **forced_tool_params(LABEL_SCHEMA)),
        request("in_call", max_tokens=14, **forced_tool_params(LABEL_SCHEMA)),
    ]
    with Emulator(faults=Faults(preamble=1.0)) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=reqs)
        client.messages.batches.retrieve(batch.id)
        messages = {cid: r.message for cid, r in results_by_id(client, batch.id).items()}
    assert [b.type for b in messages["in_prose"].content] == ["text"]
    assert [b.type for b in messages["in_call"].content] == ["text", "tool_use"]
    for message in messages.values():
        assert message.stop_reason == "max_tokens"
    assert messages["in_call"].content[1].input == {}


def test_fractions_of_preamble_and_no_json_split_structured_answers() -> None:
    faults = Faults(preamble=0.3, no_json=0.2)
    fates, _ = _run_batch(faults, requests(500, **json_schema_params(LABEL_SCHEMA)))
    assert set(fates.values()) == {"succeeded"}
    with Emulator(faults=Faults(preamble=0.3, no_json=0.2)) as emu:
        client = emu.client()
        batch = client.messages.batches.create(
            requests=requests(500, **json_schema_params(LABEL_SCHEMA))
        )
        client.messages.batches.retrieve(batch.id)
        shapes: Counter[str] = Counter()
        for line in result_lines(client, batch.id):
            text = line.result.message.content[0].text
            shapes["json" if text.startswith("{") else "preamble" if "{" in text else "prose"] += 1
    assert 120 <= shapes["preamble"] <= 180 and 75 <= shapes["prose"] <= 125


# --- Faults objects ---------------------------------------------------------------------------


def test_parse_reads_every_fault_kind() -> None:
    faults = Faults.parse(
        "create=429x2,retrieve=500x1,results=529x1@0.25,*=503,messages=529x3,count_tokens=500,"
        "lose_create=1,cut_results=2,short_results=3,"
        "errored=0.1,invalid=0.05,expired=0.05,preamble=0.2,no_json=0.1,redacted_thinking=0.25"
    )
    assert faults.http == [
        HttpFault("create", 429, 2),
        HttpFault("retrieve", 500, 1),
        HttpFault("results", 529, 1, retry_after=0.25),
        HttpFault("*", 503, 1),
        HttpFault("messages", 529, 3),
        HttpFault("count_tokens", 500, 1),
    ]
    assert (faults.lose_create, faults.cut_results, faults.short_results) == (1, 2, 3)
    assert (faults.errored, faults.invalid, faults.expired) == (0.1, 0.05, 0.05)
    assert (faults.preamble, faults.no_json, faults.redacted_thinking) == (0.2, 0.1, 0.25)
    assert Faults.parse(faults.describe()) == faults
    assert Faults.parse("") == Faults()


@pytest.mark.parametrize(
    "spec",
    ["create=429x", "bogus=1", "create", "errored=lots", "errored=1.5", "upload=500", "list=200"],
)
def test_parse_names_the_bad_item(spec: str) -> None:
    with pytest.raises(ValueError, match="bad fault"):
        Faults.parse(f"lose_create=1,{spec}")


def test_faults_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="errored"):
        Faults(errored=0.7, expired=0.5)
    with pytest.raises(ValueError, match="endpoint"):
        HttpFault("upload", 500)
    with pytest.raises(ValueError, match="redacted_thinking"):
        Faults(redacted_thinking=1.5)
