"""`dpmsfs verify [WORKDIR] [--read-data]`: check the store; exit 1 if anything is damaged.

The result is recorded in the store (dpmsfs/report_extras.py) for `dpmsfs status`, the
daemon's alerts and metrics: a damaged store is an alert until a verify passes again.
"""

from __future__ import annotations

import argparse
import time

from dpmsfs import report_extras
from dpmsfs.capture.check import check_capture_state
from dpmsfs.cli.common import add_workdir_arguments, load_config, open_store_readonly
from dpmsfs.cli.progress import PhaseProgress, wanted
from dpmsfs.errors import EXIT_FAILURE
from dpmsfs.store.verify import verify


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check the store's structure (and with --read-data every chunk's hash)",
    )
    add_workdir_arguments(parser, required=False)
    parser.add_argument("--read-data", action="store_true", help="read and hash every object")
    parser.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store_readonly(cfg)
    try:
        with PhaseProgress(wanted()) as bar:
            report = verify(store, read_data=args.read_data, progress=bar.update)
        state_problems = check_capture_state(store)
    finally:
        store.close()
    for damaged in report.damaged.values():
        print(f"damaged object {damaged.object_id.hex()}: {damaged.reason}")
        for snapshot in sorted(damaged.snapshots):
            print(f"  affects snapshot {snapshot}")
        for path in damaged.paths:
            print(f"  affects {path}")
        if damaged.more_paths:
            print(f"  ... and {damaged.more_paths} more paths")
    for problem in report.problems + state_problems:
        print(f"problem: {problem}")
    for garbage in report.garbage:
        print(f"garbage (harmless, left by an interrupted write): {garbage}")
    summary = report.summary() + f"; capture state: {len(state_problems)} problems"
    print(summary)
    ok = report.ok and not state_problems
    report_extras.record_verify(
        cfg.store, ok=ok, read_data=args.read_data, summary=summary,
        damaged=len(report.damaged), problems=len(report.problems) + len(state_problems),
        finished_ns=time.time_ns(),
    )  # fmt: skip
    return 0 if ok else EXIT_FAILURE
