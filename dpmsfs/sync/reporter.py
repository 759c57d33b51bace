"""The tool's report to the fleet page, sent regularly and after every successful sync pass.

Before, a report reached the server only when a drill ran (monthly), so the fleet page
showed lag and alerts weeks old. The daemon runs one `FleetReporter` beside the sync
service: it sends `fleet_report.build_report(status, last drill)` every REPORT_INTERVAL_S
and soon after each sync pass that succeeded (`poke`, at most one send per MIN_GAP_S). It
carries the last recorded drill result, because a report replaces the previous one on the
server (latest wins) and must not blank the page's drill column.

It uses its own backend connection (`open_backend`), not the sync service's, so a report
never waits for, or shares a session with, an upload in flight. A failed send is logged by
fleet_report.send and retried at the next tick: a report is advisory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from dpmsfs import fleet_report
from dpmsfs.errors import DpmsError

if TYPE_CHECKING:
    from remote.backend import Backend

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 300.0  # "every few minutes": the page's lag column stays this fresh
MIN_GAP_S = 10.0  # a burst of sync passes sends one report, not one per pass


class FleetReporter:
    def __init__(
        self,
        open_backend: Callable[[], Backend],
        status: Callable[[], Awaitable[dict[str, Any]]],
        store_dir: Path,
        *,
        interval_s: float = REPORT_INTERVAL_S,
        min_gap_s: float = MIN_GAP_S,
    ) -> None:
        self._open_backend = open_backend
        self._status = status
        self._store_dir = store_dir
        self.interval_s = interval_s
        self.min_gap_s = min_gap_s
        self._poked = trio.Event()
        self._backend: Backend | None = None
        self.sent = 0
        self.last_error = ""

    def poke(self) -> None:
        """A sync pass succeeded (trio thread): report soon."""
        self._poked.set()

    async def run(self) -> None:
        try:
            while True:
                with trio.move_on_after(self.interval_s):
                    await self._poked.wait()
                self._poked = trio.Event()
                await self.send_once()
                await trio.sleep(self.min_gap_s)
        finally:
            if self._backend is not None:
                self._backend.close()

    async def send_once(self) -> None:
        from dpmsfs.browse import drill

        try:
            status = await self._status()
        except (DpmsError, OSError) as exc:
            log.warning("fleet report: no status to report: %s", exc)
            status = None
        last = await trio.to_thread.run_sync(drill.last_result, self._store_dir)
        report = fleet_report.build_report(status, _drill_part(last))
        self.last_error = await trio.to_thread.run_sync(self._send, report)
        if not self.last_error:
            self.sent += 1

    def _send(self, report: dict[str, Any]) -> str:
        try:
            if self._backend is None:
                self._backend = self._open_backend()
        except (DpmsError, OSError) as exc:
            return f"cannot open the server connection: {exc}"
        return fleet_report.send(self._backend, report)


def _drill_part(last: dict[str, Any] | None) -> dict[str, Any] | None:
    """The report's `drill` object from the recorded result (only the reported keys)."""
    if not isinstance(last, dict) or not isinstance(last.get("ok"), bool):
        return None
    keys = ("ok", "time_utc_ns", "snapshot", "files", "bytes", "seconds", "first_file_seconds",
            "message")  # fmt: skip
    return {k: last[k] for k in keys if k in last}
