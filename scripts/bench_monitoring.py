#!/usr/bin/env python3
"""Does monitoring touch the I/O path? Writes through a dpmsfs mount, with and without
heavy monitoring, in the same run (issue 12).

"Monitored" = the mount serves /metrics (`--metrics 127.0.0.1:0`), its alert service
evaluates every --evaluate-interval s (default 0.2: 150x the product's 30 s), and a
scraper thread fetches /metrics every --scrape-interval seconds (default 1 s, 15x
Prometheus' usual 15 s; 0.05 to find the limit: each scrape builds the whole status
report) while the workload runs.
"Plain" = the same mount without metrics and with the default alert interval. The
workload writes --files files of 64 KiB (each closed, so capture ingests it) and one
--big-mib file, then fsyncs. Runs alternate plain and monitored; the ratio is the
median monitored time / median plain time (target <= 1.10 at the default scrape
interval: the scrapes cost CPU, but they must not stall the FUSE loop).
Also reports the scrape latency (median, max).

    .venv/bin/python scripts/bench_monitoring.py --runs 5 --json mon.json
    .venv/bin/python scripts/bench_monitoring.py --quick

Needs root and /dev/fuse. Mounts are undone in `finally` (fusermount3 -u -z).
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
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.10


def dpmsfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpmsfs.cli.main", *args],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def mount(work: Path, store: Path, conf: Path, monitored: bool) -> subprocess.Popen[bytes]:
    extra = ["--metrics", "127.0.0.1:0"] if monitored else []
    log = open(work.parent / "mount.log", "ab")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(
        [sys.executable, "-m", "dpmsfs.cli.main", "mount", "--foreground", "--store", str(store),
         "--config", str(conf), *extra, str(work)],
        stdout=log, stderr=log,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = dpmsfs("status", str(work), "--store", str(store), "--json")
        if status.stdout.startswith("{") and json.loads(status.stdout)["daemon"] == "running":
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"mount failed: {(work.parent / 'mount.log').read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit("mount did not come up")


def unmount(work: Path, proc: subprocess.Popen[bytes]) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(work)], check=False, capture_output=True)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def workload(work: Path, run: int, files: int, big_mib: int) -> float:
    block = os.urandom(64 << 10)
    target = work / f"run{run}"
    target.mkdir()
    start = time.perf_counter()
    for i in range(files):
        with open(target / f"d{i:05d}.log", "wb") as f:
            f.write(block[i % 64 :] + block[: i % 64])
    with open(target / "big.bin", "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(big_mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


class Scraper(threading.Thread):
    def __init__(self, listen: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.url = f"http://{listen}/metrics"
        self.stop = threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            start = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as response:
                body = response.read()
            assert b"dpmsfs_up 1.0" in body
            self.latencies.append(time.perf_counter() - start)


def one_run(base: Path, run: int, monitored: bool, args: argparse.Namespace) -> dict[str, Any]:
    work, store, conf = base / "work", base / "store", base / f"c{int(monitored)}.toml"
    interval = args.evaluate_interval if monitored else 30
    conf.write_text(f"[alerts]\nevaluate_interval_seconds = {interval}\n")
    proc = mount(work, store, conf, monitored)
    scraper = None
    try:
        if monitored:
            report = json.loads(dpmsfs("status", str(work), "--store", str(store), "--json").stdout)
            scraper = Scraper(report["metrics"]["listen"], args.scrape_interval)
            scraper.start()
        seconds = workload(work, run, args.files, args.big_mib)
    finally:
        if scraper is not None:
            scraper.stop.set()
            scraper.join(30)
        unmount(work, proc)
    row: dict[str, Any] = {"run": run, "monitored": monitored, "seconds": seconds}
    if scraper is not None:
        row["scrapes"] = len(scraper.latencies)
        row["scrape_median_ms"] = 1000 * statistics.median(scraper.latencies or [0])
        row["scrape_max_ms"] = 1000 * max(scraper.latencies or [0])
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each side (default 5)")
    parser.add_argument("--files", type=int, default=3000, help="64 KiB files per run")
    parser.add_argument("--big-mib", type=int, default=256, help="size of the big file")
    parser.add_argument("--scrape-interval", type=float, default=1.0,
                        help="seconds between scrapes (default 1)")  # fmt: skip
    parser.add_argument("--evaluate-interval", type=float, default=0.2,
                        help="alert evaluation seconds, monitored (default 0.2)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke sizes (~1 minute)")
    parser.add_argument("--base", default="/var/tmp", help="where the work directory goes")
    parser.add_argument("--json", help="write the rows and the result here")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.files, args.big_mib, args.scrape_interval = 2, 300, 16, 0.05
    base = Path(tempfile.mkdtemp(prefix="dpmsfs-bench-mon-", dir=args.base))
    (base / "work").mkdir()
    rows = []
    try:
        for run in range(args.runs):
            order = (False, True) if run % 2 == 0 else (True, False)
            for monitored in order:
                row = one_run(base, len(rows), monitored, args)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(base / "work")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    plain = statistics.median(r["seconds"] for r in rows if not r["monitored"])
    watched = statistics.median(r["seconds"] for r in rows if r["monitored"])
    scrape = statistics.median(r["scrape_median_ms"] for r in rows if r["monitored"])
    result = {"plain_seconds": plain, "monitored_seconds": watched, "ratio": watched / plain,
              "target": TARGET_RATIO, "met": watched / plain <= TARGET_RATIO,
              "scrape_median_ms": scrape, "files": args.files, "big_mib": args.big_mib,
              "runs": args.runs, "scrape_interval": args.scrape_interval,
              "evaluate_interval": args.evaluate_interval}  # fmt: skip
    print(f"plain {plain:.2f} s, monitored {watched:.2f} s, ratio {watched / plain:.3f} "
          f"(target <= {TARGET_RATIO}: {'met' if result['met'] else 'NOT met'}), "
          f"scrape median {scrape:.1f} ms")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "result": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
