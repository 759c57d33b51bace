"""Tool status reports, the per-tool stored-bytes history, and the admin's fleet page.

A tool PUTs a small status record (`PUT /v2/<ns>/report`); the server keeps the latest one
per namespace (latest wins: a status is not history, unlike refs) and computes the rest
itself from what it holds: the newest `snapshot.<name>` ref and the bytes stored for the
namespace. Each time it looks at a namespace it also records that day's stored bytes, so
the page can draw a chart without a metrics system. Contract: docs/remote-api.md
("Tool reports and the fleet page").

This module knows nothing about HTTP: the ASGI app (server.py) reads bodies and sends the
answers; here are validation, the small on-disk state under `DIR/fleet/` and the HTML.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remote import names
from remote.store import DiskStore

log = logging.getLogger(__name__)

MAX_REPORT_SIZE = 64 << 10
MAX_ALERTS = 100
MAX_TEXT = 500
HISTORY_DAYS = 400  # a little over a year of daily points per tool
SESSION_SECONDS = 12 * 3600
SESSION_COOKIE = "dpmsfs_fleet"
SNAPSHOT_PREFIX = "snapshot."
SEVERITIES = ("warning", "critical")
_REPORT_KEYS = {"time_utc_ns", "alerts", "sync_lag_seconds", "drill"}
_DRILL_KEYS = {
    "time_utc_ns",
    "ok",
    "snapshot",
    "files",
    "bytes",
    "seconds",
    "first_file_seconds",
    "message",
}


class ReportError(ValueError):
    """A report body that does not have the documented shape (answered with 400)."""


# -- validation -----------------------------------------------------------------------------


def _number(value: Any, where: str, *, integer: bool = False) -> float:
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value < 0:
        kind = "a non-negative integer" if integer else "a non-negative number"
        raise ReportError(f"{where} must be {kind}")
    return float(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ReportError(f"{where} must be a string of at most {MAX_TEXT} characters")
    return value


def _unknown(doc: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(doc) - allowed)
    if extra:
        raise ReportError(f"{where}: unknown field(s) {', '.join(extra)[:200]}")


def parse_report(raw: bytes) -> dict[str, Any]:
    """Decode and check a report body; unknown fields are refused so typos do not vanish."""
    if len(raw) > MAX_REPORT_SIZE:
        raise ReportError(f"report of {len(raw)} bytes exceeds {MAX_REPORT_SIZE}")
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"report is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ReportError("report must be a JSON object")
    _unknown(doc, _REPORT_KEYS, "report")
    if "time_utc_ns" not in doc:
        raise ReportError("report needs time_utc_ns")
    _number(doc["time_utc_ns"], "time_utc_ns", integer=True)
    alerts = doc.get("alerts", [])
    if not isinstance(alerts, list) or len(alerts) > MAX_ALERTS:
        raise ReportError(f"alerts must be a list of at most {MAX_ALERTS} objects")
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise ReportError(f"alerts[{i}] must be an object")
        _unknown(alert, {"name", "severity", "message"}, f"alerts[{i}]")
        _text(alert.get("name"), f"alerts[{i}].name")
        if alert.get("severity") not in SEVERITIES:
            raise ReportError(f'alerts[{i}].severity must be "warning" or "critical"')
        _text(alert.get("message", ""), f"alerts[{i}].message")
    lag = doc.get("sync_lag_seconds")
    if lag is not None:
        _number(lag, "sync_lag_seconds")
    drill = doc.get("drill")
    if drill is not None:
        if not isinstance(drill, dict):
            raise ReportError("drill must be an object or null")
        _unknown(drill, _DRILL_KEYS, "drill")
        if not isinstance(drill.get("ok"), bool):
            raise ReportError("drill.ok must be true or false")
        _number(drill.get("time_utc_ns"), "drill.time_utc_ns", integer=True)
        for key in ("files", "bytes"):
            _number(drill.get(key, 0), f"drill.{key}", integer=True)
        for key in ("seconds", "first_file_seconds"):
            _number(drill.get(key, 0), f"drill.{key}")
        _text(drill.get("snapshot", ""), "drill.snapshot")
        _text(drill.get("message", ""), "drill.message")
    return {"time_utc_ns": doc["time_utc_ns"], "alerts": alerts, "sync_lag_seconds": lag,
            "drill": drill}  # fmt: skip


# -- state under DIR/fleet -----------------------------------------------------------------


def _write_json(path: Path, doc: Any) -> None:
    """Temp file, fsync, rename: a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def day_of(time_s: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time_s))


@dataclass
class ToolRow:
    """One line of the fleet page: what the tool said and what the server knows."""

    namespace: str
    report: dict[str, Any] | None
    received_utc_ns: int | None
    last_snapshot: str | None
    last_snapshot_utc_ns: int | None
    stored_bytes: int
    history: list[tuple[str, int]]


