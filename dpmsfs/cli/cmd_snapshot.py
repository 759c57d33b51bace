"""`dpmsfs snapshot WORKDIR [--label TEXT]`: capture what is pending, then take a snapshot.

Meant for Makefiles: run before and after a build to mark the versions that matter.
"""

from __future__ import annotations

import argparse

from dpmsfs import control
from dpmsfs.cli.common import add_workdir_arguments, load_config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "snapshot", help="take a snapshot now (waits until pending changes are captured)"
    )
    add_workdir_arguments(parser)
    parser.add_argument("--label", default="", help="a note kept with the snapshot")
    parser.set_defaults(run=run_snapshot)


def run_snapshot(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    reply = control.call(cfg.control_socket, {"cmd": "snapshot", "label": args.label}, timeout=None)
    print(reply["snapshot"])
    return 0
