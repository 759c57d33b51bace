"""`dpmsfs mount WORKDIR`: put the work directory behind dpmsfs, at the same path."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from dpmsfs import config, control, daemon, mountinfo
from dpmsfs.errors import DpmsError, UnavailableError
from dpmsfs.fs.mount import check_fuse_available, check_workdir

log = logging.getLogger(__name__)

MOUNT_WAIT_SECONDS = 30.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "mount",
        help="mount dpmsfs over a work directory",
        description="Mount dpmsfs over WORKDIR itself: programs keep using the same path.",
    )
    parser.add_argument("workdir", metavar="WORKDIR", help="the work directory to protect")
    parser.add_argument(
        "--foreground",
        action="store_true",
        help="stay in the foreground (for systemd); default: detach once mounted",
    )
    parser.add_argument(
        "--log-file",
        help="where a detached daemon logs (default: /var/log/dpmsfs/<workdir>.log)",
    )
    parser.add_argument(
        "--store",
        help="where versions are kept (default: config, then /var/lib/dpmsfs/stores/<workdir>)",
    )
    parser.add_argument("--config", help="configuration file (default: /etc/dpmsfs/<workdir>.toml)")
    parser.add_argument("--tool-id", help="this tool's name in snapshots (default: host name)")
    parser.add_argument(
        "--server",
        metavar="URL[,URL...]",
        help="sync every snapshot to dpmsfs-server at these URLs (the HA pair, in order)",
    )
    parser.add_argument("--token-file", help="this tool's server token (one line)")
    parser.add_argument(
        "--fd-budget",
        type=int,
        default=None,
        help="directory descriptors kept open at most (default: 4096)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics there (default: metrics_listen of the config; off)",
    )
    parser.add_argument(
        "--no-capture",
        action="store_true",
        help="passthrough only, no versioning (for measuring the mount alone)",
    )
    parser.set_defaults(run=run_mount)


def default_log_file(workdir: Path) -> Path:
    name = str(workdir).strip("/").replace("/", "-") or "root"
    return Path("/var/log/dpmsfs") / f"{name}.log"


def run_mount(args: argparse.Namespace) -> int:
    workdir = check_workdir(args.workdir)
    check_fuse_available()
    cfg = config.load(
        workdir,
        Path(args.config) if args.config else None,
        store=args.store,
        tool_id=args.tool_id,
        fd_budget=args.fd_budget,
        metrics_listen=args.metrics,
        server=config.server_urls(args.server) if args.server else None,
        token_file=Path(args.token_file).absolute() if args.token_file else None,
    )
    if cfg.server:
        from dpmsfs.sync.connect import read_token

        read_token(cfg)  # a missing or unreadable token fails here, in the foreground
    if args.foreground:
        daemon.run(cfg, capture=not args.no_capture)
        return 0
    return _spawn_daemon(args, cfg)


def _spawn_daemon(args: argparse.Namespace, cfg: config.Config) -> int:
    """Start the foreground daemon detached and wait until the mount is up."""
    workdir = cfg.workdir
    log_file = Path(args.log_file) if args.log_file else default_log_file(workdir)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "dpmsfs.cli.main",
        "--log-level",
        args.log_level if args.log_level != "WARNING" else "INFO",
        "mount",
        "--foreground",
        "--fd-budget",
        str(cfg.fd_budget),
        "--store",
        str(cfg.store),
        "--tool-id",
        cfg.tool_id,
        *(["--config", args.config] if args.config else []),
        *(["--metrics", args.metrics] if args.metrics else []),
        *(["--server", ",".join(cfg.server)] if args.server else []),
        *(["--token-file", str(cfg.token_file)] if args.token_file else []),
        *(["--no-capture"] if args.no_capture else []),
        str(workdir),
    ]
    with open(log_file, "ab") as log_stream:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=log_stream,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + MOUNT_WAIT_SECONDS
    while time.monotonic() < deadline:
        if mountinfo.is_dpmsfs_mount(workdir) and (args.no_capture or _answers(cfg)):
            # Ready only once the daemon answers too: a `dpmsfs snapshot` right after
            # `dpmsfs mount` must not find "daemon not running".
            print(f"dpmsfs: mounted {workdir} (pid {child.pid}, log {log_file})")
            return 0
        if child.poll() is not None:
            raise UnavailableError(f"{workdir}: daemon exited: {_last_line(log_file)}")
        time.sleep(0.05)
    child.terminate()
    raise UnavailableError(
        f"{workdir}: not mounted after {MOUNT_WAIT_SECONDS:.0f} s (see {log_file})"
    )


def _answers(cfg: config.Config) -> bool:
    try:
        control.call(cfg.control_socket, {"cmd": "ping"}, timeout=2)
    except DpmsError as exc:
        return "unknown command" in str(exc)  # an old daemon without ping: it answered
    return True


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"
