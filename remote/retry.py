"""The one retry wrapper of `remote/`: exponential backoff with jitter and a total deadline.

Only `TemporaryRemoteError` is retried; anything else (a permanent error, a bug) goes
straight to the caller. Logs grow louder with the number of attempts, so a short network
blip stays at DEBUG while a server down for minutes shows up as WARNINGs. Time comes from
injected `sleep` and `monotonic` callables so tests run on a fake clock.

The deadline bounds when a new attempt may *start*; an attempt that starts just before the
deadline may still run for up to the backend's request timeout.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from remote.errors import DeadlineExceeded, TemporaryRemoteError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    deadline: float = 300.0  # seconds from the first attempt after which we give up
    first_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5  # each pause is shortened by a random fraction up to this

    def __post_init__(self) -> None:
        if self.deadline < 0 or self.first_delay < 0 or self.max_delay < 0:
            raise ValueError("retry times must not be negative")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("multiplier must be >= 1 and jitter in [0, 1]")


NO_RETRY = RetryPolicy(deadline=0.0)


def _level(attempt: int) -> int:
    if attempt <= 2:
        return logging.DEBUG
    if attempt <= 5:
        return logging.INFO
    return logging.WARNING


class Retrier:
    """Runs a callable until it succeeds, fails permanently, or the deadline passes."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._rand = rand

    def call(self, fn: Callable[[], T], what: str = "remote call") -> T:
        p = self.policy
        start = self._monotonic()
        delay = p.first_delay
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except TemporaryRemoteError as exc:
                remaining = p.deadline - (self._monotonic() - start)
                if remaining <= 0:
                    log.warning(
                        "%s: giving up after %d attempts in %.1f s: %s",
                        what,
                        attempt,
                        self._monotonic() - start,
                        exc,
                    )
                    raise DeadlineExceeded(
                        f"{what}: gave up after {attempt} attempts: {exc}", attempt, exc
                    ) from exc
                pause = min(delay * (1.0 - p.jitter * self._rand()), remaining)
                log.log(
                    _level(attempt),
                    "%s: attempt %d failed (%s); retrying in %.2f s",
                    what,
                    attempt,
                    exc,
                    pause,
                )
                self._sleep(pause)
                delay = min(delay * p.multiplier, p.max_delay)
