"""The results file: encoded once when a batch ends, the same bytes on every download."""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import anthropic
import httpx2
import pytest

from dsbatch._emulator import _results, _server, _state
from dsbatch.testing import Emulator, Faults

from .helpers import requests


def _body(client: anthropic.Anthropic, batch_id: str, *, beta: bool = False) -> bytes:
    query = {"beta": "true"} if beta else None  # the beta endpoint: its results URL
    results = client.messages.batches.with_streaming_response.results
    with results(batch_id, extra_query=query) as response:
        return b"".join(response.iter_bytes())


def _cut_body(client: anthropic.Anthropic, batch_id: str) -> bytes:
    received = bytearray()
    with (
        pytest.raises(httpx2.TransportError),
        client.messages.batches.with_streaming_response.results(batch_id) as response,
    ):
        for chunk in response.iter_bytes():
            received += chunk
    return bytes(received)


def _counting_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the Messages the emulator builds (one per succeeded line encoded)."""
    built = [0]
    real = _state.build_message

    def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        built[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(_state, "build_message", counted)
    return built


def test_every_download_of_a_batch_serves_the_bytes_encoded_when_it_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = _counting_builds(monkeypatch)
    with Emulator(delay=10) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(7))
        assert built[0] == 0  # nothing is written while the batch runs
        emu.advance(10)
        assert built[0] == 7  # the file is written once, when the batch ends
        first, second = _body(client, batch.id), _body(client, batch.id)
        assert built[0] == 7  # a download builds nothing
        emu.faults.short_results = 1  # a download that takes a fault (under the state's lock)
        assert _body(client, batch.id).count(b"\n") == 3
        assert built[0] == 7  # builds nothing either
        assert first == second and first.count(b"\n") == 7 and first.endswith(b"\n")
        assert [json.loads(line) for line in first.splitlines()] == emu.results_of(batch.id)
        assert len({json.loads(line)["custom_id"] for line in first.splitlines()}) == 7


def test_the_beta_form_is_written_once_on_its_first_download_and_leaves_the_standard_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = _counting_builds(monkeypatch)
    with Emulator() as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(3))
        standard = _body(client, batch.id)
        assert built[0] == 3
        beta = _body(client, batch.id, beta=True)
        assert built[0] == 6
        assert _body(client, batch.id, beta=True) == beta and built[0] == 6
        assert _body(client, batch.id) == standard
        assert b'"diagnostics":null' in beta and b'"diagnostics"' not in standard
        assert beta.count(b"\n") == standard.count(b"\n") == 3


def test_a_canceled_and_an_expired_batch_serve_their_own_fates_every_time() -> None:
    with Emulator(delay=100) as emu:
        client = emu.client()
        canceled = client.messages.batches.create(requests=requests(10, prefix="c"))
        emu.advance(35)  # c0, c1, c2 finish at 10, 20, 30
        client.messages.batches.cancel(canceled.id)
        emu.delay = 48 * 3600
        expired = client.messages.batches.create(requests=requests(4, prefix="e"))
        emu.advance(24 * 3600)  # e0 and e1 finish by then; e2 and e3 expire
        for batch_id, want in ((canceled.id, (3, 7)), (expired.id, (2, 2))):
            body = _body(client, batch_id)
            assert _body(client, batch_id) == body
            types = [json.loads(line)["result"]["type"] for line in body.splitlines()]
            assert (types.count("succeeded"), len(types) - types.count("succeeded")) == want
        assert b'"type":"canceled"' in _body(client, canceled.id)
        assert b'"type":"expired"' in _body(client, expired.id)


def test_a_deleted_batchs_results_are_gone_and_its_file_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_results, "SPOOL_BYTES", 200)  # past 200 bytes: a file on disk
    with Emulator() as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(5))
        body = _body(client, batch.id)
        stored = emu._store.batches[batch.id].files[False]
        assert stored._file is not None and stored._memory is None
        handle = weakref.ref(stored._file)
        del stored
        client.messages.batches.delete(batch.id)
        with pytest.raises(anthropic.NotFoundError):
            _body(client, batch.id)
        gc.collect()
        assert handle() is None  # the temporary file is freed with the batch
        assert body.count(b"\n") == 5


@pytest.mark.parametrize("spool", [200, 1 << 20], ids=["on disk", "in memory"])
def test_faults_cut_and_shorten_the_stored_file_as_they_did_a_built_one(
    monkeypatch: pytest.MonkeyPatch, spool: int
) -> None:
    monkeypatch.setattr(_results, "SPOOL_BYTES", spool)
    monkeypatch.setattr(_server, "_CHUNK", 150)  # chunks that split lines
    with Emulator() as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(10))
        whole = _body(client, batch.id)
        lines = whole.splitlines(keepends=True)
        emu.faults = Faults(cut_results=1)
        cut = _cut_body(client, batch.id)
        sixth = lines[5].rstrip(b"\n")
        assert cut == b"".join(lines[:5]) + sixth[: len(sixth) // 2]
        emu.faults = Faults(short_results=1)
        assert _body(client, batch.id) == b"".join(lines[:5])
        assert _body(client, batch.id) == whole  # the faults are used up


def test_a_file_past_the_spool_size_is_the_same_bytes_as_one_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bodies = []
    for spool in (1 << 20, 300):
        monkeypatch.setattr(_results, "SPOOL_BYTES", spool)
        with Emulator(seed=3) as emu:
            client = emu.client()
            batch = client.messages.batches.create(requests=requests(20))
            bodies.append(_body(client, batch.id))
            on_disk = emu._store.batches[batch.id].files[False]._file is not None
            assert on_disk == (spool == 300)
    assert bodies[0] == bodies[1] and bodies[0].count(b"\n") == 20


def test_a_batch_is_seen_ended_only_once_its_results_file_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Retrieves and downloads of an ended batch do not wait for the emulator's lock: a batch
    # seen ended has its file whole, or a download would wait for the lock after all.
    seen: list[Any] = []
    real = _state._results_file

    def writing(batch: Any, beta: bool) -> Any:
        seen.append((batch.status, emu._store.ended(batch.id)))
        return real(batch, beta)

    monkeypatch.setattr(_state, "_results_file", writing)
    with Emulator(delay=10) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(2))
        emu.advance(10)
        assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
        assert seen == [("in_progress", None)]
        assert emu._store.ready_results(batch.id) is not None


def _raw_chunks(base_url: str, path: str) -> list[int]:
    """The sizes of the chunks of a chunked answer, read off the wire."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(base_url)
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {where.netloc}\r\nx-api-key: test-key\r\n"
            "anthropic-version: 2023-06-01\r\nConnection: close\r\n\r\n".encode()
        )
        data = b"".join(iter(lambda: sock.recv(1 << 20), b""))
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    sizes = []
    while True:
        line, _, body = body.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            return sizes
        sizes.append(size)
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


def test_a_download_goes_out_in_a_few_large_chunks() -> None:
    # Each chunk takes the interpreter's lock: a download served while the emulator works on
    # another batch (the next wave) must not wait for it thousands of times.
    with Emulator() as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(600))
        size = len(_body(client, batch.id))
        assert 256 * 1024 < size < 8 * 2**20
        assert _raw_chunks(emu.base_url, f"/v1/messages/batches/{batch.id}/results") == [size]
