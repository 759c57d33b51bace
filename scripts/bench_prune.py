#!/usr/bin/env python3
"""Prune benchmark (issue 12): a store with 100+ snapshots of a mutated mkdataset tree.

Usage:  .venv/bin/python scripts/bench_prune.py [--size-mb N] [--days D] [--per-day K]

1. `mkdataset.py init` a tree (--size-mb, seed 42), mount dpmsfs over it (fresh store,
   the daemon's scheduled prune off), take the first snapshot (the import).
2. For each of --days days: `mkdataset.py mutate --day d` through the mount, then
   --per-day snapshots (the first after the day's changes; the others after a small
   edit each, as the 15-minute snapshots of a working day would be). Snapshot times are
   real (seconds apart), so the policy used is count-based: --keep-last (default 10).
3. Capture latency, baseline: write a 1 MiB file through the mount and time
   `dpmsfs snapshot` (waits until it is captured), --samples times, no prune running.
4. `dpmsfs prune --keep-last N --json` through the daemon, timed, while the same
   latency probe runs in a loop beside it: the ratio during/baseline is the figure
   (capture goes on during a prune; no global lock).
5. Stored bytes (`du` of the store's packs) before and after, and `dpmsfs verify
   --read-data` after (must pass).

Prints one JSON report (and writes it with --json FILE). The machine is shared with
other jobs: ratios against the baseline of the same run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MKDATASET = "/work/shared/bench/mkdataset.py"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def dpmsfs(*args: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dpmsfs.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"dpmsfs {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def du(path: Path) -> int:
    total = 0
    for root, _, names in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, n)) for n in names)
    return total


def probe(work: Path, store: Path, n: int) -> float:
    """Seconds from a 1 MiB write through the mount to its snapshot being recorded."""
    start = time.monotonic()
    (work / f"probe{n % 4}.bin").write_bytes(os.urandom(1 << 20))
    dpmsfs("snapshot", str(work), "--store", str(store), "--label", "probe")
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=40)
    parser.add_argument("--days", type=int, default=25)
    parser.add_argument("--per-day", type=int, default=4)
    parser.add_argument("--keep-last", type=int, default=10)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="dpmsfs-bench-prune-"))
    work, store = base / "work", base / "store"
    config = base / "tool.toml"
    config.write_text(f'store = "{store}"\nprune_interval_hours = 0\n')
    proc: subprocess.Popen[bytes] | None = None
    try:
        log(f"dataset: {args.size_mb} MB")
        subprocess.run([sys.executable, MKDATASET, "init", str(work), "--size-mb",
                        str(args.size_mb), "--seed", "42"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        mount_log = open(base / "mount.log", "wb")  # noqa: SIM115 - closed by the child's exit
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpmsfs.cli.main", "mount", "--foreground", "--config",
             str(config), str(work)],
            cwd=ROOT, stdout=mount_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        mount_log.close()  # the child has its own descriptor
        deadline = time.monotonic() + 60
        while not is_mounted(work):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"mount failed: {(base / 'mount.log').read_text()[-2000:]}")
            time.sleep(0.05)
        dpmsfs("snapshot", str(work), "--store", str(store), "--label", "import")
        log(f"{args.days} days x {args.per_day} snapshots")
        mutate_failures = 0
        for day in range(1, args.days + 1):
            mutated = subprocess.run([sys.executable, MKDATASET, "mutate", str(work), "--day",
                                      str(day), "--seed", "7"], check=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            if mutated.returncode:
                # mkdataset.py's mutate fails on some days ('new_open' is None when no lot
                # was the day's last); the day's earlier changes are on disk: go on
                mutate_failures += 1
                log(f"mutate day {day} failed: {mutated.stderr.decode().strip().splitlines()[-1]}")
            for k in range(args.per_day):
                if k:
                    with open(work / "edits.log", "a") as f:
                        f.write(f"day {day} edit {k}\n")
                dpmsfs("snapshot", str(work), "--store", str(store))
        snapshots = len(json.loads(dpmsfs("snapshots", str(work), "--store", str(store),
                                          "--json")))  # fmt: skip
        baseline = [probe(work, store, n) for n in range(args.samples)]
        before = du(store / "packs")

        during: list[float] = []
        done = threading.Event()

        def prober() -> None:
            n = 100
            while not done.is_set():
                during.append(probe(work, store, n))
                n += 1

        thread = threading.Thread(target=prober)
        start = time.monotonic()
        thread.start()
        report = json.loads(dpmsfs("prune", str(work), "--store", str(store), "--keep-last",
                                   str(args.keep_last), "--json"))  # fmt: skip
        prune_s = time.monotonic() - start
        done.set()
        thread.join()
        after = du(store / "packs")
        verify = subprocess.run([sys.executable, "-m", "dpmsfs.cli.main", "verify", str(work),
                                 "--store", str(store), "--read-data"], cwd=ROOT,
                                capture_output=True, text=True, check=False)  # fmt: skip
        result: dict[str, Any] = {
            "command": " ".join(sys.argv),
            "size_mb": args.size_mb,
            "snapshots_before": snapshots,
            "snapshots_removed": len(report["forgotten"]),
            "prune_seconds": round(prune_s, 2),
            "collect_seconds": report["collect"]["seconds"],
            "pack_bytes_before": before,
            "pack_bytes_after": after,
            "reclaimed_bytes": report["collect"]["reclaimed_bytes"],
            "packs_deleted": report["collect"]["packs_deleted"],
            "packs_repacked": report["collect"]["packs_repacked"],
            "capture_latency_baseline_s": round(statistics.median(baseline), 3),
            "capture_latency_during_prune_s": round(statistics.median(during), 3)
            if during
            else None,
            "latency_samples_during_prune": len(during),
            "verify_ok": verify.returncode == 0,
            "mutate_failures": mutate_failures,
        }
        if during:
            result["latency_ratio"] = round(
                result["capture_latency_during_prune_s"] / result["capture_latency_baseline_s"], 2
            )
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0 if result["verify_ok"] else 1
    finally:
        if is_mounted(work / ".snapshots"):
            subprocess.run(["fusermount3", "-u", "-z", str(work / ".snapshots")], check=False)
        if is_mounted(work):
            subprocess.run(["fusermount3", "-u", "-z", str(work)], check=False)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
