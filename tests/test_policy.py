"""The one table of what is final and what is sent again, as plan, join and status read it."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from dsbatch._policy import (
    FAILED_STATUSES,
    LOST_ERROR,
    attempts,
    latest_results,
    latest_rows,
    open_mask,
    open_requests,
    positions,
)

FINAL_OK, FINAL_FAIL, RETRY = "final, answered", "final, not answered", "sent again"


@pytest.mark.parametrize(
    ("result_type", "error_type", "resend_canceled", "expected"),
    [
        ("succeeded", None, False, FINAL_OK),
        ("succeeded", None, True, FINAL_OK),
        ("errored", "invalid_request_error", False, FINAL_FAIL),
        ("errored", "invalid_request_error", True, FINAL_FAIL),
        ("errored", "overloaded_error", False, RETRY),
        ("errored", "api_error", False, RETRY),
        ("errored", "rate_limit_error", False, RETRY),
        ("errored", None, False, RETRY),
        ("errored", LOST_ERROR, False, RETRY),
        ("expired", None, False, RETRY),
        ("canceled", None, False, FINAL_FAIL),
        ("canceled", None, True, RETRY),
        ("mystery", None, False, FINAL_FAIL),
        (None, None, False, FINAL_FAIL),
    ],
)
def test_the_disposition_table(result_type, error_type, resend_canceled, expected):
    # The module's table, read through what production decides with: a request whose one
    # attempt ended so is sent again (attempts remaining), or not.
    history = results(("x", result_type, error_type, 1.0))
    again = open_requests(
        pa.array(["x"]), history, in_flight=(), max_attempts=2, resend_canceled=resend_canceled
    )
    assert again.to_pylist() == (["x"] if expected == RETRY else [])
    latest = latest_results(history)
    assert (latest["type"][0].as_py() == "succeeded") == (expected == FINAL_OK)


def results(*rows):
    """(custom_id, type, error_type, batch_created_at) rows as a results table."""
    return pa.table(
        {
            "custom_id": pa.array([r[0] for r in rows], pa.string()),
            "type": pa.array([r[1] for r in rows], pa.string()),
            "error_type": pa.array([r[2] for r in rows], pa.string()),
            "batch_created_at": pa.array([r[3] for r in rows], pa.float64()),
        }
    )


NEEDED = pa.array(["new", "ok", "invalid", "flaky", "tired", "expired", "canceled", "lost", "fly"])
HISTORY = results(
    ("ok", "errored", "api_error", 1.0),
    ("ok", "succeeded", None, 2.0),
    ("invalid", "errored", "invalid_request_error", 1.0),
    ("flaky", "errored", "overloaded_error", 1.0),
    ("tired", "errored", "overloaded_error", 1.0),
    ("tired", "expired", None, 2.0),
    ("tired", "errored", "api_error", 3.0),
    ("expired", "expired", None, 1.0),
    ("canceled", "canceled", None, 1.0),
    ("lost", "errored", LOST_ERROR, 1.0),
)


@pytest.mark.parametrize(
    ("max_attempts", "resend_canceled", "expected"),
    [
        (1, False, ["new"]),
        (2, False, ["new", "flaky", "expired", "lost"]),
        (3, False, ["new", "flaky", "expired", "lost"]),
        (4, False, ["new", "flaky", "tired", "expired", "lost"]),
        # Canceled sends do not use attempts up: resend_canceled works even at max_attempts=1.
        (1, True, ["new", "canceled"]),
        (2, True, ["new", "flaky", "expired", "canceled", "lost"]),
    ],
)
def test_what_is_sent_follows_the_table_and_counts_every_send(
    max_attempts, resend_canceled, expected
):
    sent = open_requests(
        NEEDED,
        HISTORY,
        in_flight={"fly"},
        max_attempts=max_attempts,
        resend_canceled=resend_canceled,
    )
    assert sent.to_pylist() == expected


def test_a_request_in_flight_anywhere_is_never_sent():
    flying = set(NEEDED.to_pylist())
    assert open_requests(NEEDED, HISTORY, in_flight=flying, max_attempts=9).to_pylist() == []


def test_attempts_count_every_send_lost_ones_included():
    assert attempts(HISTORY) == {
        "ok": 2,
        "invalid": 1,
        "flaky": 1,
        "tired": 3,
        "expired": 1,
        "canceled": 1,
        "lost": 1,
    }
    assert "canceled" not in attempts(HISTORY, count_canceled=False)


def test_the_latest_result_is_a_success_anywhere_else_the_newest_attempt():
    latest = {r["custom_id"]: r["type"] for r in latest_results(HISTORY).to_pylist()}
    assert latest["ok"] == "succeeded"  # though an older attempt failed
    assert latest["tired"] == "errored"  # the newest of three
    assert len(latest) == 7


def test_skipped_is_not_a_failure():
    assert "skipped" not in FAILED_STATUSES and "succeeded" not in FAILED_STATUSES
    assert set(FAILED_STATUSES) == {"errored", "expired", "canceled", "parse_error"}


# -- the decision on request numbers (``open_mask``), as a job's step makes it -----------------

_OUTCOMES = [
    ("succeeded", None),
    ("errored", "invalid_request_error"),
    ("errored", "overloaded_error"),
    ("errored", LOST_ERROR),
    ("expired", None),
    ("canceled", None),
]


def _by_hand(needed, rows, in_flight, max_attempts, resend_canceled):
    """The table above, applied one request at a time in plain Python."""
    retry = {"expired"} | ({"canceled"} if resend_canceled else set())
    out = []
    for cid in needed:
        mine = [r for r in rows if r[0] == cid]
        counted = [r for r in mine if not (resend_canceled and r[1] == "canceled")]
        if cid in in_flight or len(counted) >= max_attempts:
            continue
        if mine:
            won = [r for r in mine if r[1] == "succeeded"]
            # The newest attempt; of two at one moment, the first listed.
            latest = won[0] if won else max(reversed(mine), key=lambda r: r[3])
            kind, error = latest[1], latest[2]
            if not (kind in retry or (kind == "errored" and error != "invalid_request_error")):
                continue
        out.append(cid)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_the_decision_on_request_numbers_is_the_table_one_request_at_a_time(seed):
    rng = random.Random(seed)
    needed = [f"r{i}" for i in range(rng.randint(1, 30))]
    unrelated = ["other0", "other1"]  # results of ids the job does not need are ignored
    rows = [
        (rng.choice(needed + unrelated), *rng.choice(_OUTCOMES), float(rng.randint(1, 4)))
        for _ in range(rng.randint(0, 60))
    ]
    # Most jobs see one attempt per request: that shortcut must agree too.
    if seed % 4 == 0:
        rows = list({r[0]: r for r in rows}.values())
    in_flight = set(rng.sample(needed, rng.randint(0, len(needed) // 3)))
    max_attempts, resend_canceled = rng.randint(1, 4), rng.random() < 0.5
    expected = _by_hand(needed, rows, in_flight, max_attempts, resend_canceled)
    history = results(*rows)
    ids = pa.array(needed)
    sent = open_requests(
        ids,
        history,
        in_flight=in_flight,
        max_attempts=max_attempts,
        resend_canceled=resend_canceled,
    )
    assert sent.to_pylist() == expected
    # As a step makes it: the rows of the job's ids, each by its number in ``needed``.
    at = positions(ids, history["custom_id"])
    mine = history.filter(pa.array(at >= 0))
    at = at[at >= 0]
    rows_kept = latest_rows(mine, at)
    assert (rows_kept is None) == (latest_rows(mine) is None)
    latest, latest_at = (mine, at) if rows_kept is None else (mine.take(rows_kept), at[rows_kept])
    flying = positions(ids, pa.array(sorted(in_flight) + ["unknown"], pa.string()))
    mask = open_mask(
        len(needed),
        mine,
        at,
        latest,
        latest_at,
        flying,
        max_attempts=max_attempts,
        resend_canceled=resend_canceled,
    )
    assert ids.filter(pa.array(mask)).to_pylist() == expected


@pytest.mark.parametrize("seed", range(10))
def test_the_latest_rows_are_the_same_whatever_numbers_the_ids_are_given(seed):
    rng = random.Random(seed)
    names = [f"r{i}" for i in range(12)]
    rows = [
        (rng.choice(names), *rng.choice(_OUTCOMES), float(rng.randint(1, 3))) for _ in range(40)
    ]
    history = results(*rows)
    numbers = dict(zip(names, rng.sample(range(1000), len(names)), strict=True))
    codes = np.array([numbers[r[0]] for r in rows])
    kept = latest_rows(history, codes)
    assert kept is not None and kept.tolist() == latest_rows(history).tolist()
    assert history.take(kept).to_pylist() == latest_results(history).to_pylist()
    once = results(*list({r[0]: r for r in rows}.values()))
    assert latest_rows(once, np.arange(once.num_rows)[::-1].copy()) is None
