"""Health of one work directory: the status report plus the alert rules -> alerts and a level.

A pure function, so `dpmsfs status` (daemon up or down), the daemon's alert service and
its Prometheus collector all judge the same report the same way, and every rule can be
unit-tested with edge values without a mount.

The report is the daemon's `status` control answer (or the offline report of
`dpmsfs status` when the daemon is down). Sections other parts of dpmsfs add are read
when present and ignored when absent: `sync` (`reachable`, `lag_seconds`,
`last_success_ns`), `prune` (`last_error`), `last_verify`, `alert_delivery`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from dpmsfs.errors import UsageError

HEALTHY, WARNING, CRITICAL = 0, 1, 2
SEVERITY_LEVEL = {"warning": WARNING, "critical": CRITICAL}


@dataclass(frozen=True)
class AlertSettings:
    """The `[alerts]` table of the configuration: rule thresholds and where alerts go.

    Defaults suit a tool syncing every few minutes: an hour without a successful sync is
    worth a look, six hours means history is at risk. Free space as the planning notes
    suggest (20 % warning, 10 % critical).
    """

    sync_lag_warning_seconds: float = 3600.0
    sync_lag_critical_seconds: float = 6 * 3600.0
    store_free_warning_percent: float = 20.0
    store_free_critical_percent: float = 10.0
    capture_paused_severity: str = "critical"
    server_unreachable_severity: str = "warning"
    prune_failing_severity: str = "warning"
    # Delivery (dpmsfs/alerts.py): a command and/or a webhook, on every change of state.
    command: str = ""
    command_timeout_seconds: float = 30.0
    webhook: str = ""
    webhook_timeout_seconds: float = 10.0
    webhook_attempts: int = 4
    webhook_backoff_seconds: float = 1.0
    evaluate_interval_seconds: float = 30.0
    # The status report the rules read is rebuilt at most this often (or when a recorded
    # result beside the store changes): building it reads LMDB and stats pending files,
    # which cost the write workload 1.32x at 0.2 s evaluations (docs/benchmarks.md).
    report_max_age_seconds: float = 10.0

    @classmethod
    def from_table(cls, table: Any, source: object = "configuration") -> AlertSettings:
        """Parse the TOML table; an unknown key or a bad value is a clear UsageError."""
        if not isinstance(table, dict):
            raise UsageError(f"{source}: [alerts] must be a table")
        known = {f.name: f for f in fields(cls)}
        unknown = set(table) - set(known)
        if unknown:
            raise UsageError(f"{source}: unknown [alerts] setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, value in table.items():
            default = known[key].default
            if isinstance(default, str):
                if not isinstance(value, str):
                    raise UsageError(f"{source}: alerts.{key} must be a string")
            elif isinstance(default, int) and not isinstance(default, bool):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise UsageError(f"{source}: alerts.{key} must be a positive integer")
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise UsageError(f"{source}: alerts.{key} must be a number >= 0")
            values[key] = value
        settings = dataclasses.replace(cls(), **values)
        settings.check(source)
        return settings

    def check(self, source: object = "configuration") -> None:
        for key in ("capture_paused_severity", "server_unreachable_severity",
                    "prune_failing_severity"):  # fmt: skip
            if getattr(self, key) not in SEVERITY_LEVEL:
                raise UsageError(f"{source}: alerts.{key} must be 'warning' or 'critical'")
        if self.sync_lag_critical_seconds < self.sync_lag_warning_seconds:
            raise UsageError(f"{source}: alerts.sync_lag_critical_seconds is below the warning")
        if self.store_free_critical_percent > self.store_free_warning_percent:
            raise UsageError(f"{source}: alerts.store_free_critical_percent is above the warning")
        if self.webhook and not self.webhook.startswith(("http://", "https://")):
            raise UsageError(f"{source}: alerts.webhook must be an http:// or https:// URL")
        if self.evaluate_interval_seconds <= 0:
            raise UsageError(f"{source}: alerts.evaluate_interval_seconds must be above 0")


@dataclass(frozen=True)
class Alert:
    """One active alert. `since` (ns since the epoch) is when the condition began, if the
    report tells (last successful sync, time of a failed verify), else 0: the alert
    service stamps it with the time it first saw the alert."""

    name: str
    severity: str
    message: str
    since: int = 0

    @property
    def level(self) -> int:
        return SEVERITY_LEVEL[self.severity]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Health:
    level: int
    alerts: tuple[Alert, ...]

    @property
    def word(self) -> str:
        return ("healthy", "warning", "critical")[self.level]

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "state": self.word,
                "alerts": [a.to_dict() for a in self.alerts]}  # fmt: skip


def evaluate(report: dict[str, Any], rules: AlertSettings, now_ns: int) -> Health:
    """Every rule against the report; the level is the worst alert's (0 if none)."""
    found: list[Alert] = []
    for rule in RULES:
        alert = rule(report, rules, now_ns)
        if alert is not None:
            found.append(alert)
    level = max((a.level for a in found), default=HEALTHY)
    return Health(level, tuple(found))


