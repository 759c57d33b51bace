"""The tool's fleet report body: built from either shape of status report, always valid
for the server's validator (remote/fleet.py parse_report)."""

from __future__ import annotations

import json

from dpmsfs.fleet_report import build_report
from remote.fleet import parse_report


def test_report_from_status_health_is_accepted_by_the_server() -> None:
    status = {"health": {"alerts": [{"name": "sync_lag", "severity": "critical",
                                     "message": "x" * 900, "since": 5}]},
              "sync": {"lag_seconds": 7200}}  # fmt: skip
    drill = {"ok": True, "time_utc_ns": 1, "snapshot": "s", "files": 2, "bytes": 3,
             "seconds": 0.5, "first_file_seconds": 0.1, "message": ""}  # fmt: skip
    doc = build_report(status, drill)
    parsed = parse_report(json.dumps(doc).encode())
    assert parsed["sync_lag_seconds"] == 7200 and parsed["drill"] == drill
    assert len(parsed["alerts"][0]["message"]) == 500  # cut to what the server accepts


def test_report_from_the_daemons_alert_section_and_from_nothing() -> None:
    paused = {"name": "capture_paused", "severity": "warning", "message": "paused"}
    daemon = {"alerts": {"active": [paused]}, "sync": {"lag_seconds": True}}
    doc = parse_report(json.dumps(build_report(daemon, None)).encode())
    assert doc["alerts"][0]["name"] == "capture_paused" and doc["sync_lag_seconds"] is None
    empty = parse_report(json.dumps(build_report(None, None)).encode())
    assert empty["alerts"] == [] and empty["drill"] is None
