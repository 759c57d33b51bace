"""`dpmsfs diff WORKDIR SNAPSHOT_A SNAPSHOT_B [PATH]`: what was added, removed, changed."""

from __future__ import annotations

import argparse
import os

from dpmsfs.browse.history import CachedReader, diff_trees
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.cli.cmd_restore import relative_path
from dpmsfs.cli.common import add_workdir_arguments, load_config, open_store_readonly
from dpmsfs.errors import NotFoundError
from dpmsfs.store.tree import EntryType


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "diff",
        help="entries added (+), removed (-), changed (M) or with new metadata (m)",
    )
    add_workdir_arguments(parser)
    parser.add_argument("snapshot_a", metavar="SNAPSHOT_A")
    parser.add_argument("snapshot_b", metavar="SNAPSHOT_B", help="a snapshot name or 'latest'")
    parser.add_argument("path", metavar="PATH", nargs="?", default="", help="limit to PATH")
    parser.set_defaults(run=run_diff)


def run_diff(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    rel = relative_path(cfg.workdir, args.path) if args.path else b""
    store = open_store_readonly(cfg)
    try:
        reader = CachedReader(SnapshotReader(store))
        a, b = reader.snapshot(args.snapshot_a), reader.snapshot(args.snapshot_b)
        tree_a, tree_b = a.root_tree_id, b.root_tree_id
        if rel:
            entry_a, entry_b = reader.lookup(tree_a, rel), reader.lookup(tree_b, rel)
            if entry_a is None and entry_b is None:
                raise NotFoundError(f"{os.fsdecode(rel)} is in neither snapshot")
            if not all(e is None or e.type == EntryType.DIR for e in (entry_a, entry_b)):
                same = entry_a == entry_b
                print("" if same else f"M {os.fsdecode(rel)}")
                return 0
            tree_a = entry_a.content[0] if entry_a else b""
            tree_b = entry_b.content[0] if entry_b else b""
        for change in diff_trees(reader, tree_a or None, tree_b or None, rel):
            print(f"{change.kind} {os.fsdecode(change.path)}")
    finally:
        store.close()
    return 0
