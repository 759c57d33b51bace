#!/usr/bin/env python3
"""Everyday work on a tool through the live mount, against the bare directory (issue 11).

Sides, all on real disk (a directory under --base, default /var/tmp), with capture on as
on a tool (`dpmsfs mount --foreground --store ...`):

* native: the bare directory;
* kernel-pt: the live mount on our own FUSE layer with FUSE passthrough, requests on
  the classic /dev/fuse workers (DPMSFS_FUSE_IO_URING=off);
* kernel-pt-uring: the same with FUSE over io_uring (one ring and thread per CPU: a
  request is served on the CPU that asked; fuse_io_uring = on);
* kernel: the layer without passthrough, on /dev/fuse (READ/WRITE served by the
  daemon, as on a kernel older than 6.9);
* pyfuse3: the previous live path (DPMSFS_LIVE_FUSE=pyfuse3).

Workloads: the datalog writer (20,000 unbuffered 256-byte appends, fsync every 1,000),
a sequential write (with fsync) and a warm sequential read of it (tens of ms and
noisy: read SEQ_READ_REPEATS times per round, the round's figure is their median),
`tar x` of a source
tree from mkdataset's pgm/ (no *.atp), `grep -r` over it (page cache warm), `rm -rf`
of it, and `make -j2` of a C project (Lua by default, or --make-src: a directory
with a Makefile, copied in fresh each round).

Sides are interleaved in rounds (the order rotates); each workload's figure is the
median over rounds of the per-round ratio side / native. FUSE requests per workload
and the microseconds spent handling them come from the daemon's request counter
(DPMSFS_FUSE_REQUEST_COUNTS; the kernel layer's session and, on pyfuse3, a counting
wrapper around the Operations, both off unless that variable is set). The transport
each kernel-layer side really ran on (from `dpmsfs status --json` of the running
daemon) goes into the JSON under "transports". The C build is
`make -j2 linux` of Lua 5.4.4 (Debian's orig tarball, sha256-checked, cached under
/var/cache/dpmsfs-bench, extracted fresh each round); a run that cannot download it
says so and goes on without it.

    .venv/bin/python scripts/bench_workloads.py --rounds 3 --json out.json
    .venv/bin/python scripts/bench_workloads.py --quick      # small smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
MOUNT_TIMEOUT = 30.0
SIDES = ("native", "kernel-pt", "kernel-pt-uring", "kernel", "pyfuse3")
SEQ_READ_REPEATS = 5
LUA_URL = "https://deb.debian.org/debian/pool/main/l/lua5.4/lua5.4_5.4.4.orig.tar.gz"
LUA_SHA256 = "164c7849653b80ae67bec4b7473b884bf5cc8d2dca05653475ec2ed27b9ebf61"
LUA_DIR = "lua-5.4.4"
LUA_CACHE = Path("/var/cache/dpmsfs-bench")


def log(msg: str) -> None:
    print(f"[bench_workloads] {msg}", file=sys.stderr, flush=True)


def venv_python() -> str:
    candidate = REPO / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def is_dpmsfs_mount(path: Path) -> bool:
    with open("/proc/self/mountinfo") as table:
        for line in table:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4] == str(path) and right.startswith("fuse.dpmsfs "):
                return True
    return False


@contextlib.contextmanager
def mounted(side: str, workdir: Path, store: Path, counts: Path) -> Iterator[str | None]:
    """The side's mount over `workdir` (nothing for native); always unmounted after.
    Yields the FUSE transport the daemon reports (`dpmsfs status`), None for native."""
    if side == "native":
        yield None
        return
    counts.unlink(missing_ok=True)  # a previous round's daemon wrote its own totals
    env = dict(os.environ)
    env["DPMSFS_LIVE_FUSE"] = "pyfuse3" if side == "pyfuse3" else "kernel"
    env["DPMSFS_PASSTHROUGH"] = "1" if side.startswith("kernel-pt") else "0"
    env["DPMSFS_FUSE_IO_URING"] = "on" if side.endswith("-uring") else "off"
    env["DPMSFS_FUSE_REQUEST_COUNTS"] = str(counts)
    log_path = workdir.parent / f"{side}.log"
    cmd = [venv_python(), "-m", "dpmsfs.cli.main", "mount", "--foreground",
           "--store", str(store), str(workdir)]  # fmt: skip
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_dpmsfs_mount(workdir):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{side}: mount failed: {log_path.read_text()[-500:]}")
            time.sleep(0.02)
        if side != "native":
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while not counts.exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # the counter's first write: a baseline for workload 1
        yield transport_of(workdir, store)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", str(workdir)], capture_output=True)


def read_counts(path: Path) -> dict[str, int]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


# --- workloads: each takes the work directory, returns seconds -----------------------
def datalog(work: Path, records: int) -> float:
    record = b"x" * 255 + b"\n"
    start = time.perf_counter()
    fd = os.open(work / "lot.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
    try:
        for n in range(records):
            os.write(fd, record)
            if n % 1000 == 999:
                os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - start
    os.unlink(work / "lot.log")
    return elapsed


def seq_write(work: Path, size: int) -> float:
    block = os.urandom(MIB)
    start = time.perf_counter()
    fd = os.open(work / "seq.bin", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // MIB):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def seq_read(work: Path, size: int) -> float:
    """The median of SEQ_READ_REPEATS warm reads: one read is tens of ms and noisy."""
    elapsed = []
    for _ in range(SEQ_READ_REPEATS):
        start = time.perf_counter()
        with open(work / "seq.bin", "rb", buffering=0) as f:
            while f.read(MIB):
                pass
        elapsed.append(time.perf_counter() - start)
    os.unlink(work / "seq.bin")
    return statistics.median(elapsed)


def transport_of(workdir: Path, store: Path) -> str | None:
    """The transport the running daemon reports, with its reason ("io_uring (2 queues,
    one per CPU)"); None for pyfuse3 or when status cannot tell."""
    result = subprocess.run(
        [venv_python(), "-m", "dpmsfs.cli.main", "status", str(workdir), "--store", str(store),
         "--json"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        fuse = json.loads(result.stdout).get("fuse") or {}
    except ValueError:
        return None
    if not fuse.get("transport"):
        return None
    return f"{fuse['transport']} ({fuse.get('transport_reason', '')})"


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def ensure_tree(base: Path, size_mb: int, mkdataset: Path) -> Path:
    tarball = base / f"tree-{size_mb}.tar"
    if tarball.exists():
        return tarball
    log(f"generating the source tree ({size_mb} MiB dataset, pgm/ without *.atp)")
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        gen = Path(tmp) / "gen"
        subprocess.run([sys.executable, str(mkdataset), "init", str(gen), "--size-mb",
                        str(size_mb), "--seed", "42", "--jobs", "1"], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run(["tar", "-C", str(gen), "--exclude=*.atp", "--transform=s,^pgm,tree,",
                        "-cf", str(tarball), "pgm"], check=True)  # fmt: skip
    return tarball


def workloads(args: argparse.Namespace, tarball: Path) -> list[tuple[str, Callable[[Path], float]]]:
    size = args.seq_mb * MIB
    items: list[tuple[str, Callable[[Path], float]]] = [
        ("datalog", lambda w: datalog(w, args.records)),
        ("seq write", lambda w: seq_write(w, size)),
        ("seq read (warm)", lambda w: seq_read(w, size)),
        ("tar x", lambda w: timed(["tar", "xf", str(tarball)], w)),
        ("grep -r (warm)", _grep),
        ("rm -rf", lambda w: timed(["rm", "-rf", "tree"], w)),
    ]
    if args.make_src:
        src = Path(args.make_src)

        def make(w: Path) -> float:
            shutil.copytree(src, w / "build")
            elapsed = timed(["make", "-j2", "-s"], w / "build")
            shutil.rmtree(w / "build")
            return elapsed

        items.append(("make -j2", make))
    elif args.lua_tarball:
        lua = Path(args.lua_tarball)

        def make_lua(w: Path) -> float:
            # A fresh extract each round: nothing left over from the previous build.
            subprocess.run(["tar", "xzf", str(lua)], cwd=w, check=True)
            build = w / LUA_DIR
            elapsed = timed(["make", "-j2", "-s", "linux"], build)
            shutil.rmtree(build)
            return elapsed

        items.append(("make -j2 (Lua 5.4.4)", make_lua))
    return items


def fetch_lua(cache: Path) -> Path | None:
    """Lua's source from Debian's pool, checked against its sha256, cached; None (and
    a clear line) when it cannot be had, so the rest of the run goes on."""
    target = cache / Path(LUA_URL).name
    if not target.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            log(f"downloading {LUA_URL}")
            with urllib.request.urlopen(LUA_URL, timeout=60) as response:
                data = response.read()
        except OSError as exc:
            log(f"C build NOT run: cannot download {LUA_URL} ({exc})")
            return None
        digest = hashlib.sha256(data).hexdigest()
        if digest != LUA_SHA256:
            log(f"C build NOT run: {LUA_URL} has sha256 {digest}, expected {LUA_SHA256}")
            return None
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(target)
    elif hashlib.sha256(target.read_bytes()).hexdigest() != LUA_SHA256:
        log(f"C build NOT run: cached {target} does not match sha256 {LUA_SHA256}")
        return None
    if shutil.which("make") is None or shutil.which("gcc") is None:
        log("C build NOT run: make/gcc missing (scripts/setup.sh installs build-essential)")
        return None
    return target


def _grep(work: Path) -> float:
    subprocess.run(["grep", "-r", "-c", "zzzz-none", "tree"], cwd=work, stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    subprocess.run(["grep", "-r", "-c", "zzzz-none", "tree"], cwd=work, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="/var/tmp", help="where the work directories go")
    parser.add_argument("--rounds", type=int, help="default 3 (2 with --quick)")
    parser.add_argument("--records", type=int, default=20_000, help="datalog appends")
    parser.add_argument("--seq-mb", type=int, default=256)
    parser.add_argument("--tree-mb", type=int, default=1000, help="mkdataset size for pgm/")
    parser.add_argument("--make-src", help="a C project directory to `make -j2` each round")
    parser.add_argument("--no-lua", action="store_true",
                        help="skip the default C build (Lua 5.4.4 from Debian's pool)")  # fmt: skip
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--mkdataset", default="/work/shared/bench/mkdataset.py")
    parser.add_argument("--quick", action="store_true", help="small smoke sizes")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.seq_mb, args.tree_mb = 5_000, 32, 300
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if "native" not in args.sides:
        args.sides.insert(0, "native")
    base = Path(tempfile.mkdtemp(prefix="dpmsfs-workloads-", dir=args.base))
    cache = Path(args.base) / "dpmsfs-bench-cache"
    cache.mkdir(exist_ok=True)
    tarball = ensure_tree(cache, args.tree_mb, Path(args.mkdataset))
    args.lua_tarball = None
    if not args.make_src and not args.no_lua:
        lua = fetch_lua(LUA_CACHE)
        args.lua_tarball = str(lua) if lua else None
    times: dict[str, dict[str, list[float]]] = {}
    requests: dict[str, dict[str, dict[str, int]]] = {}
    transports: dict[str, str | None] = {}
    try:
        for round_index in range(args.rounds):
            order = (
                args.sides[round_index % len(args.sides) :]
                + args.sides[: round_index % len(args.sides)]
            )
            for side in order:
                work = base / side / "work"
                store = base / side / "store"
                work.mkdir(parents=True, exist_ok=True)
                counts = base / side / "counts.json"
                with mounted(side, work, store, counts) as transport:
                    if transport is not None:
                        transports[side] = transport
                    for name, run in workloads(args, tarball):
                        before = read_counts(counts)
                        elapsed = run(work)
                        times.setdefault(name, {}).setdefault(side, []).append(elapsed)
                        if side != "native":
                            time.sleep(0.45)
                            after = read_counts(counts)
                            delta = {k: v - before.get(k, 0) for k, v in after.items()
                                     if v - before.get(k, 0)}  # fmt: skip
                            requests.setdefault(name, {})[side] = delta
                log(f"round {round_index + 1}: {side} done")
    finally:
        subprocess.run(["umount", "-l", *[str(base / s / "work") for s in SIDES]],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)
    rows = []
    for name, per_side in times.items():
        row: dict[str, Any] = {"workload": name, "native_s": statistics.median(per_side["native"])}
        row["native_rounds_s"] = per_side["native"]
        for side in args.sides[1:]:
            ratios = [s / n for s, n in zip(per_side[side], per_side["native"], strict=True)]
            row[f"{side}_s"] = statistics.median(per_side[side])
            row[f"{side}_rounds_s"] = per_side[side]
            row[f"{side}_ratio"] = statistics.median(ratios)
            row[f"{side}_requests"] = requests.get(name, {}).get(side)
        rows.append(row)
    header = "| work | native | " + " | ".join(f"{s} (x native)" for s in args.sides[1:]) + " |"
    print(header)
    print("|---|---:|" + "---:|" * (len(args.sides) - 1))
    for row in rows:
        cells = [f"{row[f'{s}_s']:.3f} s ({row[f'{s}_ratio']:.2f}x)" for s in args.sides[1:]]
        print(f"| {row['workload']} | {row['native_s']:.3f} s | " + " | ".join(cells) + " |")
    print("\nFUSE requests per workload (last round):")
    print("  (opcode count, microseconds per request in the handler)")
    for row in rows:
        for side in ("kernel-pt", "kernel-pt-uring", "kernel", "pyfuse3"):
            found = row.get(f"{side}_requests")
            if found:
                counts = {k: v for k, v in found.items() if not k.startswith("us ")}
                top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
                cells = [f"{k} {v} ({found.get(f'us {k}', 0) / v:.0f} us)" for k, v in top]
                print(f"  {row['workload']:<16} {side:<10} " + ", ".join(cells))
    if args.json:
        result = {"args": vars(args), "rows": rows, "transports": transports}
        Path(args.json).write_text(json.dumps(result, indent=2))
    for side, transport in transports.items():
        print(f"  transport {side}: {transport}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
