"""The status record a tool sends to the server for the fleet page (`PUT /v2/<ns>/report`).

Built from the same status report `dpmsfs status` shows (its alerts and the sync lag) plus
the last drill result, so the fleet page says what the tool itself says. Sending goes
through the `remote.backend.Backend` interface only. A failed send is returned as text
(and logged): a report is advisory, and must never fail the drill or the daemon.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from dpmsfs.errors import DpmsError

if TYPE_CHECKING:
    from remote.backend import Backend

log = logging.getLogger(__name__)

MAX_TEXT = 500  # the server refuses longer strings (docs/remote-api.md)


def build_report(status: dict[str, Any] | None, drill: dict[str, Any] | None) -> dict[str, Any]:
    """The report body from a status report (may be None) and a drill's `to_report()`."""
    alerts = []
    # `dpmsfs status` evaluates them into "health"; the daemon's report has its alert
    # service's section ("alerts": {"active": [...]}) instead
    health = (status or {}).get("health")
    section = (status or {}).get("alerts")
    if isinstance(health, dict):
        found = health.get("alerts", [])
    elif isinstance(section, dict):
        found = section.get("active", [])
    else:
        found = []
    for alert in found if isinstance(found, list) else []:
        if isinstance(alert, dict) and alert.get("severity") in ("warning", "critical"):
            alerts.append({"name": str(alert.get("name", ""))[:MAX_TEXT],
                           "severity": alert["severity"],
                           "message": str(alert.get("message", ""))[:MAX_TEXT]})  # fmt: skip
    sync = (status or {}).get("sync")
    lag = sync.get("lag_seconds") if isinstance(sync, dict) else None
    if isinstance(lag, bool) or not isinstance(lag, int | float) or lag < 0:
        lag = None
    if drill is not None:
        drill = {**drill, "snapshot": str(drill.get("snapshot", ""))[:MAX_TEXT],
                 "message": str(drill.get("message", ""))[:MAX_TEXT]}  # fmt: skip
    return {"time_utc_ns": time.time_ns(), "alerts": alerts[:100], "sync_lag_seconds": lag,
            "drill": drill}  # fmt: skip


def send(backend: Backend, report: dict[str, Any]) -> str:
    """PUT the report; '' on success, else the one-line reason (also logged)."""
    from remote.errors import RemoteError

    try:
        backend.put_report(report)
    except (RemoteError, DpmsError, OSError) as exc:
        log.warning("could not report to the server: %s", exc)
        return str(exc)
    return ""
