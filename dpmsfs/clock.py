"""The one source of time for dpmsfs (snapshot names, debouncing, retention).

Everything that needs "now" takes a `Clock`; tests pass a `FakeClock` and move it.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """Wall-clock UTC time in nanoseconds (names and records)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back (intervals, debouncing)."""


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now_ns: int = 1_763_000_000 * 10**9) -> None:
        self._now_ns = now_ns
        self._monotonic = 1000.0

    def now_ns(self) -> int:
        return self._now_ns

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._now_ns += int(seconds * 1e9)
        self._monotonic += seconds


SYSTEM_CLOCK = SystemClock()
