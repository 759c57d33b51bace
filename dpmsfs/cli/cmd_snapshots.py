"""`dpmsfs snapshots WORKDIR`: list the snapshots, oldest first.

`dpmsfs snapshots --server URL[,URL] --tool ID --token-file FILE` lists a tool's
snapshots on the server instead (what `dpmsfs restore --server` can restore).
"""

from __future__ import annotations

import argparse
import datetime
import json

from dpmsfs.cli.cmd_restore import add_server_arguments, open_server_source
from dpmsfs.cli.common import add_workdir_arguments, human_bytes, load_config, open_store_readonly


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("snapshots", help="list snapshots")
    add_workdir_arguments(parser, required=False)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_server_arguments(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    return run_server_snapshots(args) if args.server else run_snapshots(args)


def run_snapshots(args: argparse.Namespace) -> int:
    from dpmsfs.store import gc

    store = open_store_readonly(load_config(args))
    try:
        records = list(store.list_snapshots())
        pins = gc.pins(store)
    finally:
        store.close()
    if args.json:
        print(json.dumps([
            {"name": r.name, "time_utc_ns": r.time_utc_ns, "label": r.label,
             "tool_id": r.tool_id, "files": r.stats.files, "bytes": r.stats.bytes,
             "new_bytes": r.stats.new_bytes, "root_tree_id": r.root_tree_id.hex(),
             "pinned": r.name in pins, "pin_reason": pins.get(r.name, ""),
             "pruned": list(r.pruned)}
            for r in records
        ], indent=2))  # fmt: skip
        return 0
    print(f"{'NAME':<22} {'TIME (UTC)':<20} {'FILES':>9} {'BYTES':>11} {'NEW':>11} PIN LABEL")
    for r in records:
        when = datetime.datetime.fromtimestamp(r.time_utc_ns / 1e9, datetime.UTC)
        pin = "yes" if r.name in pins else ""
        print(
            f"{r.name:<22} {when:%Y-%m-%d %H:%M:%S} {r.stats.files:>9} "
            f"{human_bytes(r.stats.bytes):>11} {human_bytes(r.stats.new_bytes):>11} {pin:<3} "
            f"{r.label}"
        )
    return 0


def run_server_snapshots(args: argparse.Namespace) -> int:
    """The tool's snapshots on the server, oldest first (one ref read per snapshot)."""
    from dpmsfs.errors import NotFoundError, UsageError

    if args.workdir or args.store or args.config:
        raise UsageError("--server lists the server's snapshots: no WORKDIR, --store or --config")
    source = open_server_source(args)
    try:
        records = source.list_snapshots()
    finally:
        source.close()
    if not records and not args.json:
        raise NotFoundError(f"the server holds no snapshots of tool {args.tool} (unknown tool?)")
    if args.json:
        print(json.dumps([
            {"name": r.name, "time_utc_ns": r.time_utc_ns, "label": r.label,
             "tool_id": r.tool_id, "files": r.stats.files, "bytes": r.stats.bytes,
             "root_tree_id": r.root_tree_id.hex()}
            for r in records
        ], indent=2))  # fmt: skip
        return 0
    print(f"{'NAME':<22} {'TIME (UTC)':<20} {'FILES':>9} {'BYTES':>11}  LABEL")
    for r in records:
        when = datetime.datetime.fromtimestamp(r.time_utc_ns / 1e9, datetime.UTC)
        print(
            f"{r.name:<22} {when:%Y-%m-%d %H:%M:%S} {r.stats.files:>9} "
            f"{human_bytes(r.stats.bytes):>11}  {r.label}"
        )
    return 0
