"""The first contact fails fast and says where: a base URL nothing answers at fails within
seconds while the job never created a batch, naming the URL and where it came from; once a batch
exists, the same failure is waited out as an outage."""

from __future__ import annotations

import logging
import socket

import anthropic
import pytest
from datasets import Dataset
from support import MODEL, echo, prompt, run

import dsbatch
from dsbatch import BatchAPIError
from dsbatch._backend import Unreachable
from dsbatch._clock import Clock
from dsbatch._errors import BatchAPIError as _BatchAPIError
from dsbatch._poll import first_contact_retrying
from dsbatch.testing import Emulator, Faults, HttpFault

# The waits of the first contact (1, 2, 4 s) stay well under this; an outage's run to minutes.
BOUND_SECONDS = 30.0


def closed_port() -> int:
    """A port nothing listens on: bound, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VirtualTime:
    """A clock and a sleep that records its waits instead of waiting."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def schedule(self) -> dsbatch.PollSchedule:
        return dsbatch.PollSchedule(sleep=self.sleep, clock=lambda: self.now)


def assert_clean(message: str) -> None:
    assert ".." not in message and ".;" not in message and "error.;" not in message


def test_a_base_url_nothing_answers_at_fails_in_seconds_naming_it(caplog):
    url = f"http://127.0.0.1:{closed_port()}"
    time = VirtualTime()
    ds = Dataset.from_dict({"text": ["a", "b"]})

    with caplog.at_level(logging.WARNING, logger="dsbatch"), pytest.raises(BatchAPIError) as info:
        dsbatch.map(
            ds,
            prompt,
            model=MODEL,
            client=anthropic.Anthropic(base_url=url, api_key="test-key"),
            poll_interval=time.schedule(),
            progress=False,
        )

    message = str(info.value)
    assert time.waits == [1.0, 2.0, 4.0]
    assert sum(time.waits) < BOUND_SECONDS
    assert message.startswith(
        f"checking the API before the first batch failed: cannot connect to {url} ("
    )
    assert "Connection refused" in message
    assert "that base URL came from the client given to dsbatch.map (client=)" in message
    assert message.endswith("Nothing was bought: fix the cause and run the same call again.")
    assert "listing batches" not in message
    assert_clean(message)
    retries = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == 3
    for line in retries:
        assert_clean(line)
        assert url in line


def test_the_base_url_from_the_environment_is_named_as_such(monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    time = VirtualTime()

    with pytest.raises(BatchAPIError) as info:
        dsbatch.map(
            Dataset.from_dict({"text": ["a"]}),
            prompt,
            model=MODEL,
            poll_interval=time.schedule(),
            progress=False,
        )

    assert f"cannot connect to {url} (" in str(info.value)
    assert "that base URL came from ANTHROPIC_BASE_URL" in str(info.value)
    assert sum(time.waits) < BOUND_SECONDS
    # A client that read the same variable says so too.
    with pytest.raises(BatchAPIError, match="client=\\), which read it from ANTHROPIC_BASE_URL"):
        dsbatch.map(
            Dataset.from_dict({"text": ["a"]}),
            prompt,
            model=MODEL,
            client=anthropic.Anthropic(),
            poll_interval=time.schedule(),
            progress=False,
        )


def test_once_a_batch_exists_an_unreachable_api_is_waited_out_as_an_outage():
    ds = Dataset.from_dict({"text": ["a", "b"]})
    with Emulator(delay=0, responder=echo, faults=Faults(errored=1.0)) as emu:
        first = run(ds, emu, max_attempts=1)
        url = emu.base_url
    assert [s["status"] for s in first["dsbatch"]] == ["errored", "errored"]

    # The same job (the same server, now gone), one more attempt allowed: the errored requests
    # go out again. The job has created a batch before: this is an outage, waited out.
    time = VirtualTime()
    with pytest.raises(BatchAPIError) as info:
        dsbatch.map(
            ds,
            prompt,
            model=MODEL,
            max_tokens=256,
            max_attempts=2,
            client=anthropic.Anthropic(base_url=url, api_key="test-key"),
            poll_interval=time.schedule(),
            progress=False,
        )

    assert time.waits == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 120.0]
    assert "checking the API before a new batch failed: cannot connect to" in str(info.value)
    assert_clean(str(info.value))


def test_on_first_contact_only_an_unreachable_api_gives_up_early():
    time = VirtualTime()
    clock = Clock(now=lambda: time.now, sleep=time.sleep)
    retrying = first_contact_retrying(time.schedule(), clock, lambda e: True)
    calls = {"n": 0}

    def unavailable() -> None:
        calls["n"] += 1
        raise _BatchAPIError("checking the API failed with HTTP 503: overloaded", status_code=503)

    with pytest.raises(_BatchAPIError, match="HTTP 503"):
        retrying.call(unavailable)
    assert calls["n"] == 8  # the usual patience: a server that answers is having an outage

    calls["n"] = 0
    time.waits.clear()

    def refused() -> None:
        calls["n"] += 1
        raise Unreachable("cannot connect")

    with pytest.raises(Unreachable):
        retrying.call(refused)
    assert calls["n"] == 4 and time.waits == [1.0, 2.0, 4.0]


def test_an_api_error_ending_in_a_full_stop_reads_as_one_sentence(emu):
    # The emulator's 403 says "... the specified resource." as the API does.
    emu.faults.http.append(HttpFault("create", 403))

    with pytest.raises(BatchAPIError) as info:
        run(Dataset.from_dict({"text": ["a"]}), emu)

    message = str(info.value)
    assert (
        "creating a batch failed with HTTP 403: Your API key does not have permission to use "
        "the specified resource"
    ) in message
    # The API's own words without the body around them, its error type, one full stop.
    assert "Error code" not in message and "request_id" not in message
    assert message.endswith(
        "(permission_error). Nothing was bought: fix the cause and run the same call again."
    )
    assert_clean(message)


def test_the_sdks_own_messages_lose_their_closing_full_stop():
    import httpx2  # the SDK's HTTP library

    from dsbatch._backend import _api_error

    lost = anthropic.APIConnectionError(request=httpx2.Request("GET", "http://127.0.0.1:9"))
    assert str(lost) == "Connection error."

    error = _api_error("checking batch msgbatch_1", lost)

    assert str(error) == "checking batch msgbatch_1 failed: Connection error"
    assert not isinstance(error, Unreachable)  # a lost answer is not a refused connection


def test_a_wrong_base_url_fails_in_seconds_when_no_origin_check_reached_it_first():
    # A client that says it is the emulator's needs no call to know its origin: the first call
    # is the one that dates the first batch's intent, and it gives up as early.
    url = f"http://127.0.0.1:{closed_port()}"
    time = VirtualTime()
    client = anthropic.Anthropic(
        base_url=url, api_key="test-key", default_headers={"x-dsbatch-emulator": "1"}
    )
    with pytest.raises(BatchAPIError) as info:
        dsbatch.map(
            Dataset.from_dict({"text": ["a", "b"]}),
            prompt,
            model=MODEL,
            client=client,
            poll_interval=time.schedule(),
            progress=False,
        )
    assert time.waits == [1.0, 2.0, 4.0]
    message = str(info.value)
    assert message.startswith("could not create batch #")
    assert f"cannot connect to {url}" in message
    assert message.endswith("Nothing was bought: fix the cause and run the same call again.")
    assert_clean(message)
