"""`dpmsfs status [WORKDIR] [--all] [--json]`: one screen per work directory, and an exit
code monitoring can act on (0 healthy, 1 warning, 2 critical).

The report comes from the daemon's control socket; when the daemon is down, from the
store read-only (the offline report), so status works exactly when it matters most.
Health is judged here, by the same pure function the daemon's alert service uses
(dpmsfs/health.py), on the report as it is now.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any

from dpmsfs import config, control, health, mountinfo, report_extras
from dpmsfs.capture import state
from dpmsfs.cli.common import add_workdir_arguments, human_bytes, load_config, open_store_readonly
from dpmsfs.errors import DpmsError, UnavailableError, UsageError

EXIT_CODES_HELP = """\
EXIT STATUS (for monitoring: Nagios/Icinga plugin convention)
  0  healthy: no alert
  1  warning: at least one warning alert, no critical one
  2  critical: at least one critical alert (daemon down, not mounted, capture paused,
     store disk below 10 % free, verify found damage, sync far behind, ...)
  With --all: the worst level of all work directories.
  Other codes as for every dpmsfs command (3 no such work directory or store, 4
  unavailable), for a single WORKDIR only.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show the state and health of a work directory",
        description="Capture, sync, store space, ratios, last verify and alerts.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workdir_arguments(parser, required=False)
    parser.add_argument("--all", action="store_true",
                        help="every work directory mounted on this host before")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    if args.all:
        if args.workdir or args.store:
            raise UsageError("--all takes no WORKDIR or --store")
        return _run_all(args)
    report = collect(load_config(args))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    return int(report["health"]["level"])


def _run_all(args: argparse.Namespace) -> int:
    reports = []
    for workdir in config.known_workdirs():
        try:
            reports.append(collect(config.load(workdir)))
        except DpmsError as exc:  # one broken work directory must not hide the others
            reports.append(unreadable_report(workdir, str(exc)))
    worst = max((int(r["health"]["level"]) for r in reports), default=health.HEALTHY)
    if args.json:
        print(json.dumps({"level": worst, "workdirs": reports}, indent=2, sort_keys=True))
    elif not reports:
        print("no work directory has been mounted on this host")
    else:
        print("\n\n".join(render(r) for r in reports))
    return worst


def collect(cfg: config.Config, now_ns: int | None = None) -> dict[str, Any]:
    """The report of one work directory with its health, daemon up or down."""
    try:
        report = control.call(cfg.control_socket, {"cmd": "status"}, timeout=10)["status"]
        report["daemon"] = "running"
    except UnavailableError as exc:
        report = offline_report(cfg)
        report["daemon"] = f"not running ({exc})"
    if cfg.workdir != Path("/nonexistent"):  # --store only: no work directory to check
        report["mounted"] = mountinfo.is_dpmsfs_mount(cfg.workdir)
    if "store_total_bytes" not in report or "last_verify" not in report:
        report_extras.add_extras(report, cfg.store)
    report.update(report_extras.ratios(report))
    if "drill" not in report:
        from dpmsfs.browse.drill import last_result

        report["drill"] = last_result(cfg.store)
    result = health.evaluate(report, cfg.alerts, now_ns or time.time_ns())
    report["health"] = _with_daemon_since(result, report).to_dict()
    return report


def _with_daemon_since(result: health.Health, report: dict[str, Any]) -> health.Health:
    """Take `since` from the daemon's alert service for alerts it already tracks."""
    section = report.get("alerts")
    tracked = section.get("active", []) if isinstance(section, dict) else []
    since = {a.get("name"): a.get("since", 0) for a in tracked if isinstance(a, dict)}
    alerts = tuple(
        health.Alert(a.name, a.severity, a.message, a.since or int(since.get(a.name) or 0))
        for a in result.alerts
    )
    return health.Health(result.level, alerts)


def unreadable_report(workdir: Path, error: str) -> dict[str, Any]:
    alert = health.Alert("status_unavailable", "critical", error)
    return {"workdir": str(workdir), "error": error,
            "health": health.Health(health.CRITICAL, (alert,)).to_dict()}  # fmt: skip


