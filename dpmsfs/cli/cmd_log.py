"""`dpmsfs log PATH`: when did this file change? Each version, newest first."""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

from dpmsfs.browse.history import file_history
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.cli.cmd_restore import relative_path
from dpmsfs.cli.common import human_bytes, load_config, open_store_readonly
from dpmsfs.config import known_workdirs
from dpmsfs.errors import NotFoundError, UsageError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("log", help="the version history of one file")
    parser.add_argument("path", metavar="PATH", help="a file in a work directory (may be deleted)")
    parser.add_argument("--workdir", help="the work directory (default: found from PATH)")
    parser.add_argument("--store", help="the store (default: from the configuration)")
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.set_defaults(run=run_log)


def find_workdir(path: Path) -> Path:
    for workdir in sorted(known_workdirs(), key=lambda p: len(str(p)), reverse=True):
        if path == workdir or workdir in path.parents:
            return workdir
    raise UsageError(f"{path} is not in a work directory dpmsfs knows; use --workdir")


def run_log(args: argparse.Namespace) -> int:
    path = Path(os.path.abspath(args.path))
    workdir = Path(args.workdir).absolute().resolve() if args.workdir else find_workdir(path)
    args.workdir = str(workdir)
    cfg = load_config(args)
    rel = relative_path(workdir, str(path) if path.is_absolute() else args.path)
    store = open_store_readonly(cfg)
    try:
        versions = file_history(SnapshotReader(store), rel)
    finally:
        store.close()
    if not versions:
        raise NotFoundError(f"{os.fsdecode(rel)} is in no snapshot")
    print(f"{'CAPTURED (UTC)':<20} {'MODIFIED (UTC)':<20} {'SIZE':>10}  ID            SNAPSHOTS")
    for version in versions:
        first = version.snapshots[-1]
        taken = datetime.datetime.fromtimestamp(first.time_utc_ns / 1e9, datetime.UTC)
        modified = datetime.datetime.fromtimestamp(version.entry.mtime_ns / 1e9, datetime.UTC)
        names = [s.name + (f" ({s.label})" if s.label else "") for s in version.snapshots]
        shown = ", ".join(names[:3]) + (f" +{len(names) - 3} more" if len(names) > 3 else "")
        print(
            f"{taken:%Y-%m-%d %H:%M:%S} {modified:%Y-%m-%d %H:%M:%S} "
            f"{human_bytes(version.entry.size):>10}  {version.content_id}  {shown}"
        )
    return 0
