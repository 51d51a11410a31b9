"""Batches are scoped to the workspace of the API key that created them."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx2
import pytest

from dsbatch.testing import Emulator

from .helpers import requests

TEAM = {"key-a": "team", "key-b": "team", "key-c": "other"}


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(workspaces=TEAM) as emulator:
        yield emulator


def _client(emu: Emulator, key: str) -> anthropic.Anthropic:
    return emu.client(api_key=key, max_retries=0)


def test_two_keys_of_one_workspace_share_their_batches(emu: Emulator) -> None:
    a, b = _client(emu, "key-a"), _client(emu, "key-b")
    batch = a.messages.batches.create(requests=requests(3))
    assert b.messages.batches.retrieve(batch.id).processing_status == "ended"
    assert [listed.id for listed in b.messages.batches.list()] == [batch.id]
    assert sorted(line.custom_id for line in b.messages.batches.results(batch.id)) == [
        "r0",
        "r1",
        "r2",
    ]
    assert b.messages.batches.delete(batch.id).id == batch.id
    assert not emu.batches


def test_another_workspaces_key_cannot_see_or_touch_a_batch(emu: Emulator) -> None:
    a, c = _client(emu, "key-a"), _client(emu, "key-c")
    batch = a.messages.batches.create(requests=requests(2))
    results_url = a.messages.batches.retrieve(batch.id).results_url
    assert results_url is not None

    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.retrieve(batch.id)
    with pytest.raises(anthropic.NotFoundError):
        list(c.messages.batches.results(batch.id))
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.cancel(batch.id)
    with pytest.raises(anthropic.NotFoundError):
        c.messages.batches.delete(batch.id)
    assert list(c.messages.batches.list()) == []
    # The results URL itself is scoped too, not only the retrieve the SDK makes first.
    direct = httpx2.get(results_url, headers={"x-api-key": "key-c"})
    assert direct.status_code == 404 and direct.json()["error"]["type"] == "not_found_error"
    assert httpx2.get(results_url, headers={"x-api-key": "key-b"}).status_code == 200

    assert a.messages.batches.retrieve(batch.id).request_counts.succeeded == 2  # still there
    assert list(emu.batches) == [batch.id] and emu.batch_workspace(batch.id) == "team"


def test_list_pages_through_the_callers_workspace_only(emu: Emulator) -> None:
    a, c = _client(emu, "key-a"), _client(emu, "key-c")
    mine = [a.messages.batches.create(requests=requests(1)).id for _ in range(3)]
    theirs = [c.messages.batches.create(requests=requests(1)).id for _ in range(2)]
    assert [batch.id for batch in a.messages.batches.list(limit=1)] == mine[::-1]
    assert [batch.id for batch in c.messages.batches.list(limit=1)] == theirs[::-1]
    with pytest.raises(anthropic.BadRequestError):  # a cursor from another workspace
        a.messages.batches.list(after_id=theirs[0])
    assert len(emu.batches) == 5 and len(emu.received) == 5  # introspection sees them all


def test_keys_not_mapped_share_the_default_workspace(emu: Emulator) -> None:
    batch = _client(emu, "anyone").messages.batches.create(requests=requests(1))
    assert emu.batch_workspace(batch.id) == "default"
    assert _client(emu, "someone-else").messages.batches.retrieve(batch.id).id == batch.id
    with pytest.raises(anthropic.NotFoundError):
        _client(emu, "key-a").messages.batches.retrieve(batch.id)


def test_an_api_key_still_refuses_every_key_but_it_and_the_mapped_ones() -> None:
    with Emulator(api_key="sk-main", workspaces={"sk-team": "team"}) as emu:
        main = emu.client(max_retries=0)
        batch = main.messages.batches.create(requests=requests(1))
        assert emu.batch_workspace(batch.id) == "default"
        assert list(_client(emu, "sk-team").messages.batches.list()) == []
        with pytest.raises(anthropic.AuthenticationError):
            _client(emu, "sk-stranger").messages.batches.list()


def test_a_bad_workspaces_mapping_is_refused() -> None:
    with pytest.raises(ValueError, match="workspaces"):
        Emulator(workspaces={"key-a": ""})
