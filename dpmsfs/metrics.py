"""Prometheus metrics of one work directory, read from the status report at scrape time.

A custom Collector (prometheus_client) turns the same report `dpmsfs status` shows into
metric families when Prometheus scrapes: nothing is counted in the I/O or capture
paths for the sake of metrics. Names follow the Prometheus conventions (base units,
`_seconds`, `_bytes`, `_total` for counters, `_timestamp_seconds` for points in time);
the list is a contract in docs/operations.md ("Monitoring and alerts").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dpmsfs import __version__
from dpmsfs.config import parse_listen
from dpmsfs.health import AlertSettings, evaluate

log = logging.getLogger(__name__)

ReportSource = Callable[[], dict[str, Any]]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class StatusCollector(Collector):
    """Metric families from `report()` (called once per scrape, in the server's thread)."""

    def __init__(self, report: ReportSource, rules: AlertSettings, now_ns: Callable[[], int]):
        self.report = report
        self.rules = rules
        self.now_ns = now_ns

    def collect(self) -> Iterator[Metric]:
        try:
            report = self.report()
        except Exception as exc:  # a scrape must answer even when the daemon cannot
            log.warning("metrics: status report failed: %s", exc)
            report = None
        yield _gauge("dpmsfs_up", "1 if the daemon produced a status report", 1 if report else 0)
        if not report:
            return
        info = InfoMetricFamily("dpmsfs", "this work directory's daemon")
        info.add_metric([], {"workdir": str(report.get("workdir", "")),
                             "tool_id": str(report.get("tool_id", "")),
                             "version": __version__})  # fmt: skip
        yield info
        yield from _families(report)
        result = evaluate(report, self.rules, self.now_ns())
        yield _gauge("dpmsfs_health_level", "0 healthy, 1 warning, 2 critical", result.level)
        active = GaugeMetricFamily("dpmsfs_alert_active", "1 for each active alert",
                                   labels=["name", "severity"])  # fmt: skip
        for alert in result.alerts:
            active.add_metric([alert.name, alert.severity], 1)
        yield active


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


# (metric name, help, path in the report); gauges then counters. A value missing from
# the report (a section not configured) leaves the metric out rather than reporting 0.
_GAUGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("dpmsfs_capture_paused", "1 while capture is paused", ("capture_paused",)),
    ("dpmsfs_pending_files", "changed files not captured yet", ("pending_files",)),
    ("dpmsfs_pending_bytes", "bytes of changed files not captured yet", ("pending_bytes",)),
    ("dpmsfs_files", "files of the work directory under version control", ("captured_files",)),
    ("dpmsfs_logical_bytes", "bytes of those files (their current sizes)", ("captured_bytes",)),
    ("dpmsfs_store_bytes", "bytes stored in the local store (compressed)", ("store_bytes",)),
    ("dpmsfs_store_raw_bytes", "unique content bytes before compression", ("store_raw_bytes",)),
    ("dpmsfs_store_objects", "objects (chunks and trees) in the store", ("store_objects",)),
    ("dpmsfs_store_free_bytes", "free bytes on the store's file system", ("store_free_bytes",)),
    ("dpmsfs_store_size_bytes", "size of the store's file system", ("store_total_bytes",)),
    ("dpmsfs_last_snapshot_timestamp_seconds", "time of the newest snapshot",
     ("last_snapshot_seconds",)),
    ("dpmsfs_last_capture_timestamp_seconds", "time the last file was captured",
     ("last_captured_seconds",)),
    ("dpmsfs_last_verify_timestamp_seconds", "time the last verify finished",
     ("last_verify", "finished_seconds")),
    ("dpmsfs_last_verify_ok", "1 if the last verify found no damage", ("last_verify", "ok")),
    ("dpmsfs_sync_lag_seconds", "how far the server is behind the local history",
     ("sync", "lag_seconds")),
    ("dpmsfs_sync_queue_bytes", "bytes waiting to be uploaded", ("sync", "queue_bytes")),
    ("dpmsfs_sync_queue_objects", "objects waiting to be uploaded", ("sync", "queue_objects")),
    ("dpmsfs_sync_reachable", "1 if the server answered the last attempt",
     ("sync", "reachable")),
    ("dpmsfs_sync_last_success_timestamp_seconds", "time of the last successful sync",
     ("sync", "last_success_seconds")),
    ("dpmsfs_alert_delivery_queued", "alert events not delivered yet",
     ("alert_delivery", "queued")),
)  # fmt: skip
_COUNTERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("dpmsfs_captured_files", "file versions captured since the daemon started",
     ("counters", "captured_files")),
    ("dpmsfs_captured_bytes", "bytes read by capture since the daemon started",
     ("counters", "captured_bytes")),
    ("dpmsfs_new_bytes", "bytes of new content stored since the daemon started",
     ("counters", "new_bytes")),
    ("dpmsfs_errors", "internal errors since the daemon started", ("errors",)),
    ("dpmsfs_alert_delivery_errors", "failed alert deliveries", ("alert_delivery", "errors")),
    ("dpmsfs_alert_deliveries", "alert events delivered", ("alert_delivery", "delivered")),
)  # fmt: skip


def _lookup(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = report
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return _number(value)


def _derived(report: dict[str, Any]) -> dict[str, Any]:
    """The report with the values metrics want in base units (seconds, 0/1)."""
    r = dict(report)
    r["capture_paused"] = bool(report.get("paused_reason"))
    for key in ("last_snapshot", "last_captured"):
        ns = report.get(f"{key}_ns")
        if isinstance(ns, int) and ns > 0:
            r[f"{key}_seconds"] = ns / 1e9
    for section, key in (("last_verify", "finished"), ("sync", "last_success")):
        value = report.get(section)
        if isinstance(value, dict):
            ns = value.get(f"{key}_ns")
            copy = dict(value)
            if isinstance(ns, int) and ns > 0:
                copy[f"{key}_seconds"] = ns / 1e9
            r[section] = copy
    return r


def _families(report: dict[str, Any]) -> Iterator[Metric]:
    r = _derived(report)
    for name, doc, path in _GAUGES:
        value = _lookup(r, path)
        if value is not None:
            yield GaugeMetricFamily(name, doc, value=value)
    for name, doc, path in _COUNTERS:
        value = _lookup(r, path)
        if value is not None:
            yield CounterMetricFamily(name, doc, value=value)


def make_registry(collector: StatusCollector) -> CollectorRegistry:
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)  # CPU, memory, open fds of the daemon
    return registry


def serve(listen: str, collector: StatusCollector) -> Any:
    """Start /metrics on `listen` in a daemon thread; returns the server (`server_port`,
    `shutdown()`). A bind error is an OSError the caller reports."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=make_registry(collector))
    return server
