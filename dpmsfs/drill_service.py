"""The daemon's drill schedule: one restore drill every `drill_interval_days` (30).

Measured from the last recorded drill (`last-drill.json` beside the store), so a daemon
restarted daily still drills monthly; the first drill of a store comes an hour after the
daemon starts (not at once: a tool's start-up is busy enough). Off when the interval is 0
or no server is configured. The drill itself runs on a worker thread (it reads the server
and the store, never the FUSE loop) and its result is recorded and reported to the server
like `dpmsfs drill` does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dpmsfs import fleet_report
from dpmsfs.browse import drill
from dpmsfs.clock import Clock
from dpmsfs.config import Config
from dpmsfs.errors import DpmsError
from dpmsfs.store.store import Store

log = logging.getLogger(__name__)

FIRST_DRILL_DELAY_S = 3600.0


class DrillService:
    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock,
        status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.status = status
        self.interval_s = config.drill_interval_days * 86400

    @property
    def enabled(self) -> bool:
        cfg = self.config
        return self.interval_s > 0 and bool(cfg.server) and cfg.token_file is not None

    def seconds_until_due(self) -> float:
        last = drill.last_result(self.config.store)
        done_ns = last.get("time_utc_ns") if last else None
        if not isinstance(done_ns, int):
            return FIRST_DRILL_DELAY_S
        return max(0.0, self.interval_s - (self.clock.now_ns() - done_ns) / 1e9)

    def run_once(self, status: dict[str, Any] | None) -> drill.DrillResult:
        """One drill, recorded and reported; never raises for a server problem."""
        from dpmsfs.browse.source import open_server

        cfg = self.config
        assert cfg.token_file is not None
        try:
            source = open_server(cfg.server, cfg.tool_id, cfg.token_file, cfg.tls_ca)
        except DpmsError as exc:
            result = drill.DrillResult(False, self.clock.now_ns(), message=f"server: {exc}")
            drill.record_result(cfg.store, result)
            return result
        try:
            result = drill.run_drill(source, self.store)
            drill.record_result(cfg.store, result)
            fleet_report.send(source.backend, fleet_report.build_report(status, result.to_report()))
        finally:
            source.close()
        log.info("drill %s: %d files of %s in %.1f s%s", "passed" if result.ok else "FAILED",
                 result.files, result.snapshot, result.seconds,
                 f" ({result.message})" if result.message else "")  # fmt: skip
        return result

    async def run(self) -> None:
        if not self.enabled:
            log.debug("drills off (no server configured, or drill_interval_days = 0)")
            return
        while True:
            wait = await trio.to_thread.run_sync(self.seconds_until_due)
            await trio.sleep(max(1.0, wait))
            status = await self.status() if self.status is not None else None
            try:
                await trio.to_thread.run_sync(self.run_once, status)
            except (DpmsError, OSError) as exc:  # a drill must never stop the daemon
                log.error("drill failed: %s", exc)
