"""Every API call is retried on a schedule the tests read back: sleeps are recorded, never slept."""

from __future__ import annotations

from typing import Any

import pytest

from dsbatch._retry import (
    Retrying,
    RetryState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_fixed,
)


class Transient(Exception):
    """A failure that may go away, optionally asking to be retried after ``retry_after`` s."""

    def __init__(self, message: str = "transient", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FakeTime:
    """A clock that only moves when slept on; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


class Flaky:
    """A call that raises each of ``errors`` in turn, then returns its arguments."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> tuple[object, ...]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return (args, kwargs)


def retrying(fake: FakeTime, **options: Any) -> Retrying:
    """A Retrying on ``fake`` time: by default, 10 attempts 1s apart, retrying Transient."""
    settings: dict[str, Any] = {
        "stop": stop_after_attempt(10),
        "wait": wait_fixed(1),
        "retry": retry_if_exception_type(Transient),
    }
    settings.update(options)
    return Retrying(sleep=fake.sleep, clock=fake.clock, **settings)


def test_succeeds_after_transient_failures_with_exponential_delays_capped_at_the_maximum():
    fake = FakeTime()
    call = Flaky(*(Transient() for _ in range(5)))
    r = retrying(fake, wait=wait_exponential(initial=1, maximum=10, factor=2))

    assert r.call(call, "batch", limit=3) == (("batch",), {"limit": 3})
    assert call.calls == 6
    assert fake.sleeps == [1, 2, 4, 8, 10]


def test_giving_up_after_the_last_attempt_reraises_the_last_error_itself():
    fake = FakeTime()
    errors = [Transient(f"failure {i}") for i in range(5)]
    call = Flaky(*errors)

    with pytest.raises(Transient) as raised:
        retrying(fake, stop=stop_after_attempt(3)).call(call)

    assert raised.value is errors[2]
    assert call.calls == 3
    assert fake.sleeps == [1, 1]


class RateLimited(Transient):
    status_code = 429


def test_a_stop_counting_only_real_failures_waits_out_any_number_of_rate_limits():
    fake = FakeTime()
    # 12 rate limits around two real failures: 14 failures, 2 of them counted.
    errors = [RateLimited() for _ in range(6)] + [Transient("real 1")]
    errors += [RateLimited() for _ in range(6)] + [Transient("real 2")]
    call = Flaky(*errors)
    real = stop_after_attempt(3, counting=lambda e: not isinstance(e, RateLimited))

    assert retrying(fake, stop=real).call(call) == ((), {})
    assert call.calls == 15 and len(fake.sleeps) == 14


def test_a_stop_counting_only_real_failures_gives_up_at_the_third_real_one():
    fake = FakeTime()
    errors = [RateLimited(), Transient("real 1"), RateLimited(), Transient("real 2")]
    errors += [RateLimited(), Transient("real 3"), Transient("never reached")]
    call = Flaky(*errors)
    real = stop_after_attempt(3, counting=lambda e: not isinstance(e, RateLimited))

    with pytest.raises(Transient, match="real 3"):
        retrying(fake, stop=real).call(call)
    assert call.calls == 6


def test_stop_after_delay_is_measured_on_the_injected_clock():
    fake = FakeTime()
    call = Flaky(*(Transient() for _ in range(10)))

    with pytest.raises(Transient):
        retrying(fake, stop=stop_after_delay(25), wait=wait_fixed(10)).call(call)

    # Failures at t=0, 10, 20 are inside the budget; the one at t=30 is not.
    assert call.calls == 4
    assert fake.sleeps == [10, 10, 10]


def test_stop_after_delay_counts_the_time_the_calls_themselves_take():
    fake = FakeTime()

    def slow_failure() -> None:
        fake.now += 20
        raise Transient()

    with pytest.raises(Transient):
        retrying(fake, stop=stop_after_delay(50), wait=wait_fixed(1)).call(slow_failure)

    assert fake.sleeps == [1, 1]  # failed at t=20, 41, then 62 is past the budget


@pytest.mark.parametrize(
    ("stop", "calls"),
    [
        (stop_after_attempt(10) | stop_after_delay(5), 4),  # the delay runs out first
        (stop_after_attempt(2) | stop_after_delay(100), 2),  # the attempts run out first
    ],
)
def test_combined_stops_give_up_at_whichever_comes_first(stop, calls):
    fake = FakeTime()
    call = Flaky(*(Transient() for _ in range(20)))

    with pytest.raises(Transient):
        retrying(fake, stop=stop, wait=wait_fixed(2)).call(call)

    assert call.calls == calls


def test_stop_never_keeps_retrying_until_the_call_succeeds():
    fake = FakeTime()
    call = Flaky(*(Transient() for _ in range(50)))

    retrying(fake, stop=stop_never, wait=wait_fixed(60)).call(call)

    assert call.calls == 51
    assert fake.now == 50 * 60


def test_combined_predicates_retry_what_either_accepts_and_nothing_else():
    class Overloaded(Exception):
        status_code = 529

    fake = FakeTime()
    retry = retry_if_exception_type(TimeoutError) | retry_if_exception(
        lambda e: getattr(e, "status_code", None) == 529
    )
    r = retrying(fake, retry=retry)

    assert r.call(Flaky(TimeoutError(), Overloaded(), TimeoutError())) == ((), {})
    assert fake.sleeps == [1, 1, 1]

    with pytest.raises(Transient):
        r.call(Flaky(Transient()))
    assert fake.sleeps == [1, 1, 1]


@pytest.mark.parametrize(
    "errors",
    [
        [KeyError("bad custom_id")],
        [Transient(), Transient(), KeyError("bad custom_id")],
    ],
    ids=["first-attempt", "after-transient-failures"],
)
def test_a_non_retryable_error_propagates_at_once_without_sleeping(errors):
    fake = FakeTime()
    call = Flaky(*errors, Transient())

    with pytest.raises(KeyError) as raised:
        retrying(fake).call(call)

    assert raised.value is errors[-1]
    assert call.calls == len(errors)
    assert fake.sleeps == [1] * (len(errors) - 1)


def test_ctrl_c_is_never_retried_even_by_a_predicate_that_accepts_everything():
    fake = FakeTime()
    call = Flaky(KeyboardInterrupt())

    with pytest.raises(KeyboardInterrupt):
        retrying(fake, retry=retry_if_exception(lambda e: True)).call(call)

    assert call.calls == 1
    assert fake.sleeps == []


def test_retry_after_from_the_server_wins_over_the_wait_strategy():
    fake = FakeTime()
    call = Flaky(Transient(retry_after=7.5), Transient(), Transient(retry_after=2))

    retrying(fake, wait=wait_fixed(1)).call(call)

    assert fake.sleeps == [7.5, 1, 2]


def test_retry_after_is_capped_at_max_retry_after_and_the_next_failure_retries_again():
    fake = FakeTime()
    call = Flaky(Transient(retry_after=3600), Transient(retry_after=3600))

    assert retrying(fake, max_retry_after=300).call(call) == ((), {})
    assert fake.sleeps == [300, 300]


@pytest.mark.parametrize("retry_after", [0, 0.0, -5])
def test_a_retry_after_of_zero_or_less_retries_without_sleeping(retry_after):
    fake = FakeTime()
    call = Flaky(Transient(retry_after=retry_after))

    assert retrying(fake, wait=wait_fixed(30)).call(call) == ((), {})
    assert call.calls == 2
    assert fake.sleeps == []


@pytest.mark.parametrize("seconds", [0, -3])
def test_a_wait_of_zero_or_less_retries_without_sleeping(seconds):
    fake = FakeTime()
    call = Flaky(Transient(), Transient())

    retrying(fake, wait=wait_fixed(seconds)).call(call)

    assert call.calls == 3
    assert fake.sleeps == []


def test_before_sleep_sees_each_retry_with_its_state_and_delay():
    fake = FakeTime()
    errors = [Transient(), Transient(retry_after=0), Transient(retry_after=9)]
    seen: list[tuple[RetryState, float]] = []

    retrying(fake, wait=wait_fixed(4), before_sleep=lambda s, d: seen.append((s, d))).call(
        Flaky(*errors)
    )

    assert seen == [
        (RetryState(attempt=1, elapsed=0, error=errors[0], errors=(errors[0],)), 4),
        # still told, though not slept
        (RetryState(attempt=2, elapsed=4, error=errors[1], errors=tuple(errors[:2])), 0),
        (RetryState(attempt=3, elapsed=4, error=errors[2], errors=tuple(errors)), 9),
    ]
    assert fake.sleeps == [4, 9]


def test_exponential_wait_stays_at_the_maximum_through_a_very_long_outage():
    wait = wait_exponential(initial=1, maximum=60)

    assert wait(RetryState(attempt=100_000, elapsed=0, error=Transient())) == 60


def test_a_type_predicate_without_types_is_refused_rather_than_never_retrying():
    with pytest.raises(TypeError):
        retry_if_exception_type()


def test_a_negative_retry_after_cap_is_refused_rather_than_hammering_a_throttled_api():
    with pytest.raises(ValueError, match="max_retry_after"):
        retrying(FakeTime(), max_retry_after=-1)
