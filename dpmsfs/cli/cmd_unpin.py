"""`dpmsfs unpin WORKDIR SNAPSHOT`: the retention policy applies to it again."""

from __future__ import annotations

import argparse

from dpmsfs.cli.cmd_pin import set_pin
from dpmsfs.cli.common import add_workdir_arguments, load_config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("unpin", help="let the retention policy apply to a snapshot")
    add_workdir_arguments(parser)
    parser.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot name (or 'latest')")
    parser.set_defaults(run=run_unpin)


def run_unpin(args: argparse.Namespace) -> int:
    print(f"unpinned {set_pin(load_config(args), args.snapshot, False)}")
    return 0
