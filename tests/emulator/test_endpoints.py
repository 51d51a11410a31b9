"""Every endpoint of the emulator, driven through the official SDK (sync and async)."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta

import anthropic
import pytest

from dsbatch.testing import Emulator

from .helpers import request, requests, results_by_id


def test_create_then_retrieve_then_results(emu: Emulator) -> None:
    client = emu.client()
    created = client.messages.batches.create(requests=requests(3))
    assert created.id.startswith("msgbatch_") and len(created.id) == len("msgbatch_") + 24
    assert created.processing_status == "in_progress"
    assert created.request_counts.processing == 3
    assert created.results_url is None
    assert created.expires_at - created.created_at == timedelta(hours=24)

    batch = client.messages.batches.retrieve(created.id)
    assert batch.processing_status == "ended"
    assert batch.request_counts.succeeded == 3 and batch.request_counts.processing == 0
    assert batch.ended_at == batch.created_at
    assert batch.results_url == f"{emu.base_url}/v1/messages/batches/{batch.id}/results"

    results = results_by_id(client, batch.id)
    assert set(results) == {"r0", "r1", "r2"}
    message = results["r1"].message
    assert message.content[0].text.startswith("Summary of: Row 1: tell me about item number 1.")
    assert message.model == "claude-haiku-4-5" and message.stop_reason == "end_turn"


def test_results_are_newline_terminated_jsonl_in_a_stable_shuffled_order(emu: Emulator) -> None:
    client = emu.client()
    batch = client.messages.batches.create(requests=requests(40))
    client.messages.batches.retrieve(batch.id)
    with client.messages.batches.with_streaming_response.results(batch.id) as response:
        assert response.headers["content-type"] == "application/x-jsonl"
        first = response.read()
    with client.messages.batches.with_streaming_response.results(batch.id) as response:
        second = response.read()
    assert first == second
    assert first.endswith(b"\n") and b"\r" not in first and b"\n\n" not in first
    ids = [json.loads(line)["custom_id"] for line in first.splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(40))
    assert ids != [f"r{i}" for i in range(40)]


def test_list_is_newest_first_and_pages_like_the_api(emu: Emulator) -> None:
    client = emu.client()
    created = [client.messages.batches.create(requests=requests(1)).id for _ in range(5)]
    newest_first = created[::-1]

    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    assert page.has_more is True
    assert (page.first_id, page.last_id) == (newest_first[0], newest_first[1])

    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first  # auto-paging

    after = client.messages.batches.list(limit=2, after_id=newest_first[3])
    assert [b.id for b in after.data] == newest_first[4:] and after.has_more is False

    before = client.messages.batches.list(limit=2, before_id=newest_first[3])
    assert [b.id for b in before.data] == newest_first[1:3] and before.has_more is True

    assert [b.id for b in client.messages.batches.list(before_id=newest_first[2])] == (
        newest_first[:2]
    )


def test_list_of_no_batches_is_an_empty_page(emu: Emulator) -> None:
    page = emu.client().messages.batches.list()
    assert page.data == [] and page.has_more is False
    assert page.first_id is None and page.last_id is None


def test_list_refuses_a_limit_outside_1_to_1000(emu: Emulator) -> None:
    with pytest.raises(anthropic.BadRequestError, match="limit"):
        emu.client().messages.batches.list(limit=1001)


def test_a_batch_ends_only_when_the_virtual_clock_reaches_its_delay() -> None:
    with Emulator(delay=3600) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(4))
        emu.advance(3599)
        assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
        emu.advance(1)
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended"
        assert ended.ended_at == ended.created_at + timedelta(hours=1)


def test_advance_works_as_an_injected_sleep() -> None:
    with Emulator(delay=600) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(2))
        start, sleep, polls = emu.now(), emu.advance, 0
        while client.messages.batches.retrieve(batch.id).processing_status != "ended":
            sleep(60)
            polls += 1
        assert polls == 10
        assert emu.now() - start == pytest.approx(600)


def test_cancel_midway_keeps_finished_results_and_cancels_the_rest() -> None:
    with Emulator(delay=100) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(10))
        emu.advance(35)  # requests 0, 1, 2 finish at 10, 20, 30
        canceling = client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling"
        assert canceling.cancel_initiated_at is not None
        assert canceling.request_counts.processing == 10

        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended"
        counts = ended.request_counts
        assert (counts.succeeded, counts.canceled, counts.processing) == (3, 7, 0)
        fates = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
        assert {cid for cid, fate in fates.items() if fate == "succeeded"} == {"r0", "r1", "r2"}


def test_a_batch_still_running_after_24_hours_expires_its_unfinished_requests() -> None:
    with Emulator(delay=48 * 3600) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(10))
        emu.advance(24 * 3600 - 1)
        assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
        emu.advance(1)
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.ended_at == ended.expires_at
        assert (ended.request_counts.succeeded, ended.request_counts.expired) == (5, 5)


def test_delete_removes_an_ended_batch(emu: Emulator) -> None:
    client = emu.client()
    batch = client.messages.batches.create(requests=requests(1))
    client.messages.batches.retrieve(batch.id)
    deleted = client.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)
    assert list(client.messages.batches.list()) == []
    assert batch.id not in emu.batches


def test_every_endpoint_through_the_async_client() -> None:
    async def scenario(emu: Emulator) -> None:
        async with emu.async_client() as client:
            await steps(emu, client)

    async def steps(emu: Emulator, client: anthropic.AsyncAnthropic) -> None:
        batch = await client.messages.batches.create(requests=requests(3))
        emu.advance(10)
        running = await client.messages.batches.create(requests=requests(2, prefix="late"))
        assert (await client.messages.batches.retrieve(batch.id)).processing_status == "ended"
        canceled = await client.messages.batches.cancel(running.id)
        assert canceled.processing_status == "canceling"
        listed = [b.id async for b in client.messages.batches.list(limit=1)]
        assert listed == [running.id, batch.id]
        ids = sorted([r.custom_id async for r in await client.messages.batches.results(batch.id)])
        assert ids == ["r0", "r1", "r2"]
        deleted = await client.messages.batches.delete(batch.id)
        assert deleted.type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve(batch.id)

    with Emulator(delay=10) as emu:
        asyncio.run(scenario(emu))
        assert emu.calls["cancel"] == 1 and emu.calls["delete"] == 1


def test_calls_received_and_duplicates_are_recorded(emu: Emulator) -> None:
    client = emu.client()
    first = client.messages.batches.create(requests=[request("a"), request("b")])
    second = client.messages.batches.create(requests=[request("b"), request("c")])
    client.messages.batches.retrieve(first.id)
    list(client.messages.batches.results(second.id))
    assert emu.calls == {"create": 2, "retrieve": 2, "results": 1}
    assert emu.received == [(first.id, "a"), (first.id, "b"), (second.id, "b"), (second.id, "c")]
    assert emu.duplicate_custom_ids == {"b"}
    assert emu.last_create_body == {"requests": [request("b"), request("c")]}

    emu.reset_stats()
    assert not emu.calls and not emu.received and not emu.duplicate_custom_ids


def test_batches_view_shows_the_current_state_without_http(emu: Emulator) -> None:
    batch = emu.client().messages.batches.create(requests=requests(2))
    view = emu.batches[batch.id]
    assert view["processing_status"] == "ended"  # delay=0: ended as soon as it is looked at
    assert view["request_counts"]["succeeded"] == 2
    assert list(emu.batches) == [batch.id] and len(emu.batches) == 1
    assert emu.calls["retrieve"] == 0


def test_results_of_gives_the_lines_without_http(emu: Emulator) -> None:
    batch = emu.client().messages.batches.create(requests=requests(2))
    emu.advance(0)
    lines = emu.results_of(batch.id)
    assert sorted(line["custom_id"] for line in lines) == ["r0", "r1"]
    assert emu.calls["results"] == 0


def test_concurrent_clients_are_all_served(emu: Emulator) -> None:
    ids: list[str] = []

    def create(worker: int) -> None:
        client = emu.client()
        for round_ in range(3):
            batch = client.messages.batches.create(
                requests=requests(5, prefix=f"w{worker}x{round_}")
            )
            ids.append(client.messages.batches.retrieve(batch.id).id)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 18 and len(emu.received) == 90


def test_two_emulators_never_hand_out_the_same_batch_id() -> None:
    with Emulator() as one, Emulator() as two:
        a = one.client().messages.batches.create(requests=requests(1))
        b = two.client().messages.batches.create(requests=requests(1))
    assert a.id != b.id


def test_stop_closes_the_port() -> None:
    emu = Emulator().start()
    client = emu.client(max_retries=0)
    client.messages.batches.list()
    emu.stop()
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.batches.list()


def test_results_url_points_at_the_address_the_client_used(emu: Emulator) -> None:
    port = emu.base_url.rsplit(":", 1)[1]
    client = anthropic.Anthropic(base_url=f"http://localhost:{port}", api_key="k")
    batch = client.messages.batches.create(requests=requests(1))
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.results_url == f"http://localhost:{port}/v1/messages/batches/{batch.id}/results"
    assert len(list(client.messages.batches.results(batch.id))) == 1


def test_a_seed_fixes_the_batch_ids() -> None:
    def first_ids(seed: int) -> list[str]:
        with Emulator(seed=seed) as emu:
            client = emu.client()
            return [client.messages.batches.create(requests=requests(1)).id for _ in range(2)]

    assert first_ids(7) == first_ids(7) != first_ids(8)


def test_results_read_through_the_beta_endpoint_carry_the_beta_messages_fields(
    emu: Emulator,
) -> None:
    client = emu.client()
    reqs = [*requests(3), request("bad", max_tokens=0)]
    batch = client.messages.batches.create(requests=reqs)
    client.messages.batches.retrieve(batch.id)

    def lines(query: dict[str, str]) -> list[dict]:
        response = client.get(
            f"/v1/messages/batches/{batch.id}/results",
            cast_to=anthropic._response.BinaryAPIResponse,  # type: ignore[attr-defined]
            options={"params": query},
        )
        return [json.loads(line) for line in response.read().splitlines()]

    plain, beta = lines({}), lines({"beta": "true"})
    assert [line["custom_id"] for line in plain] == [line["custom_id"] for line in beta]
    for before, after in zip(plain, beta):
        if before["result"]["type"] != "succeeded":
            assert after == before  # an errored line is the same in both
            continue
        message = before["result"]["message"]
        assert after["result"]["message"] == {
            **message,
            "diagnostics": None,
            "context_management": None,
            "usage": {**message["usage"], "iterations": None, "speed": None},
        }
    assert emu.results_of(batch.id, beta=True) == beta
    by_id = {line.custom_id: line.result for line in client.beta.messages.batches.results(batch.id)}
    assert by_id["r0"].type == "succeeded" and by_id["bad"].type == "errored"
