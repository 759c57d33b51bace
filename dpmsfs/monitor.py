"""The daemon's monitoring: the full status report, the alert service and /metrics.

`Monitor.report()` completes the daemon's base report (the engine's, plus whatever
sections other parts add) with store space, last verify, counters, the alert state
and the metrics address; the control socket's `status`, the alert service and the
Prometheus collector all read that one report. Everything that touches the disk runs in
a worker thread, off the FUSE loop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dpmsfs import report_extras
from dpmsfs.alerts import STATE_FILE, AlertService
from dpmsfs.config import Config
from dpmsfs.errors import DpmsError

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_SECONDS = 10.0


class Monitor:
    def __init__(
        self,
        config: Config,
        base_report: Callable[[], Awaitable[dict[str, Any]]],
        extras: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`base_report`: the daemon's report; `extras(report)`: blocking additions
        (run in a thread), e.g. the capture counters and the last snapshot's time."""
        self.config = config
        self.base_report = base_report
        self.extras = extras
        context = {"workdir": str(config.workdir), "tool_id": config.tool_id,
                   "host": os.uname().nodename}  # fmt: skip
        self.alerts = AlertService(config.alerts, context, self.report,
                                   os.path.join(config.store, STATE_FILE),
                                   self._recorded_results)  # fmt: skip
        self.metrics_state: dict[str, Any] = {"listen": "", "error": ""}

    async def report(self) -> dict[str, Any]:
        report = await self.base_report()

        def blocking() -> None:
            report_extras.add_extras(report, self.config.store)
            if self.extras is not None:
                self.extras(report)

        await trio.to_thread.run_sync(blocking)
        report.update(report_extras.ratios(report))
        report["alerts"] = self.alerts.section()
        report["alert_delivery"] = self.alerts.notifier.state()
        if self.metrics_state["listen"] or self.metrics_state["error"]:
            report["metrics"] = dict(self.metrics_state)
        return report

    def _recorded_results(self) -> tuple[int, ...]:
        """Mtimes of the results other processes record beside the store (a verify, a
        drill): a new one makes the alerts rebuild their report at once."""
        from dpmsfs.browse.drill import DRILL_FILE

        stamps = []
        for name in (report_extras.VERIFY_FILE, DRILL_FILE):
            try:
                stamps.append(os.stat(os.path.join(self.config.store, name)).st_mtime_ns)
            except OSError:
                stamps.append(0)
        return tuple(stamps)

    async def run_alerts(self) -> None:
        await self.alerts.run()

    async def run_metrics(self) -> None:
        """Serve /metrics until cancelled, if an address is configured. A bind error is
        logged and shown in status, never fatal: the mount matters more than metrics."""
        listen = self.config.metrics_listen
        if not listen:
            return
        from dpmsfs import metrics  # prometheus_client: only when metrics are wanted

        token = trio.lowlevel.current_trio_token()

        async def bounded() -> dict[str, Any]:
            with trio.fail_after(SCRAPE_TIMEOUT_SECONDS):
                return await self.report()

        def report_from_thread() -> dict[str, Any]:
            return trio.from_thread.run(bounded, trio_token=token)

        collector = metrics.StatusCollector(report_from_thread, self.config.alerts, time.time_ns)
        try:
            server = metrics.serve(listen, collector)
        except (OSError, DpmsError) as exc:
            self.metrics_state["error"] = f"cannot serve metrics on {listen}: {exc}"
            log.error("%s", self.metrics_state["error"])
            return
        host, port = server.server_address[:2]
        shown = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        self.metrics_state["listen"] = shown
        log.info("serving Prometheus metrics on http://%s/metrics", shown)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(server.shutdown)
            server.server_close()
