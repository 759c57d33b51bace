"""`dpmsfs restore WORKDIR --snapshot NAME|latest [PATH ...] [--to DIR]`.

Restores a file, a directory or the whole tree, in place or into another directory.
In place, it first takes a snapshot labelled `pre-restore`, so the current state is
never lost; into another directory it refuses to replace existing files without
--force. Small selections are restored by the running daemon when the work directory
is mounted (faster: see dpmsfs/browse/restore_job.py), the rest here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpmsfs import control, mountinfo
from dpmsfs.browse.paths import checked_path
from dpmsfs.cli.common import add_workdir_arguments, human_bytes, load_config, open_store_readonly
from dpmsfs.config import Config
from dpmsfs.errors import EXIT_FAILURE, DpmsError, UnavailableError, UsageError

if TYPE_CHECKING:
    from dpmsfs.browse.restore import RestoreStats


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
    return checked_path(os.fsencode(raw))


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
    target = cfg.workdir if in_place else Path(args.to).absolute()
    if not in_place:
        target.mkdir(parents=True, exist_ok=True)
    if wanted and mountinfo.is_dpmsfs_mount(cfg.workdir):
        reply = _ask_daemon(cfg, args, wanted, None if in_place else target)
        if reply is not None:
            if reply["safety"]:
                print(f"dpmsfs: current state kept as snapshot {reply['safety']} (pre-restore)")
            return _report(reply["stats"], reply["snapshot"], reply["target"])
    return _restore_here(cfg, args, wanted, target, in_place)


def _ask_daemon(
    cfg: Config, args: argparse.Namespace, wanted: list[bytes], to: Path | None
) -> dict[str, Any] | None:
    """The daemon's reply if it restored the selection; None if the CLI should."""
    request = {
        "cmd": "restore",
        "snapshot": args.snapshot,
        "paths": [os.fsdecode(p) for p in wanted],
        "to": None if to is None else str(to),
        "force": bool(args.force),
    }
    try:
        reply = control.call(cfg.control_socket, request, timeout=None)
    except UnavailableError:
        return None  # not reachable (or not allowed): restore here
    except DpmsError as exc:
        if str(exc) == "unknown command":
            return None  # a daemon from before this request existed
        raise
    return reply if reply.get("delegated") else None


def _restore_here(
    cfg: Config, args: argparse.Namespace, wanted: list[bytes], target: Path, in_place: bool
) -> int:
    import dataclasses

    from dpmsfs.browse import restore_job  # the store's libraries: only when needed here
    from dpmsfs.browse.reader import SnapshotReader
    from dpmsfs.cli import cmd_snapshot

    store = open_store_readonly(cfg)
    try:
        record, selection = restore_job.select(SnapshotReader(store), args.snapshot, wanted)
    finally:
        store.close()
    if in_place:
        safety = cmd_snapshot.take(cfg, "pre-restore")
        print(f"dpmsfs: current state kept as snapshot {safety} (pre-restore)")

    from dpmsfs.store import gc

    store = open_store_readonly(cfg)
    try:
        with gc.lease(store, record.name):  # a prune meanwhile keeps the snapshot's objects
            stats = restore_job.restore(
                SnapshotReader(store),
                record,
                selection,
                target,
                in_place=in_place,
                force=args.force,
                progress=_progress if sys.stderr.isatty() else None,
            )
    finally:
        store.close()
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return _report(dataclasses.asdict(stats), record.name, str(target))


def _report(stats: dict[str, Any], snapshot: str, target: str) -> int:
    removed = stats["removed"]
    print(
        f"dpmsfs: restored {stats['files']} files ({human_bytes(stats['bytes'])}), "
        f"{stats['directories']} directories, {stats['other']} other entries from {snapshot}"
        + (f"; removed {removed} entries not in the snapshot" if removed else "")
        + f" into {target}"
    )
    skipped: list[str] = stats["skipped_existing"]
    if skipped:
        shown = ", ".join(skipped[:5])
        print(
            f"dpmsfs: {len(skipped)} existing entries left untouched "
            f"({shown}{', ...' if len(skipped) > 5 else ''}); use --force",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return 0
