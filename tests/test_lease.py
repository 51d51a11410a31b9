"""No call owns a job; only an intent (a batch that may be being created right now) is held, by
a lease: a live holder is waited for, a lease that ran out or a holder whose process is gone is
taken over (after looking for the batch), and every move is checked against the stored record."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import pytest
from datasets import Dataset
from support import answers, echo, ids_of, run, sent

from dsbatch._lease import LEASE_SECONDS, Holder, holder_gone
from dsbatch._ledger import Ledger, StaleRecord
from dsbatch._records import BatchState
from dsbatch._recovery import job_records
from dsbatch.testing import Emulator


def texts(n, prefix="text"):
    return [f"{prefix} {i}" for i in range(n)]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def intent_of_another_call(emu, rows, holder):
    """Another job's intent for ``rows``, held by ``holder`` for the lease's length."""
    job = Ledger().job("another-job")
    return job.new_record(
        ids_of(rows),
        intent_at=emu.now(),
        origin="emulator",
        holder=holder,
        lease_until=emu.now() + LEASE_SECONDS,
    )


def test_an_intent_whose_holder_lives_is_waited_for_until_its_lease_runs_out(caplog):
    rows = texts(6)
    with Emulator(delay=0, responder=echo) as emu:
        start = emu.now()
        alive = f"{socket.gethostname()}:{Holder.new().pid}:a-call-of-this-process"
        intent_of_another_call(emu, rows[:4], alive)
        with caplog.at_level(logging.INFO, logger="dsbatch"):
            out = run(Dataset.from_dict({"text": rows}), emu, wait=60)
        assert list(out["response"]) == answers(rows)
        # Its four requests were sent only once the lease ran out (and no batch was found).
        assert emu.now() - start >= LEASE_SECONDS
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 2
    assert "another call is creating it" in caplog.text
    (record,) = job_records(Ledger().job("another-job"))
    assert record.state is BatchState.UNSENT and record.holder == ""


def test_an_intent_whose_holders_process_is_gone_is_taken_over_at_once():
    rows = texts(6)
    with Emulator(delay=0, responder=echo) as emu:
        start = emu.now()
        intent_of_another_call(emu, rows[:4], f"{socket.gethostname()}:{dead_pid()}:gone")
        out = run(Dataset.from_dict({"text": rows}), emu, wait=60)
        assert list(out["response"]) == answers(rows)
        assert emu.now() - start < LEASE_SECONDS
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1)
        assert emu.calls["list"] >= 1  # looked for its batch before buying its requests


def test_a_holder_is_gone_only_when_its_process_on_this_host_is():
    host = socket.gethostname()
    assert holder_gone(f"{host}:{dead_pid()}:x")
    assert not holder_gone(str(Holder.new()))  # this process
    assert not holder_gone(f"another-host:{dead_pid()}:x")  # cannot be checked: not gone
    assert not holder_gone("not a holder")
    assert Holder.parse(str(Holder(host, 42, "tok"))) == Holder(host, 42, "tok")


def test_a_move_made_on_a_stale_copy_is_refused_and_writes_nothing(tmp_path):
    job = Ledger(tmp_path / "cache").job("job")
    record = job.new_record(["dsb_a", "dsb_b"], intent_at=1.0, holder="h:1:me", lease_until=9.0)
    mine = job_records(job)[0]
    theirs = job_records(job)[0]
    job.hold(theirs, "h:2:them", 99.0)  # another call took the intent over
    with pytest.raises(StaleRecord):
        job.mark_submitted(mine, "msgbatch_mine", 2.0)  # the old holder may not record it
    with pytest.raises(StaleRecord):
        job.hold(mine, "h:1:me", 50.0)  # nor renew its lease
    job.mark_submitted(theirs, "msgbatch_theirs", 3.0)
    with pytest.raises(StaleRecord):
        job.mark_unsent(mine, "refused")
    (stored,) = job_records(job)
    assert (stored.state, stored.batch_id, stored.holder) == (
        BatchState.SUBMITTED,
        "msgbatch_theirs",
        "",
    )
    assert record.seq == stored.seq


def test_missing_keeps_the_first_moment_and_found_again_restarts_it(tmp_path):
    job = Ledger(tmp_path / "cache").job("job")
    record = job.new_record(["dsb_a"], intent_at=1.0, holder="h:1:me")
    job.mark_submitted(record, "msgbatch_x", 2.0)
    other = job_records(job)[0]
    job.note_missing(record, 100.0)
    job.note_missing(other, 400.0)  # another call saw it missing later: the first moment stays
    assert other.missing_since == 100.0 and job_records(job)[0].missing_since == 100.0
    job.note_missing(other, None)  # found again
    job.note_missing(record, 700.0)
    assert job_records(job)[0].missing_since == 700.0