def _section(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = report.get(name)
    return value if isinstance(value, dict) else None


def _daemon(report: dict[str, Any], rules: AlertSettings, now_ns: int) -> Alert | None:
    daemon = report.get("daemon")
    if daemon is None or daemon == "running":
        return None
    return Alert("daemon_down", "critical", f"dpmsfs daemon: {daemon}")


def _mounted(report: dict[str, Any], rules: AlertSettings, now_ns: int) -> Alert | None:
    if report.get("mounted", True):
        return None  # absent: the daemon's own report, which does not check its mount
    return Alert("not_mounted", "critical",
                 f"{report.get('workdir', 'the work directory')} is not mounted: "
                 "changes are not versioned")  # fmt: skip


def _capture_paused(report: dict[str, Any], rules: AlertSettings, now_ns: int) -> Alert | None:
    reason = report.get("paused_reason")
    if not reason or report.get("daemon", "running") != "running":
        return None
    return Alert("capture_paused", rules.capture_paused_severity, f"capture paused: {reason}")


def _store_free(report: dict[str, Any], rules: AlertSettings, now_ns: int) -> Alert | None:
    free, total = report.get("store_free_bytes"), report.get("store_total_bytes")
    if not isinstance(free, int) or not isinstance(total, int) or total <= 0:
        return None
    percent = 100.0 * free / total
    if percent < rules.store_free_critical_percent:
        severity = "critical"
    elif percent < rules.store_free_warning_percent:
        severity = "warning"
    else:
        return None
    message = f"the store's disk has {percent:.1f} % free ({free} of {total} bytes)"
    return Alert("store_free_space", severity, message)


def _sync_lag(report: dict[str, Any], rules: AlertSettings, now_ns: int) -> Alert | None:
    sync = _section(report, "sync")
    if sync is None:
        return None  # sync not configured
    lag = sync.get("lag_seconds")
    if not isinstance(lag, int | float) or isinstance(lag, bool):
        return None
    if lag >= rules.sync_lag_critical_seconds:
        severity = "critical"
    elif lag >= rules.sync_lag_warning_seconds:
        severity = "warning"
    else:
        return None
    last = sync.get("last_success_ns")
    since = int(last) if isinstance(last, int) and last > 0 else 0
    return Alert("sync_lag", severity,
                 f"the server is {lag:.0f} s behind the local history", since)  # fmt: skip


def _server_unreachable(report: dict[str, Any], rules: AlertSettings, now_ns: int) -> Alert | None:
    sync = _section(report, "sync")
    # Only a server found unreachable: None is "not contacted yet" (the first pass still
    # running, e.g. a first upload that takes minutes), which raised this alert before.
    if sync is None or sync.get("reachable") is not False:
        return None
    error = sync.get("last_error")
    detail = f": {error}" if error else ""
    return Alert("server_unreachable", rules.server_unreachable_severity,
                 f"the server cannot be reached{detail}")  # fmt: skip


def _verify_failed(report: dict[str, Any], rules: AlertSettings, now_ns: int) -> Alert | None:
    verify = _section(report, "last_verify")
    if verify is None or verify.get("ok", True):
        return None
    when = verify.get("finished_ns")
    return Alert("verify_failed", "critical",
                 f"the last verify found damage: {verify.get('summary', 'see dpmsfs verify')}",
                 int(when) if isinstance(when, int) else 0)  # fmt: skip


def _prune_failing(report: dict[str, Any], rules: AlertSettings, now_ns: int) -> Alert | None:
    prune = _section(report, "prune")
    if prune is None or not prune.get("last_error"):
        return None
    return Alert("prune_failing", rules.prune_failing_severity,
                 f"prune failed: {prune['last_error']}")  # fmt: skip


def _delivery_failing(report: dict[str, Any], rules: AlertSettings, now_ns: int) -> Alert | None:
    delivery = _section(report, "alert_delivery")
    if delivery is None or not delivery.get("failing"):
        return None
    since = delivery.get("failing_since_ns")
    return Alert("alert_delivery_failing", "warning",
                 f"alerts cannot be delivered: {delivery.get('last_error', '')}",
                 int(since) if isinstance(since, int) else 0)  # fmt: skip


RULES = (_daemon, _mounted, _capture_paused, _store_free, _sync_lag, _server_unreachable,
         _verify_failed, _prune_failing, _delivery_failing)  # fmt: skip
