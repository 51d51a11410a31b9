"""A full-size batch through the SDK: 100,000 requests created, ended and downloaded."""

from __future__ import annotations

import json

import pytest

from dsbatch.testing import Emulator

from .helpers import requests


@pytest.mark.slow
def test_a_100k_request_batch_round_trips_through_the_sdk() -> None:
    reqs = requests(100_000)
    with Emulator(delay=3600) as emu:
        client = emu.client(max_retries=0, timeout=120)
        batch = client.messages.batches.create(requests=reqs)
        assert batch.request_counts.processing == 100_000
        emu.advance(3600)
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.request_counts.succeeded == 100_000
        with client.messages.batches.with_streaming_response.results(batch.id) as response:
            body = response.read()
    lines = body.split(b"\n")
    assert lines.pop() == b""  # every line, the last one too, ends with "\n"
    assert len(lines) == 100_000
    custom_ids = {json.loads(line)["custom_id"] for line in lines}
    assert custom_ids == {request["custom_id"] for request in reqs}
    assert len(emu.received) == 100_000 and not emu.duplicate_custom_ids
