"""The job commands of the ``dsbatch`` CLI, run in-process (and one as a real subprocess), on the
same cache as ``dsbatch.map``: jobs, status, wait, collect, cancel, du, prune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from datasets import Dataset, load_from_disk
from support import MODEL, answers, cache_root, echo, prompt, submit

import dsbatch
from dsbatch._cli import main
from dsbatch.testing import Emulator


def texts(n, prefix="text"):
    return [f"{prefix} {i}" for i in range(n)]


@pytest.fixture
def api(monkeypatch):
    """An emulator the CLI reaches through the environment, as a user's shell does."""
    with Emulator(delay=600, responder=echo) as emu:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", emu.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "cli-key")
        yield emu


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_jobs_lists_each_job_newest_first_with_its_requests_per_state(api, capsys):
    first = submit(api, texts(4))
    api.advance(600)
    dsbatch.Job.load(first.fingerprint, client=api.client(), poll_interval=0).wait()
    second = submit(api, texts(3, "more"))
    code, out, _ = cli(capsys, "jobs")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == [
        "FINGERPRINT",
        "STARTED",
        "MODEL",
        "ROWS",
        "ANSWERED",
        "FAILED",
        "LEFT",
        "STATE",
    ]
    assert [line.split()[0] for line in lines] == [second.fingerprint[:12], first.fingerprint[:12]]
    assert lines[0].split()[-4:] == ["0", "0", "3", "running"]
    assert lines[1].split()[-4:] == ["4", "0", "0", "done"]
    code, out, _ = cli(capsys, "jobs", "--json")
    listed = json.loads(out)
    assert [j["fingerprint"] for j in listed] == [second.fingerprint, first.fingerprint]
    assert listed[1]["counts"] == {
        "succeeded": 4,
        "errored": 0,
        "expired": 0,
        "canceled": 0,
        "in_flight": 0,
        "to_send": 0,
    }


def test_status_names_each_batch_and_exits_3_while_requests_are_left(api, capsys):
    job = submit(api, texts(5), max_batch_requests=2)
    code, out, _ = cli(capsys, "status", job.fingerprint[:8])
    assert code == 3
    assert f"job {job.fingerprint}: running" in out and "5 in flight; 5 left" in out
    batch_ids = list(api.batches)
    assert all(f"{b}: in_progress" in out for b in batch_ids) and "batches (3):" in out
    code, out, _ = cli(capsys, "status", job.fingerprint[:8], "--json")
    status = json.loads(out)
    assert [b["id"] for b in status["batches"]] == batch_ids
    assert [b["requests"] for b in status["batches"]] == [2, 2, 1]
    api.advance(600)
    code, out, _ = cli(capsys, "wait", job.fingerprint[:8])
    assert code == 0 and "5 succeeded; 0 left" in out
    assert cli(capsys, "status", job.fingerprint[:8], "--offline")[0] == 0


def test_wait_with_a_timeout_exits_3_and_collect_writes_each_format(api, capsys, tmp_path):
    job = submit(api, texts(6))
    code, out, _ = cli(capsys, "wait", job.fingerprint, "--timeout", "0")
    assert code == 3 and "6 in flight" in out
    code, _, err = cli(
        capsys, "collect", job.fingerprint, "--output", str(tmp_path / "x"), "--timeout", "0"
    )
    assert code == 3 and "still running" in err
    api.advance(600)
    code, out, _ = cli(capsys, "collect", job.fingerprint, "--output", str(tmp_path / "disk"))
    assert code == 0 and "6 rows written" in out
    assert load_from_disk(str(tmp_path / "disk"))["response"] == answers(texts(6))
    for fmt in ("parquet", "jsonl"):
        code, _, _ = cli(
            capsys, "collect", job.fingerprint, "--output", str(tmp_path / fmt), "--format", fmt
        )
        assert code == 0 and (tmp_path / fmt / f"data.{fmt}").exists()
    lines = (tmp_path / "jsonl" / "data.jsonl").read_text().splitlines()
    assert [json.loads(line)["response"] for line in lines] == answers(texts(6))


def test_collect_refuses_a_path_it_cannot_write_before_waiting(api, capsys, tmp_path):
    job = submit(api, texts(3))
    (tmp_path / "a-file").write_text("in the way")
    target = tmp_path / "a-file" / "out"
    code, _, err = cli(
        capsys, "collect", job.fingerprint, "--output", str(target), "--timeout", "0"
    )
    # Refused at once (exit 1), not after the wait (which would say "still running", exit 3).
    said = f"{tmp_path / 'a-file'} is a file, not a folder"
    assert code == 1 and err == f"dsbatch collect: cannot write to {target}: {said}\n"
    assert api.calls["retrieve"] == 0


