"""A prompt function that is not a function of the row (it reads random, the time, a counter)
would make every rerun and resume pay again: dsbatch sees it before it costs, and says so once."""

from __future__ import annotations

import itertools
import logging
import random

import pytest
from datasets import Dataset
from support import answers, echo, run, sent

from dsbatch._stable import first_difference
from dsbatch.testing import Emulator


def texts(n, prefix="text"):
    return [f"{prefix} {i}" for i in range(n)]


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if "when called again" in r.getMessage()]


def test_a_counter_in_the_prompt_is_named_with_its_row_and_field_once(emu, caplog):
    calls = itertools.count()

    def counting(row):
        return f"{row['text']} (call {next(calls)})"

    out = run(Dataset.from_dict({"text": texts(10)}), emu, fn=counting)
    assert len(out) == 10
    (warning,) = warnings_of(caplog)
    assert "row 0 " in warning and "first difference at messages[0].content" in warning
    assert "pay for them again" in warning and "check_determinism=False" in warning


def test_a_random_system_prompt_is_named_by_its_field(emu, caplog):
    rng = random.Random(7)

    def sampled(row):
        system = f"Answer in the voice of persona {rng.random():.6f}."
        return {"system": system, "messages": [{"role": "user", "content": row["text"]}]}

    run(Dataset.from_dict({"text": texts(30)}), emu, fn=sampled)
    (warning,) = warnings_of(caplog)
    assert "first difference at system" in warning


def test_a_prompt_that_varies_on_purpose_can_say_so(emu, caplog):
    calls = itertools.count()
    run(
        Dataset.from_dict({"text": texts(5)}),
        emu,
        fn=lambda row: f"{row['text']} {next(calls)}",
        check_determinism=False,
    )
    assert warnings_of(caplog) == []


def test_a_stable_prompt_is_called_again_for_three_rows_only_and_never_warned_about(emu, caplog):
    calls: list[str] = []

    def stable(row):
        calls.append(row["text"])
        return row["text"]

    rows = texts(100)
    out = run(Dataset.from_dict({"text": rows}), emu, fn=stable, with_indices=False)
    assert list(out["response"]) == answers(rows)
    assert warnings_of(caplog) == []
    assert calls[100:] == ["text 0", "text 50", "text 99"]
    calls.clear()
    # Rendered (not served from the finished job), a known job: no second call.
    run(Dataset.from_dict({"text": rows}), emu, fn=stable, load_from_cache_file=False)
    assert len(calls) == 100


def test_with_indices_the_rows_are_called_again_with_their_own_index(emu, caplog):
    seen: list[tuple[str, int]] = []

    def indexed(row, idx):
        seen.append((row["text"], idx))
        return f"{idx}: {row['text']}"

    run(Dataset.from_dict({"text": texts(9)}), emu, fn=indexed, with_indices=True)
    assert seen[9:] == [("text 0", 0), ("text 4", 4), ("text 8", 8)]
    assert warnings_of(caplog) == []


def test_an_unfinished_job_of_the_same_rows_whose_requests_all_differ_is_named(caplog):
    class Stop(BaseException):
        pass

    def stop(seconds):
        raise Stop()

    rows = Dataset.from_dict({"text": texts(10)})
    with Emulator(delay=600, responder=echo) as emu:
        with pytest.raises(Stop):
            run(rows, emu, poll_interval=stop_schedule(stop), fn=lambda r: f"v1 {r['text']}")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dsbatch"):
            run(rows, emu, wait=600, fn=lambda r: f"v2 {r['text']}")
        assert sum(sent(emu).values()) == 20
    (warning,) = [r.getMessage() for r in caplog.records if "shares none of its" in r.getMessage()]
    assert "10 requests" in warning and "not finished" in warning


def stop_schedule(sleep):
    import dsbatch

    return dsbatch.PollSchedule(initial=60, sleep=sleep)


def test_first_difference_walks_to_the_first_field_that_differs():
    assert first_difference(b'{"a":1,"b":[1,{"c":2}]}', b'{"a":1,"b":[1,{"c":3}]}') == "b[1].c"
    assert first_difference(b'{"a":1}', b'{"a":1,"z":2}') == "z"
    assert first_difference(b'{"m":[1]}', b'{"m":[1,2]}') == "m[1]"
    assert first_difference(b"[1]", b"[2]") == "[0]"