def offline_report(cfg: Any) -> dict[str, Any]:
    store = open_store_readonly(cfg)
    try:
        store.db.declare(*state.ALL_TABLES)
        with store.db.read() as txn:
            pending = state.pending_count(txn) if txn.get is not None else 0
            files, total = state.totals(txn)
        last = ""
        for record in store.list_snapshots():
            last = record.name
        stats = store.stats()
        from dpmsfs import budget
        from dpmsfs.prune import last_result

        last_prune = last_result(store) or {}
        local_budget = budget.status(store, cfg.local_budget)
        local_budget["last_evicted_snapshots"] = last_prune.get("evicted_snapshots", 0)
        local_budget["blocked"] = last_prune.get("budget_blocked", "")
        local_budget["last_reason"] = last_prune.get("budget_reason", "")
    finally:
        store.close()
    report = {
        "workdir": str(cfg.workdir),
        "store": str(cfg.store),
        "capture": "stopped",
        "paused_reason": "",
        "pending_files": pending,
        "captured_files": files,
        "captured_bytes": total,
        "last_snapshot": last,
        "store_objects": stats.objects,
        "store_bytes": stats.stored_bytes,
        "prune": {
            "local_budget": local_budget,
            "policy": cfg.retention.describe(),
            "running": False,
            "last_time_ns": last_prune.get("time_ns", 0),
            "last_removed_snapshots": last_prune.get("removed_snapshots", 0),
            "last_reclaimed_bytes": last_prune.get("reclaimed_bytes", 0),
            "last_error": last_prune.get("error", ""),
        },
        "store_raw_bytes": stats.raw_bytes,
    }
    return report_extras.add_extras(report, cfg.store)


def _when(ns: int) -> str:
    if not ns:
        return "never"
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ratio(value: Any) -> str:
    return f"{value:.2f}x" if isinstance(value, int | float) else "-"


# Keys `render` shows in its own lines; every other key is shown generically.
_KNOWN = {
    "drill",
    "workdir", "mounted", "daemon", "capture", "paused_reason", "store", "store_bytes",
    "store_raw_bytes", "store_objects", "store_free_bytes", "store_total_bytes",
    "captured_files", "captured_bytes", "pending_files", "pending_bytes", "last_snapshot",
    "last_captured_path", "last_captured_ns", "import", "snapshot_view", "errors",
    "last_error", "last_verify", "health", "alerts", "compression_ratio", "dedup_ratio",
    "overall_ratio", "tool_id", "unstable_retries", "captured_growing", "error", "counters",
    "last_snapshot_ns", "alert_delivery", "metrics",
}  # fmt: skip


