"""`dpmsfs restore WORKDIR --snapshot NAME|latest [PATH ...] [--to DIR]`.

Restores a file, a directory or the whole tree, in place or into another directory.
In place, it first takes a snapshot labelled `pre-restore`, so the current state is
never lost; into another directory it refuses to replace existing files without
--force. Small selections are restored by the running daemon when the work directory
is mounted (faster: see dpmsfs/browse/restore_job.py), the rest here.

From the server, onto an empty disk (no store, no configuration needed):

    dpmsfs restore --server URL[,URL] --tool ID --token-file FILE --snapshot NAME|latest
                   --to TARGET [PATH ...]

resumes where it stopped when run again after an interruption.
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
    from dpmsfs.browse.source import RemoteSource
    from dpmsfs.store.snapshots import SnapshotRecord


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "restore",
        help="restore files, directories or the whole tree from a snapshot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_workdir_arguments(parser, required=False)
    parser.add_argument("--snapshot", required=True, help="snapshot name, or 'latest'")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="what to restore (default: all)")
    parser.add_argument("--to", help="restore into this directory instead of in place")
    parser.add_argument("--force", action="store_true", help="with --to: replace existing files")
    add_server_arguments(parser)
    parser.add_argument("--json", action="store_true", help="with --server: report as JSON")
    parser.set_defaults(run=run_restore)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("from the server (no WORKDIR, no local store)")
    group.add_argument("--server", help="server URL(s), comma-separated (the HA pair)")
    group.add_argument("--tool", help="the tool whose snapshots to read (its namespace)")
    group.add_argument("--token-file", help="file holding the tool's token")
    group.add_argument("--tls-ca", help="CA bundle of the server's certificate")
    group.add_argument(
        "--retry-seconds",
        type=float,
        default=30.0,
        help="how long to keep retrying servers that do not answer (default 30)",
    )


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
    if args.server:
        return _restore_from_server(args)
    if args.tool or args.token_file or args.tls_ca or args.json:
        raise UsageError("--tool, --token-file, --tls-ca and --json go with --server")
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
    from dpmsfs.browse.source import LocalThenRemote, StoreSource
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
    remote = _configured_server(cfg)
    if remote is None and _server_only(store, record.name):
        store.close()
        raise UnavailableError(
            f"snapshot {record.name} is server-only (its data left the local store under "
            "the local budget) and no server is configured: set server and token_file, "
            "or restore with --from-server"
        )
    source = StoreSource(store) if remote is None else LocalThenRemote(StoreSource(store), remote)
    try:
        with gc.lease(store, record.name):  # a prune meanwhile keeps the snapshot's objects
            stats = restore_job.restore(
                SnapshotReader(source),
                record,
                selection,
                target,
                in_place=in_place,
                force=args.force,
                progress=_progress if sys.stderr.isatty() else None,
            )
    finally:
        store.close()
        if remote is not None:
            remote.close()
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return _report(dataclasses.asdict(stats), record.name, str(target))


def _server_only(store: Any, name: str) -> bool:
    from dpmsfs.store import evicted

    return evicted.is_evicted(store, name)


def _configured_server(cfg: Config) -> RemoteSource | None:
    """The server of the mount's configuration, for chunks the local store lacks or holds
    damaged (then a local restore still completes); None without one."""
    if not cfg.server or cfg.token_file is None:
        return None
    from dpmsfs.browse.source import open_server

    return open_server(cfg.server, cfg.tool_id, cfg.token_file, cfg.tls_ca)


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


def open_server_source(args: argparse.Namespace) -> RemoteSource:
    """The tool's namespace on the server, from --server/--tool/--token-file/--tls-ca."""
    import logging

    from dpmsfs.browse.source import open_server

    if getattr(args, "log_level", "WARNING") == "WARNING":
        # its "giving up" warning says what our one-line error says again
        logging.getLogger("remote.retry").setLevel(logging.ERROR)
    urls = [u.strip() for u in args.server.split(",") if u.strip()]
    if not urls:
        raise UsageError("--server needs at least one URL")
    if not args.tool or not args.token_file:
        raise UsageError("--server needs --tool and --token-file")
    return open_server(
        urls,
        args.tool,
        Path(args.token_file),
        Path(args.tls_ca) if args.tls_ca else None,
        deadline=max(args.retry_seconds, 0.0),
    )


def _restore_from_server(args: argparse.Namespace) -> int:
    """`restore --server ... --to TARGET [PATH ...]`: no WORKDIR, so a first PATH was
    parsed as one."""
    import dataclasses
    import json
    import time

    from dpmsfs.browse.server_restore import restore_from_server

    if args.to is None:
        raise UsageError("--server needs --to TARGET (there is no work directory here)")
    if args.store or args.config:
        raise UsageError("--server restores without a store or configuration")
    paths = ([args.workdir] if args.workdir else []) + list(args.paths)
    wanted = [checked_path(os.fsencode(p.lstrip("/") or ".")) for p in paths]
    target = Path(args.to).absolute()
    interactive = sys.stderr.isatty() and not args.json
    started = time.monotonic()
    total = 0

    def announce(record: SnapshotRecord, resumed: bool) -> None:
        nonlocal total
        total = record.stats.bytes if not wanted else 0
        if not args.json:
            how = "resuming the restore of" if resumed else "restoring"
            print(f"dpmsfs: {how} {record.name} of {args.tool} into {target}", file=sys.stderr)

    def progress(stats: RestoreStats) -> None:
        rate = stats.bytes / max(time.monotonic() - started, 1e-3)
        of = f" of {human_bytes(total)}" if total else ""
        print(
            f"\rrestored {stats.files} files, {human_bytes(stats.bytes)}{of} "
            f"({human_bytes(int(rate))}/s, {stats.kept} already there)   ",
            end="",
            file=sys.stderr,
            flush=True,
        )

    source = open_server_source(args)
    try:
        result = restore_from_server(
            source,
            args.tool,
            args.snapshot,
            wanted,
            target,
            force=args.force,
            progress=progress if interactive else None,
            announce=announce,
        )
    finally:
        source.close()
        if interactive:
            print(file=sys.stderr)
    if args.json:
        doc = {
            "snapshot": result.record.name,
            "tool": args.tool,
            "target": str(target),
            "resumed": result.resumed,
            "fetched_objects": result.fetched_objects,
            "fetched_bytes": result.fetched_bytes,
            "seconds": round(result.seconds, 3),
            **dataclasses.asdict(result.stats),
        }
        print(json.dumps(doc, sort_keys=True))
        return EXIT_FAILURE if result.stats.skipped_existing else 0
    if result.stats.kept:
        print(f"dpmsfs: {result.stats.kept} files were already restored (kept, not fetched)")
    return _report(dataclasses.asdict(result.stats), result.record.name, str(target))
