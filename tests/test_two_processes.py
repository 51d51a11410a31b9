"""Issue 7 across processes: real subprocesses sharing one cache, talking to an emulator that
this test drives (its virtual clock moves only when the test says so).

The workers poll on a short real sleep (bounded by their own deadline); the test never sleeps:
it waits for their output lines with a timeout, and ends their batches with ``emu.advance``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from datasets import Dataset
from support import MODEL, answers, echo, ids_of, observe_queue, prompt, sent, virtual

import dsbatch
from dsbatch.testing import Emulator

pytestmark = pytest.mark.slow

KEY = "sk-worker"

WORKER = textwrap.dedent(
    """
    import ctypes, json, logging, os, sys, time
    from pathlib import Path

    args = json.loads(sys.argv[1])
    deadline = time.monotonic() + args["patience"]

    if args.get("read_only") and os.geteuid() == 0:
        # Root ignores file modes: give up the capabilities that let it (DAC override and
        # read-search, fowner), so the cache's modes apply to this process as to any user.
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]

        libc = ctypes.CDLL(None, use_errno=True)
        header, data = Header(0x20080522, 0), (Data * 2)()
        keep = ~((1 << 1) | (1 << 2) | (1 << 3)) & 0xFFFFFFFF
        ok = libc.capget(ctypes.byref(header), data) == 0
        for half in data:
            half.effective &= keep
            half.permitted &= keep
            half.inheritable &= keep
        if not (ok and libc.capset(ctypes.byref(header), data) == 0):
            print("NO-CAPS", ctypes.get_errno(), flush=True)
            sys.exit(3)

    import anthropic, dsbatch
    from datasets import Dataset

    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)


    def sleep(seconds):
        # The test moves the emulator's clock; this only paces the polls, for a bounded time.
        if time.monotonic() > deadline:
            raise SystemExit("worker: gave up waiting for its batches")
        time.sleep(0.05)


    ds = Dataset.from_dict({"text": args["texts"]})
    client = anthropic.Anthropic(base_url=args["url"], api_key=args["key"], max_retries=0)
    print("ready", flush=True)
    go = args.get("go")
    while go and not Path(go).exists():
        if time.monotonic() > deadline:
            raise SystemExit("worker: never told to go")
        time.sleep(0.005)
    try:
        out = dsbatch.map(
            ds,
            lambda row: row["text"],
            model=args["model"],
            max_tokens=256,
            client=client,
            cache_dir=args["cache"],
            poll_interval=dsbatch.PollSchedule(initial=0.05, factor=1, maximum=0.05, sleep=sleep),
            progress=False,
            **args.get("map", {}),
        )
    except dsbatch.DsbatchError as e:
        error = {"type": type(e).__name__, "message": str(e), "path": getattr(e, "path", None)}
        print("ERROR " + json.dumps(error), flush=True)
        sys.exit(2)
    status = list(out["dsbatch"])
    print("RESULT " + json.dumps({"response": list(out["response"]), "status": status}), flush=True)
    """
)


class Worker:
    """One ``dsbatch.map`` in a subprocess; its stdout is read line by line, never unbounded."""

    def __init__(self, tmp_path: Path, name: str, **args) -> None:
        self.name = name
        self._stderr_path = tmp_path / f"{name}.stderr"
        self._stderr = open(self._stderr_path, "wb")  # noqa: SIM115 - closed in close()
        args = {"key": KEY, "model": MODEL, "patience": 60.0, **args}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(args, default=str)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")},
        )
        self.lines: list[str] = []
        self._seen = 0
        self._pending = b""

    def wait_for(self, *texts: str, timeout: float = 30.0) -> str:
        """The next line holding one of ``texts``; fails the test on timeout or an early exit."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            for index in range(self._seen, len(self.lines)):
                if any(text in self.lines[index] for text in texts):
                    self._seen = index + 1
                    return self.lines[index]
            self._seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"no line holding {texts} within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.proc.wait(timeout=10)
                self._fail(f"it exited ({self.proc.returncode}) before a line holding {texts}")
            *complete, self._pending = (self._pending + chunk).split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in complete)

    def outcome(self, timeout: float = 30.0) -> dict:
        """What the call returned (``response``, ``status``) or raised (``error``)."""
        line = self.wait_for("RESULT ", "ERROR ", "NO-CAPS", timeout=timeout)
        self.proc.wait(timeout=10)
        if line.startswith("NO-CAPS"):
            pytest.skip(f"cannot drop root's file capabilities here ({line})")
        kind, _, payload = line.partition(" ")
        return {"error": json.loads(payload)} if kind == "ERROR" else json.loads(payload)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def _fail(self, why: str) -> None:
        stderr = self._stderr_path.read_text(errors="replace")[-3000:]
        tail = "\n".join(self.lines[-20:])
        pytest.fail(f"worker {self.name}: {why}\n--- stdout\n{tail}\n--- stderr\n{stderr}")


