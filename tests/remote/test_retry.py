"""Unit tests of the retry wrapper on a fake clock: no real sleeping."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from remote.errors import (
    DeadlineExceeded,
    NotFoundError,
    PermanentRemoteError,
    TemporaryRemoteError,
    error_for_status,
    is_temporary_status,
)
from remote.retry import Retrier, RetryPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def make(policy: RetryPolicy, clock: FakeClock, rand: float = 0.0) -> Retrier:
    return Retrier(policy, sleep=clock.sleep, monotonic=clock.monotonic, rand=lambda: rand)


def flaky(failures: int, exc: Exception) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return "ok"

    return calls, fn


def test_success_needs_no_sleep() -> None:
    clock = FakeClock()
    assert make(RetryPolicy(), clock).call(lambda: 42) == 42
    assert clock.sleeps == []


def test_backoff_grows_exponentially_up_to_max_delay() -> None:
    clock = FakeClock()
    policy = RetryPolicy(deadline=1000, first_delay=1, max_delay=5, multiplier=2, jitter=0)
    calls, fn = flaky(5, TemporaryRemoteError("down"))
    assert make(policy, clock).call(fn) == "ok"
    assert len(calls) == 6
    assert clock.sleeps == [1, 2, 4, 5, 5]


def test_jitter_shortens_pauses_within_bounds() -> None:
    clock = FakeClock()
    policy = RetryPolicy(deadline=1000, first_delay=4, multiplier=1, jitter=0.5)
    _, fn = flaky(3, TemporaryRemoteError("down"))
    make(policy, clock, rand=1.0).call(fn)
    assert clock.sleeps == [2, 2, 2]


def test_gives_up_at_deadline_with_temporary_error() -> None:
    clock = FakeClock()
    policy = RetryPolicy(deadline=10, first_delay=1, max_delay=4, jitter=0)
    calls, fn = flaky(10_000, TemporaryRemoteError("still down"))
    with pytest.raises(DeadlineExceeded) as info:
        make(policy, clock).call(fn, "save x")
    assert isinstance(info.value, TemporaryRemoteError)
    assert isinstance(info.value.last_error, TemporaryRemoteError)
    assert info.value.attempts == len(calls)
    assert sum(clock.sleeps) == pytest.approx(10)  # never sleeps past the deadline
    assert clock.sleeps[-1] <= 4
    assert "save x" in str(info.value)


def test_permanent_error_is_not_retried() -> None:
    clock = FakeClock()
    calls, fn = flaky(1, NotFoundError("gone"))
    with pytest.raises(NotFoundError):
        make(RetryPolicy(), clock).call(fn)
    assert len(calls) == 1 and clock.sleeps == []


def test_unexpected_exception_propagates_unretried() -> None:
    clock = FakeClock()
    calls, fn = flaky(1, KeyError("bug"))
    with pytest.raises(KeyError):
        make(RetryPolicy(), clock).call(fn)
    assert len(calls) == 1


def test_zero_deadline_tries_once() -> None:
    clock = FakeClock()
    calls, fn = flaky(1, TemporaryRemoteError("x"))
    with pytest.raises(DeadlineExceeded):
        make(RetryPolicy(deadline=0), clock).call(fn)
    assert len(calls) == 1


def test_logs_get_louder_as_attempts_grow(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    policy = RetryPolicy(deadline=1000, first_delay=1, jitter=0)
    _, fn = flaky(7, TemporaryRemoteError("down"))
    with caplog.at_level(logging.DEBUG, logger="remote.retry"):
        make(policy, clock).call(fn)
    levels = [r.levelno for r in caplog.records]
    assert levels[0] == logging.DEBUG
    assert logging.INFO in levels
    assert levels[-1] == logging.WARNING
    assert levels == sorted(levels)


@pytest.mark.parametrize("bad", [{"deadline": -1}, {"multiplier": 0.5}, {"jitter": 2}])
def test_policy_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)


@pytest.mark.parametrize(
    ("status", "temporary"),
    [
        *((s, True) for s in (408, 429, 500, 502, 503, 507)),
        *((s, False) for s in (400, 401, 403, 404, 409, 413, 422)),
    ],
)
def test_status_classification(status: int, temporary: bool) -> None:
    assert is_temporary_status(status) is temporary
    err = error_for_status(status, "m")
    assert isinstance(err, TemporaryRemoteError if temporary else PermanentRemoteError)
