"""`dpmsfs status WORKDIR`: is capture running, what is pending, when was the last snapshot."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from dpmsfs import control, mountinfo
from dpmsfs.capture import state
from dpmsfs.cli.common import add_workdir_arguments, human_bytes, load_config, open_store_readonly
from dpmsfs.errors import UnavailableError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("status", help="show the capture state of a work directory")
    add_workdir_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run_status)


def run_status(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    try:
        report = control.call(cfg.control_socket, {"cmd": "status"}, timeout=10)["status"]
        report["daemon"] = "running"
    except UnavailableError as exc:
        report = offline_report(cfg)
        report["daemon"] = f"not running ({exc})"
    report["mounted"] = mountinfo.is_dpmsfs_mount(cfg.workdir)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    return 0 if report["daemon"] == "running" and not report.get("paused_reason") else 1


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
        from dpmsfs.prune import last_result

        last_prune = last_result(store) or {}
    finally:
        store.close()
    return {
        "workdir": str(cfg.workdir),
        "store": str(cfg.store),
        "capture": "stopped",
        "paused_reason": "",
        "pending_files": pending,
        "captured_files": files,
        "captured_bytes": total,
        "last_snapshot": last,
        "store_bytes": stats.stored_bytes,
        "prune": {
            "policy": cfg.retention.describe(),
            "running": False,
            "last_time_ns": last_prune.get("time_ns", 0),
            "last_removed_snapshots": last_prune.get("removed_snapshots", 0),
            "last_reclaimed_bytes": last_prune.get("reclaimed_bytes", 0),
            "last_error": last_prune.get("error", ""),
        },
    }


def _when(ns: int) -> str:
    if not ns:
        return "never"
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(r: dict[str, Any]) -> str:
    lines = [
        f"work directory  {r['workdir']} ({'mounted' if r['mounted'] else 'NOT MOUNTED'})",
        f"daemon          {r['daemon']}",
        "capture         "
        + (f"PAUSED: {r['paused_reason']}" if r.get("paused_reason") else r["capture"]),
        f"store           {r['store']} ({human_bytes(r.get('store_bytes', 0))} stored)",
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
    if r.get("errors"):
        lines.append(f"errors          {r['errors']} (last: {r['last_error']})")
    lines.extend(render_sync(r.get("sync")))
    return "\n".join(lines)


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
    if s.get("last_error"):
        lines.append(f"sync error      {s['last_error']}")
    return lines
