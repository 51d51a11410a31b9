"""The one table of what is final and what is sent again, as plan, join and status read it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from dsbatch._policy import (
    FAILED_STATUSES,
    LOST_ERROR,
    attempts,
    latest_results,
    open_requests,
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
