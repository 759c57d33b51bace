"""`dpmsfs sync WORKDIR [--wait] [--timeout S]`: push to the server now.

With `--wait`, return 0 only once the server answering holds every snapshot taken so far
(for "run dpmsfs before and after the build"); exit 4 with one line if it does not within
the timeout (server unreachable, or simply not done yet).
"""

from __future__ import annotations

import argparse
import time

from dpmsfs import control
from dpmsfs.cli.common import add_workdir_arguments, load_config
from dpmsfs.errors import UnavailableError

POLL_SECONDS = 0.5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("sync", help="push snapshots to the server now")
    add_workdir_arguments(parser)
    parser.add_argument(
        "--wait", action="store_true", help="return once the server holds every snapshot"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds --wait waits at most (600)"
    )
    parser.add_argument(
        "--snapshot", action="store_true", help="take a snapshot first (captures pending)"
    )
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="re-check every object on the server (re-uploads copies it found damaged)",
    )
    parser.set_defaults(run=run_sync)


def run_sync(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    sock = cfg.control_socket
    if args.snapshot:
        control.call(sock, {"cmd": "snapshot", "label": "sync"}, timeout=None)
    reply = control.call(sock, {"cmd": "sync", "recheck": args.recheck}, timeout=30)
    names = list(reply["names"])
    if not args.wait:
        print(f"sync started ({len(reply['remaining'])} of {len(names)} snapshots to push)")
        return 0
    deadline = time.monotonic() + args.timeout
    while reply["remaining"]:
        if time.monotonic() >= deadline:
            why = reply.get("last_error") or "still pushing"
            if reply.get("reachable") is False:
                why = f"server unreachable: {why}"
            raise UnavailableError(
                f"{len(reply['remaining'])} snapshots not on the server after "
                f"{args.timeout:g} s ({why})"
            )
        time.sleep(POLL_SECONDS)
        reply = control.call(sock, {"cmd": "sync", "names": names}, timeout=30)
    server = reply.get("server_id", "")
    pruned = len(reply.get("pruned_there") or [])
    if pruned:
        print(f"in sync: the server {server} holds {len(names) - pruned} of {len(names)} "
              f"snapshots; its prune forgot the other {pruned} (kept here)")  # fmt: skip
    else:
        print(f"in sync: the server {server} holds all {len(names)} snapshots")
    return 0
