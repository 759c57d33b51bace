#!/usr/bin/env python3
"""Per-request cost of the live mount's FUSE layer on each transport (issue 11).

The kernel layer is mounted bare (no capture: NullSink, passthrough on) over a fresh
directory, once per transport: the classic /dev/fuse workers (fuse_io_uring = off) and
FUSE over io_uring (one ring and one pinned thread per CPU; fuse_io_uring = on). On
each, a loop of synchronous requests that the kernel never caches:

* getxattr: `getxattr("user.x")` of a file without it (GETXATTR, answered ENODATA);
* utime: `os.utime` of a file (SETATTR).

Each loop runs with the caller unpinned and pinned to each CPU in turn. The figure is
microseconds per call, the median of --repeats runs, and its ratio to the same call on
the bare directory in the same run. Transports alternate in rounds (--rounds) so that
load from elsewhere on the machine hits both alike.

    .venv/bin/python scripts/bench_fuse_requests.py --calls 20000 --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRANSPORTS = {"dev": "off", "uring": "on"}
MOUNT_TIMEOUT = 30.0

# The daemon side: the kernel layer with no capture, unmounted on SIGTERM.
SERVE = """
import sys
from pathlib import Path
from dpmsfs.fs import kernel_mount
from dpmsfs.fs.mount import MountOptions
workdir, ready, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
def on_ready(live):
    ready.write_text(live.session.transport)
kernel_mount.serve(MountOptions(workdir, passthrough=True, fuse_io_uring=mode),
                   None, [], on_ready, True, None, None)
"""


def log(msg: str) -> None:
    print(f"[bench_fuse_requests] {msg}", file=sys.stderr, flush=True)


def venv_python() -> str:
    candidate = REPO / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def loop_getxattr(path: Path, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        try:
            os.getxattr(path, "user.x")
        except OSError:
            pass
    return time.perf_counter() - start


def loop_utime(path: Path, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        os.utime(path, (i, i))
    return time.perf_counter() - start


LOOPS: dict[str, Callable[[Path, int], float]] = {"getxattr": loop_getxattr, "utime": loop_utime}


def measure(directory: Path, calls: int, repeats: int, cpus: list[int]) -> dict[str, float]:
    """Microseconds per call for each loop and placement of the caller."""
    target = directory / "m.txt"
    target.write_bytes(b"")
    everyone = os.sched_getaffinity(0)
    results: dict[str, float] = {}
    try:
        for placement in ["unpinned", *[f"cpu{c}" for c in cpus]]:
            os.sched_setaffinity(0, everyone if placement == "unpinned" else {int(placement[3:])})
            for name, loop in LOOPS.items():
                runs = [loop(target, calls) / calls * 1e6 for _ in range(repeats)]
                results[f"{name} {placement}"] = statistics.median(runs)
    finally:
        os.sched_setaffinity(0, everyone)
    return results


def with_mount(
    workdir: Path, mode: str, run: Callable[[], dict[str, float]]
) -> tuple[str, dict[str, float]]:
    ready = workdir.parent / f"ready-{mode}"
    ready.unlink(missing_ok=True)
    log_path = workdir.parent / f"daemon-{mode}.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [venv_python(), "-c", SERVE, str(workdir), str(ready), mode],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mount failed: {log_path.read_text()[-800:]}")
            time.sleep(0.02)
        transport = ready.read_text()
        return transport, run()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", str(workdir)], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="/var/tmp", help="where the work directory goes")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per loop")
    parser.add_argument("--repeats", type=int, default=3, help="loops per figure (median)")
    parser.add_argument("--rounds", type=int, default=2, help="transports alternate per round")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_fuse_requests: needs root (mount(2), /dev/fuse)", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    base = Path(tempfile.mkdtemp(prefix="dpmsfs-requests-", dir=args.base))
    native = base / "native"
    native.mkdir()
    figures: dict[str, dict[str, list[float]]] = {"native": {}}
    transports: dict[str, str] = {}
    try:
        for round_index in range(args.rounds):
            order = list(TRANSPORTS) if round_index % 2 == 0 else list(TRANSPORTS)[::-1]
            for key, value in measure(native, args.calls, args.repeats, cpus).items():
                figures["native"].setdefault(key, []).append(value)
            for side in order:
                workdir = base / side
                workdir.mkdir(exist_ok=True)
                transport, result = with_mount(
                    workdir, TRANSPORTS[side],
                    lambda w=workdir: measure(w, args.calls, args.repeats, cpus),
                )  # fmt: skip
                transports[side] = transport
                for key, value in result.items():
                    figures.setdefault(side, {}).setdefault(key, []).append(value)
            log(f"round {round_index + 1} done")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = []
    for key in figures["native"]:
        native_us = statistics.median(figures["native"][key])
        row: dict[str, object] = {"loop": key, "native_us": native_us}
        for side in TRANSPORTS:
            value = statistics.median(figures[side][key])
            row[f"{side}_us"] = value
            row[f"{side}_ratio"] = value / native_us
        row["uring_vs_dev"] = float(row["uring_us"]) / float(row["dev_us"])  # type: ignore[arg-type]
        rows.append(row)
    print("| loop, caller | native | /dev/fuse | io_uring | io_uring / dev |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['loop']} | {row['native_us']:.1f} µs | {row['dev_us']:.1f} µs | "
              f"{row['uring_us']:.1f} µs | {row['uring_vs_dev']:.2f} |")  # fmt: skip
    print(f"transports: {transports}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "rows": rows, "transports": transports}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