class FleetState:
    """Latest report and daily stored-bytes history per namespace, under `DIR/fleet/`."""

    def __init__(self, store: DiskStore) -> None:
        self.store = store
        self.root = store.root / "fleet"
        self._lock = threading.Lock()

    def _dir(self, namespace: str) -> Path:
        return self.root / names.namespace_dir(namespace)

    def put_report(self, namespace: str, report: dict[str, Any], now_ns: int) -> None:
        doc = {"report": report, "received_utc_ns": now_ns}
        _write_json(self._dir(namespace) / "report.json", doc)
        self.record_bytes(namespace, now_ns / 1e9)

    def get_report(self, namespace: str) -> dict[str, Any] | None:
        doc = _read_json(self._dir(namespace) / "report.json")
        return doc if isinstance(doc, dict) else None

    def history(self, namespace: str) -> dict[str, int]:
        doc = _read_json(self._dir(namespace) / "history.json")
        days = doc.get("days") if isinstance(doc, dict) else None
        if not isinstance(days, dict):
            return {}
        return {d: v for d, v in days.items() if isinstance(d, str) and isinstance(v, int)}

    def record_bytes(self, namespace: str, now_s: float) -> int:
        """Store today's stored bytes (latest value of the day wins); returns them."""
        stored = self.store.stats(namespace).bytes
        with self._lock:
            days = self.history(namespace)
            today = day_of(now_s)
            if days.get(today) != stored:
                days[today] = stored
                keep = sorted(days)[-HISTORY_DAYS:]
                _write_json(
                    self._dir(namespace) / "history.json", {"days": {d: days[d] for d in keep}}
                )
        return stored

    def last_snapshot(self, namespace: str) -> tuple[str | None, int | None]:
        """Snapshot names sort by time (`YYYY-MM-DDTHHMMSSZ[-n]`), so the last ref is newest."""
        refs = [r for r in self.store.list_refs(namespace) if r.startswith(SNAPSHOT_PREFIX)]
        for ref in reversed(refs):
            found = self.store.read_ref(namespace, ref)
            if found is None:
                continue
            try:
                when = json.loads(found[0]).get("time_utc_ns")
            except (ValueError, AttributeError):
                when = None
            return ref[len(SNAPSHOT_PREFIX) :], when if isinstance(when, int) else None
        return None, None

    def rows(self, now_s: float) -> list[ToolRow]:
        spaces = set(self.store.namespaces())
        if self.root.is_dir():
            spaces |= {n for n in os.listdir(self.root) if names.is_namespace(n)}
        out = []
        for ns in sorted(spaces):
            stored = self.record_bytes(ns, now_s)
            doc = self.get_report(ns) or {}
            snap, snap_ns = self.last_snapshot(ns)
            received = doc.get("received_utc_ns")
            out.append(
                ToolRow(
                    namespace=ns,
                    report=doc.get("report") if isinstance(doc.get("report"), dict) else None,
                    received_utc_ns=received if isinstance(received, int) else None,
                    last_snapshot=snap,
                    last_snapshot_utc_ns=snap_ns,
                    stored_bytes=stored,
                    history=sorted(self.history(ns).items()),
                )
            )
        return out


class Sessions:
    """Logged-in browsers: a random session id in an HttpOnly cookie, never the token.

    Held in memory only: a server restart logs everyone out, which is the safe direction.
    """

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def open(self, now_s: float) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry = {k: v for k, v in self._expiry.items() if v > now_s}
            self._expiry[sid] = now_s + SESSION_SECONDS
        return sid

    def valid(self, sid: str, now_s: float) -> bool:
        with self._lock:
            return self._expiry.get(sid, 0.0) > now_s

    def close(self, sid: str) -> None:
        with self._lock:
            self._expiry.pop(sid, None)


def cookie_value(header: str | None, name: str = SESSION_COOKIE) -> str | None:
    for part in (header or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


# -- HTML ----------------------------------------------------------------------------------

ALERT_COLOUR = "#d62828"
WARN_COLOUR = "#f4a261"
OK_COLOUR = "#2a9d8f"
CHART_COLOUR = "#1d4ed8"

_STYLE = f"""
body {{ font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }}
th {{ background: #eee; text-align: left; }}
.critical {{ background: {ALERT_COLOUR}; color: #fff; padding: 0.1em 0.4em; }}
.warning {{ background: {WARN_COLOUR}; color: #000; padding: 0.1em 0.4em; }}
.ok {{ background: {OK_COLOUR}; color: #fff; padding: 0.1em 0.4em; }}
.muted {{ color: #777; }}
"""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _ago(then_ns: int | None, now_s: float) -> str:
    if then_ns is None:
        return "never"
    secs = max(0.0, now_s - then_ns / 1e9)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(then_ns / 1e9))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if secs >= size:
            return f"{stamp} ({secs / size:.0f} {unit} ago)"
    return f"{stamp} ({secs:.0f} s ago)"


