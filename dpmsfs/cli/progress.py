"""Progress bars for long commands (verify, the first import), on a terminal only.

tqdm is imported only when stderr is a terminal and the output is not JSON: in logs,
under systemd and in scripts nothing is printed, and short commands do not pay for
the import. One bar per phase; a phase's total may grow (verify learns it as it goes).
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any


def wanted(json_output: bool = False) -> bool:
    return not json_output and sys.stderr.isatty()


def _size() -> tuple[int, int]:
    """The terminal's columns and rows; 80x24 where it reports none (a pseudo-terminal
    without a size says 0x0, and tqdm would then hide the bar)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return 80, 24
    return size.columns or 80, size.lines or 24


class PhaseProgress:
    """`update(phase, done, total)`: a bar for the current phase, replaced when the
    phase changes. A no-op when disabled."""

    def __init__(self, enabled: bool, unit: str = "it", unit_scale: bool = False) -> None:
        self.enabled = enabled
        self.unit = unit
        self.unit_scale = unit_scale
        self._bar: Any = None
        self._phase = ""

    def update(self, phase: str, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        total = total if total is not None and total > 0 else None
        if phase != self._phase or self._bar is None:
            self.close()
            from tqdm import tqdm  # only on a terminal

            self._bar = tqdm(desc=phase, total=total, unit=self.unit,
                             unit_scale=self.unit_scale, file=sys.stderr, leave=False,
                             ncols=_size()[0], nrows=_size()[1])  # fmt: skip
            self._phase = phase
        bar = self._bar
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)  # redraws at most every mininterval (0.1 s)

    def set_postfix(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> PhaseProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()
