"""Every alert rule of dpmsfs/health.py at its edges, and the [alerts] configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dpmsfs import config
from dpmsfs.errors import UsageError
from dpmsfs.health import CRITICAL, HEALTHY, WARNING, AlertSettings, evaluate

NOW = 1_800_000_000 * 10**9
RULES = AlertSettings()


def healthy_report(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "workdir": "/data/work",
        "daemon": "running",
        "mounted": True,
        "capture": "running",
        "paused_reason": "",
        "store_free_bytes": 50,
        "store_total_bytes": 100,
    }
    report.update(changes)
    return report


def names(report: dict[str, Any], rules: AlertSettings = RULES) -> dict[str, str]:
    return {a.name: a.severity for a in evaluate(report, rules, NOW).alerts}


def test_a_healthy_report_has_no_alert() -> None:
    result = evaluate(healthy_report(), RULES, NOW)
    assert result.level == HEALTHY and result.alerts == ()
    assert result.to_dict() == {"level": 0, "state": "healthy", "alerts": []}


def test_an_empty_report_raises_nothing_it_cannot_judge() -> None:
    assert evaluate({}, RULES, NOW).level == HEALTHY


def test_daemon_down_and_not_mounted_are_critical() -> None:
    result = evaluate(healthy_report(daemon="not running (gone)", mounted=False), RULES, NOW)
    assert {a.name: a.severity for a in result.alerts} == {
        "daemon_down": "critical", "not_mounted": "critical"}  # fmt: skip
    assert result.level == CRITICAL
    assert "gone" in result.alerts[0].message


def test_capture_paused_only_counts_while_the_daemon_runs() -> None:
    assert names(healthy_report(paused_reason="store full")) == {"capture_paused": "critical"}
    down = healthy_report(paused_reason="store full", daemon="not running")
    assert "capture_paused" not in names(down)
    as_warning = AlertSettings(capture_paused_severity="warning")
    assert names(healthy_report(paused_reason="x"), as_warning) == {"capture_paused": "warning"}


@pytest.mark.parametrize(
    ("free", "expected"),
    [(20, None), (19, "warning"), (10, "warning"), (9, "critical"), (0, "critical"), (100, None)],
)
def test_store_free_space_thresholds(free: int, expected: str | None) -> None:
    found = names(healthy_report(store_free_bytes=free, store_total_bytes=100))
    assert found.get("store_free_space") == expected


def test_store_free_space_unknown_is_no_alert() -> None:
    assert names(healthy_report(store_free_bytes=None, store_total_bytes=None)) == {}
    assert names(healthy_report(store_free_bytes=0, store_total_bytes=0)) == {}


@pytest.mark.parametrize(
    ("lag", "expected"),
    [(0, None), (3599.9, None), (3600, "warning"), (21599, "warning"), (21600, "critical")],
)
def test_sync_lag_thresholds(lag: float, expected: str | None) -> None:
    sync = {"reachable": True, "lag_seconds": lag, "last_success_ns": NOW - 10**9}
    found = evaluate(healthy_report(sync=sync), RULES, NOW).alerts
    assert {a.name: a.severity for a in found}.get("sync_lag") == expected
    if expected:
        assert found[0].since == NOW - 10**9


def test_sync_absent_or_without_lag_is_tolerated() -> None:
    assert names(healthy_report()) == {}
    assert names(healthy_report(sync={})) == {}
    assert names(healthy_report(sync={"lag_seconds": None})) == {}
    assert names(healthy_report(sync="not configured")) == {}


def test_server_unreachable() -> None:
    sync = {"reachable": False, "lag_seconds": 5, "last_error": "connection refused"}
    result = evaluate(healthy_report(sync=sync), RULES, NOW)
    assert [(a.name, a.severity) for a in result.alerts] == [("server_unreachable", "warning")]
    assert "connection refused" in result.alerts[0].message
    assert result.level == WARNING
    assert names(healthy_report(sync={"reachable": True})) == {}
    # not contacted yet (the first pass is still running): no alert
    assert names(healthy_report(sync={"reachable": None, "lag_seconds": 5})) == {}


def test_a_server_not_contacted_yet_is_not_unreachable() -> None:
    """`reachable` is None while the first sync pass runs (a first upload can take
    minutes): that raised `server_unreachable` in the sync benchmark and cleared it when
    the pass ended."""
    assert names(healthy_report(sync={"reachable": None, "lag_seconds": 5})) == {}


def test_verify_failure_is_critical_until_a_verify_passes() -> None:
    failed = {"ok": False, "finished_ns": NOW - 5, "summary": "DAMAGED: 1 damaged objects"}
    result = evaluate(healthy_report(last_verify=failed), RULES, NOW)
    assert [(a.name, a.severity, a.since) for a in result.alerts] == [
        ("verify_failed", "critical", NOW - 5)]  # fmt: skip
    assert "DAMAGED" in result.alerts[0].message
    assert names(healthy_report(last_verify={"ok": True, "finished_ns": NOW})) == {}
    assert names(healthy_report(last_verify=None)) == {}  # never verified: no alert


def test_prune_failing() -> None:
    assert names(healthy_report(prune={"last_error": "disk I/O"})) == {"prune_failing": "warning"}
    assert names(healthy_report(prune={"last_error": ""})) == {}
    assert names(healthy_report(prune=None)) == {}


def test_alert_delivery_failing_is_its_own_alert() -> None:
    delivery = {"failing": True, "last_error": "webhook: HTTP 500", "failing_since_ns": 7}
    result = evaluate(healthy_report(alert_delivery=delivery), RULES, NOW)
    assert [(a.name, a.since) for a in result.alerts] == [("alert_delivery_failing", 7)]
    assert names(healthy_report(alert_delivery={"failing": False})) == {}


def test_level_is_the_worst_alert() -> None:
    report = healthy_report(prune={"last_error": "x"}, store_free_bytes=5)
    assert evaluate(report, RULES, NOW).level == CRITICAL
    assert evaluate(healthy_report(prune={"last_error": "x"}), RULES, NOW).level == WARNING


def test_alert_table_parses_and_checks() -> None:
    settings = AlertSettings.from_table(
        {"store_free_warning_percent": 30, "command": "true", "webhook_attempts": 2}
    )
    assert settings.store_free_warning_percent == 30 and settings.webhook_attempts == 2
    bad = [
        ({"nonsense": 1}, "unknown [alerts] setting"),
        ({"command": 5}, "must be a string"),
        ({"webhook_attempts": 0}, "positive integer"),
        ({"sync_lag_warning_seconds": -1}, "number >= 0"),
        ({"sync_lag_warning_seconds": True}, "number >= 0"),
        ({"capture_paused_severity": "loud"}, "'warning' or 'critical'"),
        ({"sync_lag_warning_seconds": 10, "sync_lag_critical_seconds": 5}, "below the warning"),
        ({"store_free_critical_percent": 50}, "above the warning"),
        ({"webhook": "ftp://x"}, "http:// or https://"),
        ({"evaluate_interval_seconds": 0}, "above 0"),
    ]
    for table, message in bad:
        with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
            AlertSettings.from_table(table)
    with pytest.raises(UsageError, match="must be a table"):
        AlertSettings.from_table(3)


def test_configuration_file_with_alerts_and_metrics(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    path = tmp_path / "c.toml"
    path.write_text(
        f'store = "{tmp_path}/store"\nmetrics_listen = "127.0.0.1:9310"\n'
        '[alerts]\nstore_free_critical_percent = 5\nwebhook = "http://127.0.0.1:1/hook"\n'
    )
    cfg = config.load(work, path)
    assert cfg.metrics_listen == "127.0.0.1:9310"
    assert cfg.alerts.store_free_critical_percent == 5
    assert cfg.alerts.store_free_warning_percent == 20  # the default stays
    assert config.load(work, path, metrics_listen="[::1]:0").metrics_listen == "[::1]:0"
    path.write_text(f'store = "{tmp_path}/store"\nmetrics_listen = "localhost"\n')
    with pytest.raises(UsageError, match="expected HOST:PORT"):
        config.load(work, path)
    path.write_text(f'store = "{tmp_path}/store"\n[alerts]\nbogus = 1\n')
    with pytest.raises(UsageError, match="bogus"):
        config.load(work, path)


def test_parse_listen() -> None:
    assert config.parse_listen("127.0.0.1:9310") == ("127.0.0.1", 9310)
    assert config.parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("", ":9310", "host:", "host:99999", "host:x"):
        with pytest.raises(UsageError):
            config.parse_listen(bad)
