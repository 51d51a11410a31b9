"""The clock a call lives by (``PollSchedule(sleep=..., clock=...)``, carried as
``MapOptions.clock``) dates its intents and leases and times its waits: nothing in the job reads
the system's clock behind its back."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from support import MODEL, answers, echo, job_dirs, run

import dsbatch
from dsbatch._lease import LEASE_SECONDS
from dsbatch.testing import Emulator, Faults, HttpFault

# Years away from the system's clock (and the emulator's): a value read from ``time.time``
# instead of the call's clock cannot pass for it.
START = 1_000_000_000.0


class FarClock:
    """A clock that moves only when slept; sleeping moves the emulator's clock too."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.t = START
        self.waits: list[float] = []
        self.on_sleep: list[list[dict]] = []  # the job's batch records at each sleep

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.on_sleep.append(_records())
        self.waits.append(seconds)
        self.t += seconds
        self.emu.advance(seconds)


def _records() -> list[dict]:
    dirs = job_dirs()
    return [
        json.loads(p.read_bytes()) for d in dirs for p in sorted((d / "batches").glob("*.json"))
    ]


def test_an_intent_and_its_lease_are_dated_by_the_call_s_clock_and_its_retries_wait_on_it():
    faults = Faults(http=[HttpFault("create", 429, times=2, retry_after=30)])
    with Emulator(delay=0, responder=echo, faults=faults) as emu:
        clock = FarClock(emu)
        schedule = dsbatch.PollSchedule(initial=60, sleep=clock.sleep, clock=clock.now)
        texts = [f"text {i}" for i in range(3)]
        out = run(Dataset.from_dict({"text": texts}), emu, poll_interval=schedule, retries=0)
        assert list(out["response"]) == answers(texts)
    # The create's two 429s were waited out on the call's clock, the intent held meanwhile.
    assert clock.waits[:2] == [30, 30]
    (held,) = clock.on_sleep[0]
    assert held["state"] == "intent" and held["holder"]
    assert held["intent_at"] == START
    assert held["lease_until"] == START + LEASE_SECONDS
    (done,) = _records()
    assert done["state"] == "ingested" and done["intent_at"] == START


@pytest.mark.parametrize("timeout", [0.0, 150.0])
def test_a_wait_s_timeout_is_counted_on_the_call_s_clock(timeout):
    with Emulator(delay=3600, responder=echo) as emu:
        clock = FarClock(emu)
        schedule = dsbatch.PollSchedule(
            initial=60, factor=1, maximum=60, sleep=clock.sleep, clock=clock.now
        )
        job = dsbatch.map(
            Dataset.from_dict({"text": ["a", "b"]}),
            lambda row: row["text"],
            client=emu.client(),
            model=MODEL,
            max_tokens=16,
            poll_interval=schedule,
            progress=False,
            wait=False,
        )
        assert job.wait(timeout=timeout).state == "running"
        # Polls every 60 s of the call's clock while the next one fits in the timeout.
        assert clock.waits == [60.0] * int(timeout // 60)
