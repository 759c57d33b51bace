"""The Prometheus collectors: the daemon's (from a status report) and the server's."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dpmsfs.health import AlertSettings
from dpmsfs.metrics import StatusCollector, make_registry
from remote.metrics import ServerMetrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def scrape(report: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def source() -> dict[str, Any]:
        if isinstance(report, Exception):
            raise report
        return dict(report)

    collector = StatusCollector(source, AlertSettings(), lambda: 0)
    return samples(generate_latest(make_registry(collector)).decode())


REPORT: dict[str, Any] = {
    "workdir": "/data/work", "tool_id": "tester-07", "daemon": "running",
    "paused_reason": "", "pending_files": 3, "pending_bytes": 300, "captured_files": 10,
    "captured_bytes": 1000, "store_bytes": 400, "store_raw_bytes": 800, "store_objects": 12,
    "store_free_bytes": 5, "store_total_bytes": 100, "errors": 2,
    "last_snapshot_ns": 1_700_000_000_500_000_000,
    "counters": {"captured_files": 4, "captured_bytes": 4096, "new_bytes": 1024},
    "last_verify": {"ok": False, "finished_ns": 1_700_000_100_000_000_000},
    "sync": {"lag_seconds": 42.5, "queue_bytes": 7, "queue_objects": 1, "reachable": True,
             "last_success_ns": 1_700_000_000_000_000_000},
}  # fmt: skip


def test_status_report_becomes_metrics_with_conventional_names() -> None:
    m = scrape(REPORT)
    assert m[("dpmsfs_up", ())] == 1
    assert m[("dpmsfs_info", (("tool_id", "tester-07"), ("version", "0.1.0"),
                               ("workdir", "/data/work")))] == 1  # fmt: skip
    assert m[("dpmsfs_last_snapshot_timestamp_seconds", ())] == 1_700_000_000.5
    assert m[("dpmsfs_sync_lag_seconds", ())] == 42.5
    assert m[("dpmsfs_sync_queue_bytes", ())] == 7
    assert m[("dpmsfs_sync_reachable", ())] == 1
    assert m[("dpmsfs_sync_last_success_timestamp_seconds", ())] == 1_700_000_000
    assert m[("dpmsfs_store_bytes", ())] == 400
    assert m[("dpmsfs_store_free_bytes", ())] == 5
    assert m[("dpmsfs_errors_total", ())] == 2
    assert m[("dpmsfs_captured_bytes_total", ())] == 4096
    assert m[("dpmsfs_captured_files_total", ())] == 4
    assert m[("dpmsfs_pending_bytes", ())] == 300
    assert m[("dpmsfs_last_verify_ok", ())] == 0
    assert m[("dpmsfs_last_verify_timestamp_seconds", ())] == 1_700_000_100
    assert m[("dpmsfs_capture_paused", ())] == 0
    # 5 % free and a failed verify: two critical alerts, one series each.
    assert m[("dpmsfs_alert_active", (("name", "store_free_space"), ("severity", "critical")))] == 1
    assert m[("dpmsfs_alert_active", (("name", "verify_failed"), ("severity", "critical")))] == 1
    assert m[("dpmsfs_health_level", ())] == 2
    assert ("process_cpu_seconds_total", ()) in m


def test_sections_not_configured_are_left_out() -> None:
    report = {k: v for k, v in REPORT.items() if k not in ("sync", "last_verify")}
    report["store_free_bytes"] = 90
    m = scrape(report)
    assert not any(name.startswith("dpmsfs_sync_") for name, _ in m)
    assert ("dpmsfs_last_verify_ok", ()) not in m
    assert m[("dpmsfs_health_level", ())] == 0
    assert not any(name == "dpmsfs_alert_active" for name, _ in m)


def test_a_failing_report_still_answers_the_scrape() -> None:
    m = scrape(RuntimeError("trio loop gone"))
    assert m[("dpmsfs_up", ())] == 0
    assert ("dpmsfs_store_bytes", ()) not in m


def test_server_metrics_requests_latency_bytes_per_tool_and_lag() -> None:
    stored = {"tester-07": 1000, "tester-08": 2000}
    lag: list[float | None] = [None]
    metrics = ServerMetrics(stored_bytes=lambda: stored, replication_lag=lambda: lag[0],
                            stored_objects=lambda: {"tester-07": 3})  # fmt: skip
    metrics.observe_request("objects:upload", "POST", 200, 0.003)
    metrics.observe_request("objects:upload", "POST", 200, 0.2)
    metrics.observe_request("objects/<id>", "GET", 404, 0.0005)
    content_type, body = metrics.render()
    assert content_type.startswith("text/plain; version=")
    m = samples(body.decode())
    upload = (("endpoint", "objects:upload"), ("method", "POST"))
    assert m[("dpmsfs_server_requests_total", (*upload, ("status", "200")))] == 2
    assert m[("dpmsfs_server_requests_total", (("endpoint", "objects/<id>"), ("method", "GET"),
                                               ("status", "404")))] == 1  # fmt: skip
    assert m[("dpmsfs_server_request_duration_seconds_count", upload)] == 2
    assert (
        m[
            (
                "dpmsfs_server_request_duration_seconds_bucket",
                (upload[0], ("le", "0.005"), upload[1]),
            )
        ]
        == 1
    )
    assert (
        m[("dpmsfs_server_request_duration_seconds_bucket", (upload[0], ("le", "0.25"), upload[1]))]
        == 2
    )
    assert m[("dpmsfs_server_stored_bytes", (("tool", "tester-08"),))] == 2000
    assert m[("dpmsfs_server_stored_objects", (("tool", "tester-07"),))] == 3
    assert not any(name == "dpmsfs_server_replication_lag_seconds" for name, _ in m)
    lag[0] = 12.0
    stored["tester-09"] = 5  # read at scrape time
    m = samples(metrics.render()[1].decode())
    assert m[("dpmsfs_server_replication_lag_seconds", ())] == 12
    assert m[("dpmsfs_server_stored_bytes", (("tool", "tester-09"),))] == 5


def test_two_servers_in_one_process_do_not_share_counters() -> None:
    a, b = ServerMetrics(), ServerMetrics()
    a.observe_request("health", "GET", 200, 0.001)
    assert "dpmsfs_server_requests_total{" in a.render()[1].decode()
    assert "dpmsfs_server_requests_total{" not in b.render()[1].decode()
