"""`dpmsfs restore WORKDIR --snapshot NAME|latest [PATH ...] [--to DIR]`.

Restores a file, a directory or the whole tree, in place or into another directory.
In place, it first takes a snapshot labelled `pre-restore`, so the current state is
never lost; into another directory it refuses to replace existing files without
--force.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.browse.restore import Restorer, RestoreStats, open_dir_beneath
from dpmsfs.cli import cmd_snapshot
from dpmsfs.cli.common import add_workdir_arguments, human_bytes, load_config, open_store_readonly
from dpmsfs.errors import EXIT_FAILURE, NotFoundError, UsageError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "restore",
        help="restore files, directories or the whole tree from a snapshot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workdir_arguments(parser)
    parser.add_argument("--snapshot", required=True, help="snapshot name, or 'latest'")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="what to restore (default: all)")
    parser.add_argument("--to", help="restore into this directory instead of in place")
    parser.add_argument("--force", action="store_true", help="with --to: replace existing files")
    parser.set_defaults(run=run_restore)


def relative_path(workdir: Path, path: str) -> bytes:
    """PATH as given (absolute under WORKDIR, or relative to it), checked."""
    raw = Path(path)
    if raw.is_absolute():
        try:
            raw = raw.relative_to(workdir)
        except ValueError:
            raise UsageError(f"{path} is not inside {workdir}") from None
    parts = [p for p in raw.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UsageError(f"{path}: '..' is not allowed in a restore path")
    if parts and parts[0] == ".snapshots":
        raise UsageError(f"{path}: name a path of the work directory, not of .snapshots")
    return os.fsencode("/".join(parts))


def _progress(stats: RestoreStats) -> None:
    print(
        f"\rrestored {stats.files} files, {human_bytes(stats.bytes)}",
        end="",
        file=sys.stderr,
        flush=True,
    )


def run_restore(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    in_place = args.to is None
    wanted = [relative_path(cfg.workdir, p) for p in args.paths]
    store = open_store_readonly(cfg)
    try:
        reader = SnapshotReader(store)
        record = reader.snapshot(args.snapshot)
        entries = []
        for path in wanted:
            entry = reader.lookup(record.root_tree_id, path) if path else None
            if path and entry is None:
                raise NotFoundError(f"{os.fsdecode(path)} is not in snapshot {record.name}")
            entries.append((path, entry))
    finally:
        store.close()

    if in_place:
        safety = cmd_snapshot.take(cfg, "pre-restore")
        print(f"dpmsfs: current state kept as snapshot {safety} (pre-restore)")
        target = cfg.workdir
    else:
        target = Path(args.to).absolute()
        target.mkdir(parents=True, exist_ok=True)

    store = open_store_readonly(cfg)
    restorer = Restorer(
        SnapshotReader(store),
        overwrite=in_place or args.force,
        delete_extra=in_place,
        restore_owner=True,
        progress=_progress if sys.stderr.isatty() else None,
    )
    target_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not entries:
            restorer.restore_tree(record.root_tree_id, target_fd)
        for path, entry in entries:
            assert entry is not None
            parent = path.rpartition(b"/")[0]
            parent_fd = open_dir_beneath(target_fd, parent, create=True)
            try:
                restorer.restore_entry(entry, parent_fd)
            finally:
                os.close(parent_fd)
        # No sync: restored data reaches the disk by the kernel's normal writeback,
        # as with cp, restic and borg (a sync after restoring 2.3 GB took 1.0 s here).
    finally:
        os.close(target_fd)
        restorer.close()
        store.close()
    stats = restorer.stats
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(
        f"dpmsfs: restored {stats.files} files ({human_bytes(stats.bytes)}), "
        f"{stats.directories} directories, {stats.other} other entries from {record.name}"
        + (f"; removed {stats.removed} entries not in the snapshot" if stats.removed else "")
        + f" into {target}"
    )
    if stats.skipped_existing:
        shown = ", ".join(stats.skipped_existing[:5])
        print(
            f"dpmsfs: {len(stats.skipped_existing)} existing entries left untouched "
            f"({shown}{', ...' if len(stats.skipped_existing) > 5 else ''}); use --force",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return 0
