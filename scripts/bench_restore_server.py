#!/usr/bin/env python3
"""Restore-from-the-server benchmark (issue 10): a full `dpmsfs restore --server` of an
mkdataset tree from a dpmsfs-server on loopback, next to `restic restore` from `rclone
serve restic` on loopback, in the same run (goal: >= 150 MB/s and faster than restic).

Steps: make the dataset (kept in BASE/data between runs), mount dpmsfs over it and take a
snapshot, put the snapshot on a fresh server (objects, then the snapshot ref, as the
daemon's sync does), back the dataset up with restic through rclone; then rounds of full
restores into an empty directory from a cold page cache, dpmsfs then restic. The speed of
this disk drifts within minutes, so the ratio is the median of the per-round ratios.

Needs root and /dev/fuse; installs restic and rclone with apt-get if missing
(--no-peers skips them).

Example (the figures in docs/benchmarks.md):
    .venv/bin/python scripts/bench_restore_server.py --base /tmp/bench10 --size-mb 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_restore import (  # noqa: E402
    MKDATASET,
    Dpmsfs,
    dir_bytes,
    drop_caches,
    log,
    run,
    timed,
)

TOOL = "bench-tool"
TOKEN = "bench-restore-server-token-0123456789"
RESTIC_PASSWORD = "bench-restore-server"


def ensure_peers() -> None:
    missing = [tool for tool in ("restic", "rclone") if shutil.which(tool) is None]
    if missing:
        log(f"installing {' '.join(missing)} with apt-get")
        run(["apt-get", "install", "-y", *missing], stdout=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    tokens = base / "tokens.json"
    tokens.write_text(json.dumps({"tokens": {TOKEN: {"role": "tool", "namespaces": [TOOL]}}}))
    ready = base / "server.ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "remote.server_main", "--data", str(base / "server"),
         "--listen", "127.0.0.1:0", "--tokens", str(tokens), "--ready-file", str(ready)],
        cwd=REPO, stdout=open(base / "server.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"dpmsfs-server did not start, see {base / 'server.log'}")
        time.sleep(0.05)
    return proc, str(json.loads(ready.read_text())["url"])


def publish(store_dir: Path, url: str, name: str) -> None:
    """The snapshot onto the server, as the daemon's sync would put it there."""
    from dpmsfs.store.store import Store
    from remote.http_backend import HttpBackend
    from tests.browse.upload import upload_snapshot

    store = Store.open(str(store_dir), readonly=True)
    backend = HttpBackend([url], TOOL, TOKEN)
    try:
        upload_snapshot(store, backend, name, batch=256)
    finally:
        backend.close()
        store.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, default=Path("/tmp/bench-restore-server"),
                        help="scratch directory (the dataset is kept in BASE/data)")  # fmt: skip
    parser.add_argument("--size-mb", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="skip restic over rclone")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        parser.error("needs root and /dev/fuse")
    peers = not args.no_peers
    if peers:
        ensure_peers()

    base: Path = args.base
    data = base / "data"
    if not (data / ".mkdataset.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        log(f"creating a {args.size_mb} MB dataset in {data}")
        run([sys.executable, str(MKDATASET), "init", str(data), "--size-mb", str(args.size_mb),
             "--seed", str(args.seed), "--tool", "1"], stdout=subprocess.DEVNULL)  # fmt: skip
    for leftover in ("store", "server", "rclone-repo", "out"):
        shutil.rmtree(base / leftover, ignore_errors=True)
    tree_bytes = dir_bytes(data)
    token_file = base / "tool.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)

    log("dpmsfs: snapshot of the dataset, onto a fresh loopback server")
    mount = Dpmsfs(data, base / "store", base / "mount.log")
    try:
        name = mount.snapshot("bench")
    finally:
        mount.stop()
    server, url = start_server(base)
    rclone: subprocess.Popen[bytes] | None = None
    try:
        publish(base / "store", url, name)
        env = dict(os.environ, RESTIC_PASSWORD=RESTIC_PASSWORD)
        repo = ""
        if peers:
            log("restic: backup of the dataset through rclone serve restic")
            port = free_port()
            rclone = subprocess.Popen(
                ["rclone", "serve", "restic", "--addr", f"127.0.0.1:{port}",
                 str(base / "rclone-repo")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            repo = f"rest:http://127.0.0.1:{port}/"
            time.sleep(1.0)
            run(["restic", "-r", repo, "init", "-q"], env=env)
            run(["restic", "-r", repo, "backup", "-q", str(data)], env=env)

        out = base / "out"

        def ours() -> None:
            shutil.rmtree(out, ignore_errors=True)
            drop_caches()
            seconds = timed(lambda: run(
                [sys.executable, "-m", "dpmsfs.cli.main", "restore", "--server", url, "--tool",
                 TOOL, "--token-file", str(token_file), "--snapshot", "latest", "--to", str(out)],
                cwd=REPO, stdout=subprocess.DEVNULL))  # fmt: skip
            times["dpmsfs"].append(seconds)

        def theirs() -> None:
            shutil.rmtree(out, ignore_errors=True)
            drop_caches()
            seconds = timed(lambda: run(
                ["restic", "-r", repo, "restore", "-q", "latest", "--target", str(out)],
                env=env))  # fmt: skip
            times["restic"].append(seconds)

        times: dict[str, list[float]] = {"dpmsfs": [], "restic": []}
        for round_no in range(args.rounds):
            log(f"round {round_no + 1} of {args.rounds}")
            ours()
            if peers:
                theirs()
        shutil.rmtree(out, ignore_errors=True)
    finally:
        stop(server)
        if rclone is not None:
            stop(rclone)

    mb = tree_bytes / 1e6
    figures: dict[str, float] = {
        "tree_mb": round(mb, 1),
        "dpmsfs_s": round(statistics.median(times["dpmsfs"]), 2),
        "dpmsfs_mb_s": round(mb / statistics.median(times["dpmsfs"]), 1),
    }
    if peers:
        ratios = [r / d for d, r in zip(times["dpmsfs"], times["restic"], strict=True)]
        figures |= {
            "restic_s": round(statistics.median(times["restic"]), 2),
            "restic_mb_s": round(mb / statistics.median(times["restic"]), 1),
            "speed_vs_restic": round(statistics.median(ratios), 2),
        }
    print("| measurement | dpmsfs | goal | restic (rclone serve restic) | dpmsfs vs restic |")
    print("|---|---|---|---|---|")
    restic_cell = f"{figures['restic_s']} s ({figures['restic_mb_s']} MB/s)" if peers else "-"
    vs = f"{figures['speed_vs_restic']}x" if peers else "-"
    ours_cell = f"{figures['dpmsfs_s']} s ({figures['dpmsfs_mb_s']} MB/s)"
    print(f"| full restore of {mb:.0f} MB from a loopback server | {ours_cell} "
          f"| >= 150 MB/s, > restic | {restic_cell} | {vs} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures | {"rounds": args.rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
