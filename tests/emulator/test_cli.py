"""``dsbatch emulator`` as another process would use it: start, serve the SDK, stop on a signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import pytest

from dsbatch._cli import main
from dsbatch._emulator import _state
from dsbatch._emulator._faults import ENDPOINTS
from dsbatch.testing import Emulator

from .helpers import requests

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    """The environment of a child process that imports dsbatch from this checkout."""
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "dsbatch", "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    assert process.stdout is not None
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=30)
    if not line or not line[0]:
        process.kill()
        raise AssertionError(f"the emulator did not start: {process.communicate()[1]}")
    match = re.fullmatch(r"dsbatch emulator listening on (http://127\.0\.0\.1:\d+)\n", line[0])
    assert match, line[0]
    return process, match.group(1)


@pytest.fixture
def cli() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process, url = _start("--faults", "create=429x1")
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_the_cli_serves_the_sdk_until_a_signal(
    cli: tuple[subprocess.Popen[str], str], stop_signal: int
) -> None:
    process, url = cli
    client = anthropic.Anthropic(base_url=url, api_key="any-key", max_retries=0)
    with pytest.raises(anthropic.RateLimitError):  # --faults reached the server
        client.messages.batches.create(requests=requests(3))
    batch = client.messages.batches.create(requests=requests(3))
    ended = client.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and str(ended.results_url).startswith(url)
    assert sorted(r.custom_id for r in client.messages.batches.results(batch.id)) == [
        "r0",
        "r1",
        "r2",
    ]
    process.send_signal(stop_signal)
    assert process.wait(timeout=10) == 0


def test_the_cli_refuses_a_bad_fault_spec() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dsbatch", "emulator", "--port", "0", "--faults", "create=oops"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=30,
    )
    assert done.returncode != 0 and "create=oops" in done.stderr


def test_the_realtime_clock_of_the_cli_lets_delays_pass_on_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # serve_forever runs Emulator(realtime=True); fake the monotonic clock instead of waiting.
    elapsed = [0.0]
    fake_time = SimpleNamespace(time=time.time, monotonic=lambda: elapsed[0])
    monkeypatch.setattr(_state, "time", fake_time)
    with Emulator(delay=30, realtime=True) as emu:
        client = emu.client()
        batch = client.messages.batches.create(requests=requests(2))
        assert client.messages.batches.retrieve(batch.id).processing_status == "in_progress"
        elapsed[0] += 30
        assert client.messages.batches.retrieve(batch.id).processing_status == "ended"


def test_the_cli_scopes_batches_to_the_workspace_of_each_key() -> None:
    process, url = _start("--workspace", "key-a=team", "--workspace", "key-b=team")
    try:

        def client(key: str) -> anthropic.Anthropic:
            return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)

        batch = client("key-a").messages.batches.create(requests=requests(2))
        assert client("key-b").messages.batches.retrieve(batch.id).id == batch.id
        with pytest.raises(anthropic.NotFoundError):
            client("key-c").messages.batches.retrieve(batch.id)
        assert list(client("key-c").messages.batches.list()) == []
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("spec", [["oops"], ["=team"], ["key-a="], ["k=a", "k=b"]])
def test_the_cli_refuses_a_bad_workspace(
    spec: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["emulator", "--port", "0"]
    for item in spec:
        argv += ["--workspace", item]
    assert main(argv) == 2
    assert "--workspace" in capsys.readouterr().err


def test_the_cli_serves_the_live_endpoints_and_their_faults() -> None:
    process, url = _start("--faults", "messages=529x1,redacted_thinking=1")
    try:
        client = anthropic.Anthropic(base_url=url, api_key="any-key", max_retries=0)
        params: Any = {
            "model": "claude-haiku-4-5",
            "max_tokens": 2048,
            "messages": [{"role": "user", "content": "Hi"}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        }
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            client.messages.create(**params)
        assert overloaded.value.status_code == 529
        live = client.messages.with_raw_response.create(**params)
        assert live.headers["x-dsbatch-emulator"] == "1"
        assert [block.type for block in live.parse().content] == ["thinking", "text"]
        counted = client.messages.count_tokens(model=params["model"], messages=params["messages"])
        assert counted.input_tokens == 1
        batch = client.messages.batches.create(requests=[{"custom_id": "t", "params": params}])
        client.messages.batches.retrieve(batch.id)
        (line,) = client.messages.batches.results(batch.id)
        assert line.result.type == "succeeded"
        assert line.result.message.content[0].type == "redacted_thinking"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_the_cli_help_names_every_fault_and_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["emulator", "--help"])
    text = capsys.readouterr().out
    for name in (*ENDPOINTS, "lose_create", "cut_results", "short_results", "redacted_thinking"):
        assert name in text
    for fraction in ("errored=F", "invalid=F", "expired=F", "preamble=F", "no_json=F"):
        assert fraction in text
    assert "POST /v1/messages/count_tokens" in text and "x-dsbatch-emulator: 1" in text


def test_the_emulator_docstring_documents_the_endpoints_header_and_faults() -> None:
    doc = " ".join((Emulator.__doc__ or "").split())
    for phrase in (
        "POST /v1/messages",
        "POST /v1/messages/count_tokens",
        "?beta=true",
        "x-dsbatch-emulator: 1",
        "redacted_thinking",
        "``messages``, ``count_tokens``",
        "cache_creation_input_tokens",
    ):
        assert phrase in doc


def test_a_realtime_emulator_works_on_a_batch_in_the_background_once_created() -> None:
    with Emulator(delay=0, realtime=True) as emu:
        store = emu._store
        finished = threading.Event()
        real_finish = store._finish

        def finish(*args: Any, **kwargs: Any) -> None:
            real_finish(*args, **kwargs)
            finished.set()

        store._finish = finish  # type: ignore[method-assign]
        client = emu.client(max_retries=0)
        batch = client.messages.batches.create(requests=requests(3))
        assert finished.wait(30), "the batch was not worked on until looked at"
        assert emu.calls["retrieve"] == 0 and emu.calls["results"] == 0
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.request_counts.succeeded == 3
        assert len(list(client.messages.batches.results(batch.id))) == 3


def test_an_ended_batch_is_retrieved_and_downloaded_while_another_is_worked_on() -> None:
    # The state's lock held, as while a realtime emulator works on a large batch: an ended
    # batch is still answered (the API serves one batch's results while it works on the next),
    # and the calls are counted; a batch still running waits for the lock (not asked here).
    with Emulator(delay=0) as emu:
        client = emu.client(max_retries=0)
        batch = client.messages.batches.create(requests=requests(4))
        assert client.messages.batches.retrieve(batch.id).processing_status == "ended"
        answers: list[Any] = []

        def look() -> None:
            answers.append(client.messages.batches.retrieve(batch.id).request_counts.succeeded)
            answers.append(len(list(client.messages.batches.results(batch.id))))

        with emu.lock:
            calls = emu.calls["retrieve"]
            looking = threading.Thread(target=look)
            looking.start()
            looking.join(30)
            assert answers == [4, 4]
            assert emu.calls["retrieve"] == calls + 2  # the download looks the batch up first