def render(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"work directory  {r['workdir']}\nstatus          UNAVAILABLE: {r['error']}"
    mounted = ""
    if "mounted" in r:
        mounted = "mounted" if r["mounted"] else "NOT MOUNTED"
    lines = [
        f"work directory  {r['workdir']}" + (f" ({mounted})" if mounted else ""),
        f"daemon          {r['daemon']}",
        "capture         "
        + (f"PAUSED: {r['paused_reason']}" if r.get("paused_reason") else r["capture"]),
    ]
    lines.append(_store_line(r))
    lines.append(
        f"ratios          dedup {_ratio(r.get('dedup_ratio'))}, compression "
        f"{_ratio(r.get('compression_ratio'))}, overall {_ratio(r.get('overall_ratio'))}"
    )
    lines += [
        f"captured        {r['captured_files']} files, {human_bytes(r['captured_bytes'])}",
        f"pending         {r['pending_files']} files"
        + (f", {human_bytes(r['pending_bytes'])}" if "pending_bytes" in r else ""),
        f"last snapshot   {r['last_snapshot'] or 'none'}",
    ]
    if r.get("last_captured_path"):
        lines.append(f"last captured   {r['last_captured_path']} at {_when(r['last_captured_ns'])}")
    scan = r.get("import")
    if scan and (scan["running"] or scan["entries"]):
        word = "running" if scan["running"] else "done"
        lines.append(
            f"import scan     {word}: {scan['directories']} directories, {scan['entries']} "
            f"entries ({human_bytes(scan['bytes_seen'])}), {scan['differences']} to capture"
        )
    if r.get("snapshot_view"):
        lines.append(f"snapshot view   {r['snapshot_view']}")
    prune = r.get("prune")
    if prune:
        line = "running" if prune["running"] else f"last {_when(prune['last_time_ns'])}"
        if prune["last_time_ns"]:
            line += (f": {prune['last_removed_snapshots']} snapshots removed, "
                     f"{human_bytes(prune['last_reclaimed_bytes'])} reclaimed")  # fmt: skip
        if prune["last_error"]:
            line += f"; FAILED: {prune['last_error']}"
        lines.append(f"prune           {line} (policy: {prune['policy']})")
        lb = prune.get("local_budget")
        if lb and "used_bytes" in lb:
            cap = human_bytes(lb["cap_bytes"]) if lb["cap_bytes"] is not None else "no cap"
            text = (f"{human_bytes(lb['used_bytes'])} used of {cap} ({lb['budget']}), "
                    f"{lb['server_only_snapshots']} server-only snapshots")  # fmt: skip
            if lb.get("over"):
                text += f"; OVER: {lb['over']}"
            if lb.get("blocked"):
                text += f"; cannot evict: {lb['blocked']}"
            lines.append(f"local budget    {text}")
    if r.get("fuse"):
        lines.append(f"fuse            {_fuse_line(r['fuse'])}")
    if r.get("errors"):
        lines.append(f"errors          {r['errors']} (last: {r['last_error']})")
    verify = r.get("last_verify")
    if isinstance(verify, dict):
        lines.append(f"last verify     {_when(int(verify.get('finished_ns', 0)))}: "
                     f"{verify.get('summary', '')}")  # fmt: skip
    else:
        lines.append("last verify     never")
    lines += _delivery_lines(r)
    lines.append(_drill_line(r.get("drill")))
    for key in sorted(set(r) - _KNOWN):
        lines += _generic(key, r[key])
    lines.extend(render_sync(r.get("sync")))
    lines += _alert_lines(r.get("health", {}))
    return "\n".join(lines)


def _drill_line(drill: Any) -> str:
    if not isinstance(drill, dict):
        return "drill           never"
    verdict = "passed" if drill.get("ok") else "FAILED"
    line = (f"drill           {_when(int(drill.get('time_utc_ns', 0)))}: {verdict}, "
            f"{drill.get('files', 0)} files of {drill.get('snapshot') or '-'} in "
            f"{float(drill.get('seconds', 0)):.1f} s (first file "
            f"{float(drill.get('first_file_seconds', 0)):.2f} s)")  # fmt: skip
    return line + (f"; {drill['message']}" if drill.get("message") else "")


def _store_line(r: dict[str, Any]) -> str:
    text = f"store           {r['store']} ({human_bytes(r.get('store_bytes', 0))} stored"
    free, total = r.get("store_free_bytes"), r.get("store_total_bytes")
    if isinstance(free, int) and isinstance(total, int) and total > 0:
        text += f", disk {human_bytes(free)} free of {human_bytes(total)}"
        text += f" ({100 * free / total:.0f} %)"
    return text + ")"


def _delivery_lines(r: dict[str, Any]) -> list[str]:
    lines = []
    metrics = r.get("metrics")
    if isinstance(metrics, dict):
        text = metrics.get("error") or f"http://{metrics.get('listen')}/metrics"
        lines.append(f"metrics         {text}")
    delivery = r.get("alert_delivery")
    if isinstance(delivery, dict) and delivery.get("configured"):
        text = f"{delivery.get('delivered', 0)} delivered, {delivery.get('errors', 0)} errors"
        if delivery.get("failing"):
            text += f", FAILING ({delivery.get('queued', 0)} queued): {delivery.get('last_error')}"
        lines.append(f"alert hooks     {text}")
    return lines


def _generic(key: str, value: Any) -> list[str]:
    """A section another part of dpmsfs added (sync, fuse, prune...): key: value lines."""
    if isinstance(value, dict):
        lines = [f"{key}:"]
        for sub in sorted(value):
            lines.append(f"  {sub}: {_scalar(value[sub])}")
        return lines
    return [f"{key + ' ':<16}{_scalar(value)}"]


def _scalar(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _alert_lines(result: dict[str, Any]) -> list[str]:
    alerts = result.get("alerts", [])
    if not alerts:
        return ["health          healthy"]
    lines = [f"health          {str(result.get('state', '')).upper()}"]
    for alert in alerts:
        since = f" (since {_when(alert['since'])})" if alert.get("since") else ""
        lines.append(f"  {alert['severity'].upper():<9}{alert['name']}: {alert['message']}{since}")
    return lines


def _fuse_line(fuse: dict[str, Any]) -> str:
    """The live mount's FUSE layer and what INIT negotiated with the kernel."""
    parts = [f"layer {fuse.get('layer', '?')}"]
    if fuse.get("protocol"):
        parts.append(f"protocol {fuse['protocol']}")
    parts.append(f"passthrough {'on' if fuse.get('passthrough') else 'off'}")
    parts.append(f"killpriv_v2 {'on' if fuse.get('killpriv_v2') else 'off'}")
    if fuse.get("transport"):
        parts.append(f"transport {fuse['transport']}")
    return ", ".join(parts)


def render_sync(s: dict[str, Any] | None) -> list[str]:
    """The `sync` section (present when the daemon runs)."""
    if not s:
        return []
    if not s.get("enabled"):
        return ["sync            off (no server configured)"]
    reach = {True: "reachable", False: "UNREACHABLE", None: "not contacted yet"}[s["reachable"]]
    q = s["queue"]
    lines = [
        f"sync            server {reach}: {s['server_url'] or '-'} (id {s['server_id'] or '-'})",
        f"last sync       {_when(s['last_success_ns'])}, lag {s['lag_seconds']:.0f} s",
        f"sync queue      {q['snapshots']} snapshots, {q['objects']} objects, "
        f"{human_bytes(q['bytes'])}" + (f" (oldest {q['oldest']})" if q["oldest"] else ""),
    ]
    if s.get("pruned_on_server"):
        lines.append(f"pruned there    {s['pruned_on_server']} local snapshots the server's "
                     "prune forgot (kept here, not sent again)")  # fmt: skip
    if s.get("last_error"):
        lines.append(f"sync error      {s['last_error']}")
    return lines
