"""Headers: what a create's headers leave on its batch, and the Date the emulator answers with."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import anthropic
import pytest

from dsbatch._limits import API_VERSION_2026
from dsbatch.testing import Emulator, Faults, HttpFault

from .helpers import request, requests


def test_the_beta_header_of_a_create_is_kept_with_its_batch(emu: Emulator) -> None:
    client = emu.client()
    plain = client.messages.batches.create(requests=requests(1))
    assert emu.batch_betas(plain.id) == []
    beta = client.messages.batches.create(
        requests=requests(1),
        extra_headers={"anthropic-beta": "output-300k-2026-03-24, files-api-2025-04-14"},
    )
    assert emu.batch_betas(beta.id) == ["output-300k-2026-03-24", "files-api-2025-04-14"]
    assert emu.last_create_headers["anthropic-beta"] == (
        "output-300k-2026-03-24, files-api-2025-04-14"
    )
    assert emu.batch_betas(plain.id) == []  # each batch has its own


def test_the_sdks_beta_batches_send_betas_the_emulator_records(emu: Emulator) -> None:
    client = emu.client()
    batch = client.beta.messages.batches.create(
        requests=requests(2), betas=["output-300k-2026-03-24"]
    )
    assert emu.batch_betas(batch.id) == ["output-300k-2026-03-24"]
    assert emu.batch_version(batch.id) == API_VERSION_2026
    assert client.beta.messages.batches.retrieve(batch.id).request_counts.succeeded == 2


def test_last_create_headers_are_lower_cased_and_kept_for_a_refused_create(emu: Emulator) -> None:
    client = emu.client(max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(
            requests=[request("bad id")], extra_headers={"X-Trace-Id": "t-1"}
        )
    headers = emu.last_create_headers
    assert headers["x-trace-id"] == "t-1"
    assert headers["anthropic-version"] == API_VERSION_2026
    assert headers["content-type"] == "application/json"
    assert not emu.batches


def test_batch_headers_of_an_unknown_or_deleted_batch_are_a_key_error(emu: Emulator) -> None:
    client = emu.client()
    batch = client.messages.batches.create(requests=requests(1))
    client.messages.batches.retrieve(batch.id)
    client.messages.batches.delete(batch.id)
    with pytest.raises(KeyError):
        emu.batch_version(batch.id)
    with pytest.raises(KeyError):
        emu.batch_betas(batch.id)


def _date(response: Any) -> datetime:
    return parsedate_to_datetime(response.headers["date"])


def test_the_date_header_follows_the_emulator_clock_not_the_wall_clock() -> None:
    with Emulator(delay=3600) as emu:
        raw = emu.client().messages.batches.with_raw_response
        created = raw.create(requests=requests(1))
        batch_id = created.parse().id
        before = _date(raw.retrieve(batch_id))
        assert abs(before.timestamp() - emu.now()) < 1
        emu.advance(86400)
        after = _date(raw.retrieve(batch_id))
        assert after - before == timedelta(days=1)
        assert after > datetime.now(timezone.utc) + timedelta(hours=23)


def test_error_answers_carry_the_emulator_date_too() -> None:
    with Emulator(faults=Faults(http=[HttpFault("list", 429)])) as emu:
        emu.advance(7 * 86400)
        client = emu.client(max_retries=0)
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.batches.list()
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.messages.batches.retrieve("msgbatch_nope")
        for error in (limited.value, missing.value):
            date = parsedate_to_datetime(error.response.headers["date"])
            assert abs(date.timestamp() - emu.now()) < 1


# --- what every answer carries -----------------------------------------------------------------


def test_the_request_id_is_unique_to_each_call_on_one_connection(emu: Emulator) -> None:
    raw = emu.client().messages.batches.with_raw_response  # one client: one kept-alive connection
    ids = [raw.list().headers["request-id"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(i.startswith("req_") for i in ids)
    with pytest.raises(anthropic.NotFoundError) as missing:
        emu.client(max_retries=0).messages.batches.retrieve("msgbatch_nope")
    body: Any = missing.value.body
    assert body["request_id"] == missing.value.response.headers["request-id"]
    assert body["request_id"] not in ids


def test_every_answer_says_it_comes_from_the_emulator() -> None:
    with Emulator(max_bytes=5_000) as emu:
        client = emu.client(max_retries=0)
        raw = client.messages.batches.with_raw_response
        batch_id = raw.create(requests=requests(2)).parse().id
        answers: list[Any] = [
            raw.list(),
            client.messages.with_raw_response.create(
                model="claude-haiku-4-5",
                max_tokens=16,
                messages=[{"role": "user", "content": "Hi"}],
            ),
            client.messages.with_raw_response.count_tokens(
                model="claude-haiku-4-5", messages=[{"role": "user", "content": "Hi"}]
            ),
        ]
        with client.messages.batches.with_streaming_response.results(batch_id) as streamed:
            answers.append(streamed)
        emu.faults.http.append(HttpFault("retrieve", 529))
        for call in (
            lambda: client.messages.batches.retrieve(batch_id),  # the 529 fault
            lambda: client.messages.batches.retrieve("msgbatch_nope"),  # 404
            lambda: client.get("/v1/nothing/here", cast_to=object),  # an unknown route
            lambda: client.messages.batches.create(requests=requests(100)),  # 413
            lambda: client.messages.batches.list(extra_headers={"Authorization": anthropic.Omit()}),
        ):
            with pytest.raises(anthropic.APIStatusError) as caught:
                call()
            answers.append(caught.value.response)
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200, 200, 200, 200, 529, 404, 404, 413, 401]
    assert [answer.headers.get("x-dsbatch-emulator") for answer in answers] == ["1"] * 9
