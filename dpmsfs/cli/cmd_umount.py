"""`dpmsfs umount WORKDIR`: unmount cleanly; the daemon then exits by itself."""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from dpmsfs import mountinfo
from dpmsfs.errors import BusyError, DpmsError, UsageError

UNMOUNT_WAIT_SECONDS = 10.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "umount",
        help="unmount a dpmsfs work directory",
        description="Unmount dpmsfs from WORKDIR; the real directory shows again.",
    )
    parser.add_argument("workdir", metavar="WORKDIR")
    parser.add_argument(
        "--lazy",
        action="store_true",
        help="detach now even if files are open (the mount goes when they close)",
    )
    parser.set_defaults(run=run_umount)


def run_umount(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).absolute().resolve()
    if not mountinfo.is_dpmsfs_mount(workdir):
        raise UsageError(f"{workdir}: not a dpmsfs mount")
    # The snapshot view is mounted inside the work directory: it goes first (its
    # process then exits and the daemon does not restart it), or the work directory
    # would be busy.
    view = workdir / ".snapshots"
    if mountinfo.is_dpmsfs_mount(view, mountinfo.VIEW_FSTYPE):
        _fusermount_unmount(view, args.lazy)
    _fusermount_unmount(workdir, args.lazy)
    deadline = time.monotonic() + UNMOUNT_WAIT_SECONDS
    while mountinfo.is_dpmsfs_mount(workdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"dpmsfs: unmounted {workdir}")
    return 0


def _fusermount_unmount(mount_point: Path, lazy: bool) -> None:
    command = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mount_point)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DpmsError("fusermount3 not found (install the fuse3 package)") from None
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        if "busy" in message.lower():
            raise BusyError(f"{mount_point}: busy (files open); close them or use --lazy")
        raise DpmsError(f"{mount_point}: unmount failed: {message or result.returncode}")
