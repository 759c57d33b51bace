"""`dpmsfs snapshot WORKDIR [--label TEXT]`: capture what is pending, then take a snapshot.

Meant for Makefiles: run before and after a build to mark the versions that matter.
"""

from __future__ import annotations

import argparse
from typing import Any

from dpmsfs import control, mountinfo
from dpmsfs.cli.common import add_workdir_arguments, load_config
from dpmsfs.config import Config


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "snapshot", help="take a snapshot now (waits until pending changes are captured)"
    )
    add_workdir_arguments(parser)
    parser.add_argument("--label", default="", help="a note kept with the snapshot")
    parser.set_defaults(run=run_snapshot)


def run_snapshot(args: argparse.Namespace) -> int:
    print(take(load_config(args), args.label))
    return 0


def take(cfg: Config, label: str) -> str:
    """Through the daemon if it runs, else directly on the unmounted work directory."""
    if mountinfo.is_dpmsfs_mount(cfg.workdir):
        reply = control.call(cfg.control_socket, {"cmd": "snapshot", "label": label}, timeout=None)
        return str(reply["snapshot"])
    from dpmsfs import daemon  # pyfuse3 and trio: only for the offline path
    from dpmsfs.cli.progress import PhaseProgress, wanted

    with PhaseProgress(wanted(), unit="B", unit_scale=True) as bar:

        def show(engine: Any) -> None:
            """The scan's bytes seen, then the capture of what differs (a first import)."""
            scan = engine.scan_progress
            if scan.running:
                bar.update("scanning", scan.bytes_seen)
                bar.set_postfix(f"{scan.entries} entries, {scan.differences} to capture")
            else:
                bar.update("capturing", engine.status.captured_bytes)
                bar.set_postfix(f"{engine.status.captured_files} of {scan.differences} files")

        return daemon.snapshot_offline(cfg, label, progress=show if bar.enabled else None)
