"""Tests written for bugs seeded by ``scripts/seed_bugs.py`` that the rest of the suite caught
only by chance, or not at all: each names the bug it stands for."""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest
from datasets import Dataset
from support import answers, echo, run

import dsbatch
from dsbatch._backend import Backend
from dsbatch._ledger import JobLedger
from dsbatch.testing import Emulator


def texts(n, prefix="text"):
    return [f"{prefix} {i}" for i in range(n)]


class _Blocked(logging.Handler):
    """Sets ``event`` when a job says it waits for the cache-wide lock."""

    def __init__(self, event: threading.Event) -> None:
        super().__init__(logging.WARNING)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting for the cache lock" in record.getMessage():
            self.event.set()


def test_a_job_deciding_while_another_writes_its_intent_waits_and_buys_nothing_twice(
    monkeypatch,
):
    """Seeded bug ``no-cache-lock``: two jobs deciding at once both buy the requests they share.

    The first job stops between deciding and writing its intent (still holding the cache lock)
    and starts the second job, which shares ten of its requests. The first goes on once the
    second has either decided too or said it waits for the lock: no race, no real-time wait."""
    first_rows, second_rows = texts(10), [*texts(10), "only the second job asks this"]
    second_decided = threading.Event()
    outcome: dict[str, object] = {}
    real_new_record = JobLedger.new_record
    main = threading.current_thread()

    def second_job() -> None:
        try:
            outcome["out"] = run(Dataset.from_dict({"text": second_rows}), emu, wait=60, retries=0)
        except BaseException as e:  # re-raised in the test's thread
            outcome["error"] = e
        finally:
            second_decided.set()

    other = threading.Thread(target=second_job)

    def new_record(self, custom_ids, **kwargs):
        if threading.current_thread() is main and other.ident is None:
            other.start()
            second_decided.wait()
        elif threading.current_thread() is other:
            second_decided.set()
        return real_new_record(self, custom_ids, **kwargs)

    monkeypatch.setattr(JobLedger, "new_record", new_record)
    handler = _Blocked(second_decided)
    logging.getLogger("dsbatch").addHandler(handler)
    try:
        with Emulator(delay=600, responder=echo) as emu:
            first = run(Dataset.from_dict({"text": first_rows}), emu, wait=60, retries=0)
            other.join()
            if "error" in outcome:
                raise outcome["error"]  # type: ignore[misc]
            second = outcome["out"]
            assert not emu.duplicate_custom_ids
            assert len(emu.received) == 11 and emu.calls["create"] == 2
    finally:
        logging.getLogger("dsbatch").removeHandler(handler)
    assert list(first["response"]) == answers(first_rows)
    assert list(second["response"]) == answers(second_rows)  # type: ignore[index]


def test_our_own_batch_answering_with_other_requests_is_reported_and_never_bought_again(
    monkeypatch,
):
    """Seeded bug ``own-batch-given-back``: a batch our own create made (not one a reconcile
    adopted) whose results hold other requests is given back, and its requests bought again.

    It is the API answering with another batch's data: reported, and nothing is sent again; the
    same call, once the API answers right, reads the batch it already paid for."""
    with Emulator(delay=0, responder=echo) as emu:
        run(Dataset.from_dict({"text": texts(5, "other")}), emu, retries=0)
        (theirs,) = emu.batches
        real_download = Backend.download
        swapped: list[str] = []

        def download(self, batch):
            if batch.id != theirs and not swapped:
                swapped.append(batch.id)  # once: the next download of our batch is right
                batch = dataclasses.replace(batch, id=theirs)
            return real_download(self, batch)

        monkeypatch.setattr(Backend, "download", download)
        ds = Dataset.from_dict({"text": texts(5)})
        with pytest.raises(dsbatch.BatchAPIError, match="does not hold the requests") as info:
            run(ds, emu, retries=0)
        assert swapped and swapped[0] in str(info.value)
        assert emu.calls["create"] == 2 and len(emu.received) == 10
        out = run(ds, emu, retries=0)
        assert list(out["response"]) == answers(texts(5))
        assert emu.calls["create"] == 2 and len(emu.received) == 10
        assert not emu.duplicate_custom_ids