@pytest.fixture
def workers(tmp_path):
    started: list[Worker] = []

    def start(name: str, **args) -> Worker:
        worker = Worker(tmp_path, name, **args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def texts(n, prefix="row"):
    return [f"{prefix} {i}" for i in range(n)]


def record_of(cache: Path, batch_id: str) -> dict:
    """The batch record, of whichever job, that holds ``batch_id``."""
    found = [json.loads(p.read_bytes()) for p in cache.glob("jobs/*/batches/*.json")]
    (record,) = [r for r in found if r["batch_id"] == batch_id]
    return record


# -- case 2: two processes, two jobs sharing requests, one cache --------------------------------


def test_2_two_processes_sharing_fifty_rows_buy_each_of_the_150_requests_once(tmp_path, workers):
    cache, go = tmp_path / "cache", tmp_path / "go"
    rows = texts(150)
    with Emulator(delay=3600, responder=echo, api_key=KEY) as emu:
        common = {"url": emu.base_url, "cache": cache, "go": go}
        first = workers("first", texts=rows[:100], **common)
        second = workers("second", texts=rows[50:], **common)
        first.wait_for("ready")
        second.wait_for("ready")
        go.touch()  # both call dsbatch.map at once
        first.wait_for("created msgbatch_")
        second.wait_for("created msgbatch_")
        # Each decided under the cache-wide lock, seeing the other's batch in flight.
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1)
        sizes = sorted(batch["request_counts"]["processing"] for batch in emu.batches.values())
        assert emu.calls["create"] == 2 and sizes == [50, 100]
        emu.advance(3600)
        one, two = first.outcome(), second.outcome()
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 2
    assert one["response"] == answers(rows[:100])
    assert two["response"] == answers(rows[50:])
    for outcome in (one, two):
        assert {(s["status"], s["attempts"]) for s in outcome["status"]} == {("succeeded", 1)}


def test_2_a_process_whose_partner_was_killed_reads_the_dead_ones_batch_itself(tmp_path, workers):
    cache, go = tmp_path / "cache", tmp_path / "go"
    rows = texts(150)
    with Emulator(delay=3600, responder=echo, api_key=KEY) as emu:
        first = workers("first", texts=rows[:100], url=emu.base_url, cache=cache)
        second = workers("second", texts=rows[50:], url=emu.base_url, cache=cache, go=go)
        first.wait_for("created msgbatch_")
        (dead_batch,) = emu.batches
        go.touch()  # the second starts once the first's batch is in flight
        second.wait_for("created msgbatch_")
        first.kill()  # rows 50-99 are in its batch, still running
        emu.advance(3600)
        outcome = second.outcome()
        assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 2
    assert outcome["response"] == answers(rows[50:])
    # The survivor polled and stored the dead process's batch, for the dead job too.
    assert record_of(cache, dead_batch)["state"] == "ingested"
    assert (cache / "results" / f"{dead_batch}.parquet").exists()


# -- issue 14: two processes under one processing-queue limit ---------------------------------


