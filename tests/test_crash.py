"""A process that dies anywhere in a job is replaced by a new one that neither loses a row nor
pays twice."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from datasets import Dataset
from support import MODEL, echo, prompt

import dsbatch
from dsbatch._backend import Backend
from dsbatch.testing import Emulator

TEXTS = [f"crash text {i}" for i in range(300)]


def resume(emu, ds):
    return dsbatch.map(
        ds,
        prompt,
        model=MODEL,
        client=emu.client(),
        progress=False,
        poll_interval=dsbatch.PollSchedule(initial=60, sleep=emu.advance),
    )


class Died(BaseException):
    """Stands for the process dying: nothing after it runs."""


def test_death_right_after_create_reached_the_api_is_reconciled(monkeypatch):
    real_create = Backend.create

    def create_then_die(self, body, betas=()):
        real_create(self, body, betas)
        raise Died()

    with Emulator(delay=600, responder=echo) as emu:
        ds = Dataset.from_dict({"text": TEXTS})
        monkeypatch.setattr(Backend, "create", create_then_die)
        with pytest.raises(Died):
            resume(emu, ds)
        monkeypatch.setattr(Backend, "create", real_create)
        assert len(emu.batches) == 1

        out = resume(emu, ds)
        assert len(emu.batches) == 1 and emu.calls["create"] == 1
        assert not emu.duplicate_custom_ids
        assert out["response"] == [f"echo: {t}" for t in TEXTS]


def test_death_before_create_sends_the_batch_on_resume(monkeypatch):
    real_create = Backend.create

    def die(self, body, betas=()):
        raise Died()

    with Emulator(delay=0, responder=echo) as emu:
        ds = Dataset.from_dict({"text": TEXTS})
        monkeypatch.setattr(Backend, "create", die)
        with pytest.raises(Died):
            resume(emu, ds)
        monkeypatch.setattr(Backend, "create", real_create)
        assert len(emu.batches) == 0
        out = resume(emu, ds)
        assert len(emu.batches) == 1
        assert out["response"] == [f"echo: {t}" for t in TEXTS]


def test_death_while_ingesting_keeps_every_paid_result(monkeypatch):
    from dsbatch import _ingest

    real_parse = _ingest.parse_results
    calls = []

    def parse_then_die(data, *, batch_id, batch_created_at=None, **kwargs):
        calls.append(batch_id)
        if len(calls) == 1:
            raise Died()
        return real_parse(data, batch_id=batch_id, batch_created_at=batch_created_at, **kwargs)

    with Emulator(delay=0, responder=echo) as emu:
        ds = Dataset.from_dict({"text": TEXTS})
        monkeypatch.setattr(_ingest, "parse_results", parse_then_die)
        with pytest.raises(Died):
            resume(emu, ds)
        out = resume(emu, ds)
        assert emu.calls["create"] == 1
        assert out["response"] == [f"echo: {t}" for t in TEXTS]


WORKER = textwrap.dedent("""
    import logging, sys
    import anthropic, dsbatch
    from datasets import Dataset
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    url, cache = sys.argv[1], sys.argv[2]
    ds = Dataset.from_dict({"text": [f"crash text {i}" for i in range(300)]})
    client = anthropic.Anthropic(base_url=url, api_key="worker-key")
    dsbatch.map(ds, lambda r: r["text"], model="claude-haiku-4-5", client=client,
                cache_dir=cache, poll_interval=3600, progress=False)
    print("finished", flush=True)
""")


def _printed(process: subprocess.Popen, needle: str, *, timeout: float) -> bool:
    """Whether the process prints a line holding ``needle`` within ``timeout`` seconds (read
    by a thread: a worker that hangs silently must not hang the test)."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            if needle in lines.get(timeout=left):
                return True
        except queue.Empty:
            return False
    return False


@pytest.mark.slow
def test_a_killed_process_is_resumed_by_the_next_one(tmp_path):
    with Emulator(delay=3600, responder=echo, api_key="worker-key") as emu:
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, emu.base_url, str(tmp_path / "cache")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one pipe, drained by the reader thread
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")},
        )
        try:
            if not _printed(worker, "created msgbatch_", timeout=120):
                pytest.fail("the worker never said it created a batch")
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        assert worker.returncode == -signal.SIGKILL
        assert len(emu.batches) == 1

        ds = Dataset.from_dict({"text": TEXTS})
        out = dsbatch.map(
            ds,
            prompt,
            model=MODEL,
            client=emu.client(),
            progress=False,
            cache_dir=tmp_path / "cache",
            poll_interval=dsbatch.PollSchedule(initial=600, sleep=emu.advance),
        )
        assert emu.calls["create"] == 1
        assert out["response"] == [f"echo: {t}" for t in TEXTS]