def test_cancel_keeps_the_answers_in_and_ends_the_rest_canceled(api, capsys):
    job = submit(api, texts(10))
    api.advance(300)
    code, out, _ = cli(capsys, "cancel", job.fingerprint[:10])
    assert code == 0 and "canceled" in out and api.calls["cancel"] == 1
    out = dsbatch.Job.load(job.fingerprint, client=api.client(), poll_interval=0).result()
    assert [s["status"] for s in out["dsbatch"]].count("canceled") == 5


def test_errors_are_one_line_with_exit_1_and_bad_usage_exits_2(api, capsys):
    submit(api, texts(2))
    code, _, err = cli(capsys, "status", "nope")
    assert code == 1 and err.startswith("dsbatch status: no job 'nope' in the cache")
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main(["collect"])  # no fingerprint, no --output
    assert info.value.code == 2
    assert cli(capsys, "prune")[0] == 2
    # A negative age reaches into the future, where every result is older: refused.
    for days in ("-1", "nan", "soon"):
        with pytest.raises(SystemExit) as info:
            main(["prune", "--results-older-than", days])
        assert info.value.code == 2
        assert "--results-older-than" in capsys.readouterr().err


def test_du_and_prune_say_what_a_rerun_costs_and_never_touch_what_is_in_flight(api, capsys):
    finished = submit(api, texts(8))
    api.advance(600)
    dsbatch.Job.load(finished.fingerprint, client=api.client(), poll_interval=0).result()
    running = submit(api, texts(4, "running"))
    code, out, _ = cli(capsys, "du")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "FINGERPRINT",
        "STARTED",
        "STATE",
        "ROWS",
        "REQUESTS",
        "SIZE",
    ]
    assert {line.split()[0] for line in out.splitlines()[1:3]} == {
        finished.fingerprint[:12],
        running.fingerprint[:12],
    }
    assert "shared results: 1 batches" in out
    usage = json.loads(cli(capsys, "du", "--json")[1])
    assert usage["results_batches"] == 1 and len(usage["jobs"]) == 2

    code, out, _ = cli(capsys, "prune", "--jobs", "--dry-run")
    assert (
        "1 finished jobs" in out
        and "buys nothing" in out
        and "left alone, in flight: 1 jobs" in out
    )
    assert "(dry run: nothing removed)" in out
    assert {p.name for p in (cache_root() / "jobs").iterdir()} == {
        finished.fingerprint,
        running.fingerprint,
    }

    code, out, _ = cli(capsys, "prune", "--results-older-than", "0", "--dry-run")
    assert "stored results of 1 batches" in out and "downloads them again" in out
    # Made more than 29 days ago: a rerun would buy them again, and says so.
    later = time.time() + 30 * 86400
    from dsbatch._housekeeping import plan_prune
    from dsbatch._ledger import Ledger

    plan = plan_prune(Ledger(), results_older_than_days=0, now=later)
    assert "BUYS their 8 answers again" in plan.describe()

    code, out, _ = cli(capsys, "prune", "--jobs")
    assert code == 0 and "removed" in out
    kept = {p.name: sorted(c.name for c in p.iterdir()) for p in (cache_root() / "jobs").iterdir()}
    # The finished job keeps only its batch records (so its batches are found again).
    assert (
        kept[finished.fingerprint] == ["batches"] and "manifest.json" in kept[running.fingerprint]
    )
    # The finished job's call again: nothing bought, answers read from the shared results.
    api.reset_stats()
    again = dsbatch.map(
        Dataset.from_dict({"text": texts(8)}),
        prompt,
        model=MODEL,
        max_tokens=256,
        client=api.client(),
        progress=False,
        poll_interval=0,
    )
    assert list(again["response"]) == answers(texts(8)) and api.calls["create"] == 0
    cli(capsys, "prune", "--results-older-than", "0")
    assert not list((cache_root() / "results").glob("*.parquet"))


def test_collect_as_a_real_subprocess(api, tmp_path):
    job = submit(api, texts(4))
    api.advance(600)
    env = {**os.environ, "DSBATCH_CACHE": str(cache_root())}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsbatch",
            "collect",
            job.fingerprint[:12],
            "--output",
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"job {job.fingerprint}: 4 rows written" in done.stdout
    assert load_from_disk(str(tmp_path / "out"))["response"] == answers(texts(4))
