"""`dpmsfs pin WORKDIR SNAPSHOT [--reason TEXT]`: no retention policy removes it.

(`dpmsfs unpin` is cmd_unpin.py.) Through the daemon when it runs (it holds the store),
else directly on the store.
"""

from __future__ import annotations

import argparse

from dpmsfs import control, mountinfo
from dpmsfs.cli.common import add_workdir_arguments, load_config
from dpmsfs.config import Config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("pin", help="keep a snapshot whatever the retention policy")
    add_workdir_arguments(parser)
    parser.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot name (or 'latest')")
    parser.add_argument("--reason", default="", help="a note kept with the pin")
    parser.set_defaults(run=run_pin)


def run_pin(args: argparse.Namespace) -> int:
    name = set_pin(load_config(args), args.snapshot, True, args.reason)
    print(f"pinned {name}")
    return 0


def set_pin(cfg: Config, snapshot: str, pinned: bool, reason: str = "") -> str:
    """Pin or unpin; returns the snapshot's name. Unpinning a snapshot that is not pinned
    is an error (exit 3): a typo should not look like success."""
    if mountinfo.is_dpmsfs_mount(cfg.workdir):
        request = {"cmd": "pin", "snapshot": snapshot, "pinned": pinned, "reason": reason}
        return str(control.call(cfg.control_socket, request)["snapshot"])
    from dpmsfs.cli.common import open_store_writable
    from dpmsfs.prune import set_pin as set_pin_in_store

    store = open_store_writable(cfg)
    try:
        return set_pin_in_store(store, snapshot, pinned, reason)
    finally:
        store.close()