def chart_svg(history: list[tuple[str, int]], width: int = 240, height: int = 60) -> str:
    """A polyline of stored bytes per day; no axes beyond the first/last value (a glance)."""
    if not history:
        return '<span class="muted">no data</span>'
    values = [v for _, v in history]
    top = max(values) or 1
    step = width / max(1, len(values) - 1)
    pts = [
        (i * step if len(values) > 1 else width / 2, height - 4 - (v / top) * (height - 8))
        for i, v in enumerate(values)
    ]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    title = html.escape(f"{history[0][0]}: {human_bytes(values[0])} … "
                        f"{history[-1][0]}: {human_bytes(values[-1])}")  # fmt: skip
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{CHART_COLOUR}"/>' for x, y in pts
    )
    return (
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img"><title>{title}</title>'
        f'<polyline points="{points}" fill="none" stroke="{CHART_COLOUR}" stroke-width="4"/>'
        f"{dots}</svg>"
    )


def _alerts_cell(report: dict[str, Any] | None) -> str:
    if report is None:
        return '<span class="muted">no report</span>'
    alerts = report.get("alerts") or []
    if not alerts:
        return '<span class="ok">none</span>'
    items = []
    for a in alerts:
        sev = a.get("severity") if a.get("severity") in SEVERITIES else "warning"
        text = html.escape(f"{a.get('name', '')}: {a.get('message', '')}".rstrip(": "))
        items.append(f'<div><span class="{sev}">{sev}</span> {text}</div>')
    return "".join(items)


def _drill_cell(report: dict[str, Any] | None, now_s: float) -> str:
    drill = (report or {}).get("drill")
    if not isinstance(drill, dict):
        return '<span class="muted">none</span>'
    verdict = (
        '<span class="ok">passed</span>'
        if drill.get("ok")
        else '<span class="critical">failed</span>'
    )
    detail = (
        f"{drill.get('files', 0)} files, {human_bytes(drill.get('bytes', 0))} in "
        f"{float(drill.get('seconds', 0)):.1f} s (first file "
        f"{float(drill.get('first_file_seconds', 0)):.2f} s)"
    )
    msg = html.escape(str(drill.get("message", "")))
    when = html.escape(_ago(drill.get("time_utc_ns"), now_s))
    return f"{verdict} {html.escape(detail)}<br><span class='muted'>{when}</span> {msg}"


def _lag_cell(report: dict[str, Any] | None) -> str:
    lag = (report or {}).get("sync_lag_seconds")
    if lag is None:
        return '<span class="muted">unknown</span>'
    return f"{float(lag):.0f} s"


def render_fleet(rows: list[ToolRow], now_s: float) -> str:
    body = []
    for r in rows:
        ns = html.escape(r.namespace)
        snap = "none" if r.last_snapshot is None else html.escape(r.last_snapshot)
        snap_when = _ago(r.last_snapshot_utc_ns, now_s) if r.last_snapshot else ""
        body.append(
            f'<tr id="tool-{ns}"><td class="ns">{ns}</td>'
            f"<td>{snap}<br><span class='muted'>{html.escape(snap_when)}</span></td>"
            f"<td>{_lag_cell(r.report)}</td>"
            f"<td>{html.escape(human_bytes(r.stored_bytes))}</td>"
            f"<td>{_alerts_cell(r.report)}</td>"
            f"<td>{_drill_cell(r.report, now_s)}</td>"
            f"<td>{chart_svg(r.history)}</td>"
            f"<td class='muted'>{html.escape(_ago(r.received_utc_ns, now_s))}</td></tr>"
        )
    rows_html = "".join(body) or '<tr><td colspan="8" class="muted">no tools yet</td></tr>'
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>dpmsfs fleet</title>"
        f"<style>{_STYLE}</style></head><body><h1>dpmsfs fleet</h1>"
        f"<p class='muted'>{len(rows)} tools, "
        f"{html.escape(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now_s)))}</p>"
        "<table><tr><th>tool</th><th>last snapshot</th><th>sync lag</th><th>stored</th>"
        "<th>alerts</th><th>last drill</th><th>stored bytes per day</th><th>last report</th>"
        f"</tr>{rows_html}</table>"
        "<form method='post' action='/fleet/logout'><button>log out</button></form>"
        "</body></html>"
    )


def render_login(message: str = "") -> str:
    note = f"<p class='critical'>{html.escape(message)}</p>" if message else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>dpmsfs fleet: log in</title>"
        f"<style>{_STYLE}</style></head><body><h1>dpmsfs fleet</h1>{note}"
        "<form method='post' action='/fleet/login'>"
        "<label>Admin token <input type='password' name='token' autocomplete='off'></label> "
        "<button type='submit'>log in</button></form></body></html>"
    )
