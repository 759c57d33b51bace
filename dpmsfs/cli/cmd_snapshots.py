"""`dpmsfs snapshots WORKDIR`: list the snapshots, oldest first."""

from __future__ import annotations

import argparse
import datetime
import json

from dpmsfs.cli.common import add_workdir_arguments, human_bytes, load_config, open_store_readonly


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("snapshots", help="list snapshots")
    add_workdir_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run_snapshots)


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