def _until(condition, timeout: float = 60.0) -> None:
    """Wait for the workers (other processes) to bring ``condition`` about; fail after
    ``timeout`` seconds. Only the workers' progress is waited on, never the emulator's clock."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the workers did not get there in time")
        time.sleep(0.01)


def test_two_processes_under_one_queue_limit_never_hold_more_than_it_together(tmp_path, workers):
    cache, go = tmp_path / "cache", tmp_path / "go"
    limit = {"max_queued_requests": 200, "max_batch_requests": 100}
    first_rows, second_rows = texts(300, "first"), texts(300, "second")
    with Emulator(delay=3600, responder=echo, api_key=KEY) as emu:
        queue = observe_queue(emu)
        # A longer patience than the others': three waves in each worker on a busy machine.
        common = {"url": emu.base_url, "cache": cache, "go": go, "map": limit, "patience": 120.0}
        first = workers("first", texts=first_rows, **common)
        second = workers("second", texts=second_rows, **common)
        first.wait_for("ready")
        second.wait_for("ready")
        go.touch()  # both call dsbatch.map at once
        # Each says so once it holds requests back, after the creates of its step: by then the
        # first wave is out, and it is exactly the limit (one worker's 200, the other's none).
        first.wait_for("wait for room in the processing queue")
        second.wait_for("wait for room in the processing queue")
        assert sum(b["request_counts"]["processing"] for b in emu.batches.values()) == 200

        def wave_out() -> bool:
            # The queue is full, or holds all that was left to send.
            queued = sum(b["request_counts"]["processing"] for b in emu.batches.values())
            return queued > 0 and (queued == 200 or len(emu.received) == 600)

        waves = 0
        while waves == 0 or len(emu.received) < 600:
            _until(wave_out)
            emu.advance(3600)  # the wave ends: the workers read it and send the next
            waves += 1
        one, two = first.outcome(), second.outcome()
        assert sent(emu) == dict.fromkeys(ids_of(first_rows + second_rows), 1)
    assert one["response"] == answers(first_rows) and two["response"] == answers(second_rows)
    assert max(queue) == 200 and all(size <= 200 for size in queue)
    assert waves == 3


# -- issue 12, case 3: a process stopped (Ctrl-Z) with its batch in flight --------------------


def test_3_a_stopped_process_holds_up_no_one_its_batch_is_read_by_the_job_that_needs_it(
    tmp_path, workers
):
    cache, go = tmp_path / "cache", tmp_path / "go"
    rows = texts(30)
    with Emulator(delay=600, responder=echo, api_key=KEY) as emu:
        stopped = workers("stopped", texts=rows[:20], url=emu.base_url, cache=cache)
        other = workers("other", texts=rows, url=emu.base_url, cache=cache, go=go)
        stopped.wait_for("created msgbatch_")
        (held_batch,) = emu.batches
        stopped.proc.send_signal(signal.SIGSTOP)
        try:
            go.touch()
            other.wait_for("created msgbatch_")  # the ten rows no batch held
            # It says which batch, of which job, it waits for.
            line = other.wait_for(f"in batch {held_batch} of job")
            assert line.startswith("dsbatch: 20 of this job's requests are in batch")
            emu.advance(600)  # both batches end; the first one's process is not there
            outcome = other.outcome()  # while the first process is still stopped
            assert stopped.proc.poll() is None
            assert outcome["response"] == answers(rows)
            assert sent(emu) == dict.fromkeys(ids_of(rows), 1) and emu.calls["create"] == 2
            assert record_of(cache, held_batch)["state"] == "ingested"
            assert emu.calls["results"] == 2  # each batch downloaded once
        finally:
            stopped.proc.send_signal(signal.SIGCONT)
        resumed = stopped.outcome()  # it finds its job done by the other: nothing new
        assert resumed["response"] == answers(rows[:20])
        assert emu.calls["create"] == 2 and emu.calls["results"] == 2
        assert not emu.duplicate_custom_ids


# -- case 1: a process killed with a batch in flight, then an edited rerun ----------------------


def test_1_after_a_kill_an_edited_rerun_buys_only_the_edited_row(tmp_path, workers):
    cache = tmp_path / "cache"
    rows = texts(20)
    with Emulator(delay=3600, responder=echo, api_key=KEY) as emu:
        killed = workers("killed", texts=rows, url=emu.base_url, cache=cache)
        killed.wait_for("created msgbatch_")
        killed.kill()
        assert killed.proc.returncode == -signal.SIGKILL
        (first_batch,) = emu.batches

        edited = [*rows[:3], "row 3, edited", *rows[4:]]
        out = dsbatch.map(
            Dataset.from_dict({"text": edited}),
            prompt,
            model=MODEL,
            max_tokens=256,
            client=emu.client(max_retries=0),
            cache_dir=cache,
            poll_interval=virtual(emu, 600),
            progress=False,
        )
        assert sent(emu) == dict.fromkeys(ids_of([*rows, "row 3, edited"]), 1)
        assert emu.calls["create"] == 2
        assert list(out["response"]) == answers(edited)
        assert {s["attempts"] for s in out["dsbatch"]} == {1}
        # The dead process's batch was polled and stored by the rerun, for its own job too.
        assert record_of(cache, first_batch)["state"] == "ingested"


# -- a read-only cache ----------------------------------------------------------------------------


def _set_modes(root: Path, *, writable: bool) -> None:
    paths = sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=not writable)
    for path in [root, *paths] if writable else [*paths, root]:
        if path.is_dir():
            path.chmod(0o755 if writable else 0o555)
        else:
            path.chmod(0o644 if writable else 0o444)


def test_a_read_only_cache_serves_a_finished_job_and_names_the_path_otherwise(tmp_path, workers):
    cache = tmp_path / "cache"
    rows = texts(6)
    with Emulator(delay=0, responder=echo, api_key=KEY) as emu:
        dsbatch.map(
            Dataset.from_dict({"text": rows}),
            prompt,
            model=MODEL,
            max_tokens=256,
            client=emu.client(),
            cache_dir=cache,
            poll_interval=0,
            progress=False,
        )
        emu.reset_stats()
        _set_modes(cache, writable=False)
        try:
            assert not (cache.stat().st_mode & stat.S_IWUSR)
            common = {"url": emu.base_url, "cache": cache, "read_only": True}
            served = workers("served", texts=rows, **common)
            refused = workers("new job", texts=texts(3, "new"), **common)
            served, refused = served.outcome(), refused.outcome()
        finally:
            _set_modes(cache, writable=True)
        assert "response" in served, served
        assert served["response"] == answers(rows)
        error = refused["error"]
        assert error["type"] == "LedgerError"
        assert error["path"].startswith(str(cache)) and error["path"] in error["message"]
        assert "Permission denied" in error["message"]
        assert sum(emu.calls.values()) == 0
