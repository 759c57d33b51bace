"""The optional upload bandwidth limit: a token bucket the push pass asks before each request.

A tool's uplink is shared with the equipment's own traffic (MES, recipe downloads), so an
operator may cap what a first sync of 300 GB takes. The bucket holds at most one second of
budget: a pause in sync never turns into a burst above the limit afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Throttle:
    def __init__(
        self,
        bytes_per_second: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        stop: threading.Event | None = None,
    ) -> None:
        if bytes_per_second < 0:
            raise ValueError("the bandwidth limit must not be negative")
        self.rate = bytes_per_second
        self._monotonic = monotonic
        self._stop = stop or threading.Event()
        self._tokens = float(bytes_per_second)
        self._last = monotonic()

    @property
    def limited(self) -> bool:
        return self.rate > 0

    def request_size(self, preferred: int) -> int:
        """How many bytes one request should carry: at most about a second's budget."""
        if not self.limited:
            return preferred
        return max(64 << 10, min(preferred, self.rate))

    def consume(self, nbytes: int) -> None:
        """Block (on a worker thread) until `nbytes` may be sent; returns early on stop."""
        if not self.limited or nbytes <= 0:
            return
        now = self._monotonic()
        self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= nbytes
        if self._tokens < 0:
            self._stop.wait(-self._tokens / self.rate)
