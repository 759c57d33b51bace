#!/usr/bin/env python3
"""Benchmark a dpmsfs mount against the native file system and pyfuse3's example (issue 2).

Every run measures, side by side and interleaved (the order rotates each run, so a disk
that drifts during the run hurts every side alike):

* on disk (a directory under --base, default /var/tmp): sequential write of a file with
  fsync, cold sequential read (caches dropped), 4 KiB random read (cold start) and 4 KiB
  random write (fio, psync, end_fsync) on it, then warm 4 KiB random reads and 1 MiB
  sequential reads with the file in the page cache; the 4 KiB random writes also against
  pyfuse3's unmodified examples/passthroughfs.py;
* on a tmpfs mounted for the run: create (4 KiB each) / stat / unlink of many files, then
  `tar x` of a ~80 MiB tree of ~6,700 entries and `rm -rf` of it, against native, dpmsfs
  and the pyfuse3 example (its source, SOURCE, is served at a separate MOUNTPOINT).

The tree is pgm/ (without the large *.atp patterns) of `mkdataset.py init --size-mb 1500
--seed 42` from shared/bench, tarred once into /var/tmp/dpmsfs-bench-cache. The example
comes from `pip download --no-binary :all: pyfuse3==<installed version>` (also cached
there, as the sdist) and is extracted at run time.

Medians over --runs; each row prints baseline, dpmsfs, their ratio, the target and
whether it is met. Rates: ratio = dpmsfs / baseline; times (tar x, rm -rf): ratio =
dpmsfs time / baseline time. "noise" targets (cold sequential write and read) pass when
dpmsfs's median is at least the slowest native run (ratio >= native min / median).

Needs root (mounts, drop_caches) and /dev/fuse; installs fio with apt-get if missing.
Every mount made is undone in `finally` (fusermount3 -u -z, umount -l), even on failure.

    .venv/bin/python scripts/bench_mount.py --runs 5 --json bench.json
    .venv/bin/python scripts/bench_mount.py --quick              # ~2 minute smoke run
    .venv/bin/python scripts/bench_mount.py --only create stat unlink --profile prof/
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import mmap
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path("/var/tmp/dpmsfs-bench-cache")
MIB = 1 << 20
MOUNT_TIMEOUT = 30.0
TREE_SIZE_MB = 1500  # pgm/ of this tree, without *.atp: ~6,700 entries, ~82 MiB
TREE_SEED = 42
MAP_LOCKED = getattr(mmap, "MAP_LOCKED", 0x2000)  # Linux value; newer Pythons export it


@dataclass(frozen=True)
class Workload:
    name: str
    place: str  # "disk" or "tmpfs"
    unit: str
    higher_is_better: bool
    label: str


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("seq_write", "disk", "MiB/s", True, "seq write+fsync (cold)"),
        Workload("cold_read", "disk", "MiB/s", True, "seq read (cold)"),
        Workload("rand_read", "disk", "IOPS", True, "4K rand read (cold start)"),
        Workload("rand_write", "disk", "IOPS", True, "4K rand write (+end fsync)"),
        Workload("warm_rand_read", "disk", "IOPS", True, "4K rand read (warm)"),
        Workload("warm_seq_read", "disk", "MiB/s", True, "1M seq read (warm)"),
        Workload("create", "tmpfs", "files/s", True, "create 4K files"),
        Workload("stat", "tmpfs", "files/s", True, "stat"),
        Workload("unlink", "tmpfs", "files/s", True, "unlink"),
        Workload("tar_x", "tmpfs", "s", False, "tar x (time)"),
        Workload("rm_rf", "tmpfs", "s", False, "rm -rf (time)"),
    ]
}
META = ("create", "stat", "unlink")


@dataclass(frozen=True)
class Row:
    workload: str
    baseline: str  # "native" or "example"
    op: str | None  # ">=", "<=", "noise" or None (informational)
    value: float = 0.0


ROWS = [
    Row("seq_write", "native", "noise"),
    Row("cold_read", "native", "noise"),
    Row("rand_read", "native", None),
    Row("rand_write", "native", None),
    Row("rand_write", "example", ">=", 1.25),
    Row("warm_rand_read", "native", ">=", 0.85),
    Row("warm_seq_read", "native", ">=", 0.85),
    Row("create", "native", None),
    Row("stat", "native", None),
    Row("unlink", "native", None),
    Row("tar_x", "native", None),
    Row("rm_rf", "native", None),
    Row("create", "example", ">=", 2.5),
    Row("stat", "example", ">=", 6.0),
    Row("unlink", "example", ">=", 3.0),
    Row("tar_x", "example", "<=", 0.3),
    Row("rm_rf", "example", None),
]


@dataclass(frozen=True)
class Config:
    runs: int
    file_size: int
    fio_seconds: int
    warm_seconds: int
    nfiles: int


FULL = Config(runs=3, file_size=1024 * MIB, fio_seconds=20, warm_seconds=10, nfiles=10_000)
QUICK = Config(runs=1, file_size=256 * MIB, fio_seconds=4, warm_seconds=3, nfiles=2_000)


@dataclass
class Side:
    """One place a workload runs: native directory, dpmsfs mount or the example's."""

    name: str  # "native", "dpmsfs" or "example"
    path: Path
    pid: int | None = None

    def cpu_seconds(self) -> float:
        """User+system CPU of the serving daemon so far (0 for native)."""
        if self.pid is None:
            return 0.0
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Results:
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    cpu_per_op_us: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, workload: str, side: str, value: float) -> None:
        self.samples.setdefault(workload, {}).setdefault(side, []).append(value)

    def add_cpu(self, workload: str, side: str, us: float) -> None:
        self.cpu_per_op_us.setdefault(workload, {}).setdefault(side, []).append(us)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)


def venv_python() -> str:
    candidate = REPO / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# --- setup ---------------------------------------------------------------------------
def ensure_fio() -> str:
    fio = shutil.which("fio")
    if fio:
        return fio
    log("fio missing: apt-get install fio")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "fio"], env=env).returncode != 0:
        run(["apt-get", "update"], env=env)
        run(["apt-get", "install", "-y", "fio"], env=env)
    fio = shutil.which("fio")
    if not fio:
        raise SystemExit("bench_mount: could not install fio")
    return fio


def pyfuse3_version() -> str:
    code = "import importlib.metadata as m; print(m.version('pyfuse3'))"
    return run([venv_python(), "-c", code]).stdout.strip()


def fetch_example(dest: Path) -> Path:
    """Extract pyfuse3's examples/passthroughfs.py, unmodified, from its sdist."""
    version = pyfuse3_version()
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"pyfuse3-{version}.tar.gz"
    if not sdist.exists():
        log(f"pip download pyfuse3=={version} (sdist)")
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            pip = [venv_python(), "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            run([*pip, f"pyfuse3=={version}", "-d", tmp])
            os.replace(Path(tmp) / sdist.name, sdist)
    member = f"pyfuse3-{version}/examples/passthroughfs.py"
    with tarfile.open(sdist) as tar:
        source = tar.extractfile(member)
        if source is None:
            raise SystemExit(f"bench_mount: {member} not in {sdist}")
        target = dest / "passthroughfs.py"
        target.write_bytes(source.read())
    return target


def mkdataset_path(explicit: str | None) -> Path:
    candidates = [Path(explicit)] if explicit else []
    candidates += [
        REPO.parent / "shared/bench/mkdataset.py",
        Path("/work/shared/bench/mkdataset.py"),
    ]
    for path in candidates:
        if path.exists():
            return path
    raise SystemExit("bench_mount: mkdataset.py not found (pass --mkdataset)")


def ensure_tree_tarball(mkdataset: Path) -> Path:
    """The `tar x` input: tree/ = pgm/ of a generated tester work directory, no *.atp."""
    tarball = CACHE / f"tree-{TREE_SIZE_MB}-seed{TREE_SEED}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"generating the tar x tree with {mkdataset.name} (once, cached in {CACHE})")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        gen = Path(tmp) / "gen"
        init = [sys.executable, str(mkdataset), "init", str(gen)]
        run([*init, "--size-mb", str(TREE_SIZE_MB), "--seed", str(TREE_SEED)])
        partial = Path(tmp) / "tree.tar"
        pack = ["tar", "-C", str(gen), "--exclude=*.atp", "--transform=s,^pgm,tree,"]
        run([*pack, "-cf", str(partial), "pgm"])
        os.replace(partial, tarball)
    return tarball


# --- mounts --------------------------------------------------------------------------
def is_fuse_mount(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4] == str(path) and right.startswith("fuse"):
                return True
    return False


@contextlib.contextmanager
def tmpfs_mount(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def fuse_daemon(cmd: list[str], mountpoint: Path, log_path: Path) -> Iterator[int]:
    """Start a FUSE daemon, wait for its mount, yield its pid; always unmount and reap."""
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_fuse_mount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"mount of {mountpoint} failed: " + " | ".join(tail))
            time.sleep(0.02)
        yield proc.pid
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def dpmsfs_cmd(workdir: Path, store: Path | None) -> list[str]:
    """`dpmsfs mount --foreground`: passthrough only, or with capture into `store`."""
    cmd = [venv_python(), "-m", "dpmsfs.cli.main", "mount", "--foreground"]
    mount_help = run([*cmd[:-1], "--help"]).stdout
    if store is not None:
        if "--store" not in mount_help:
            raise SystemExit("bench_mount: this dpmsfs has no --store (no capture to measure)")
        cmd += ["--store", str(store)]
    elif "--no-capture" in mount_help:
        cmd.append("--no-capture")
    return [*cmd, str(workdir)]


def example_cmd(example: Path, source: Path, mountpoint: Path) -> list[str]:
    return [venv_python(), str(example), str(source), str(mountpoint)]


@contextlib.contextmanager
def profiled(out: Path | None, pid: int | None) -> Iterator[None]:
    """py-spy record (raw collapsed stacks, idle included) of `pid` around the block."""
    if out is None or pid is None:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(venv_python()).parent / "py-spy")
    cmd = [py_spy, "record", "--pid", str(pid), "--rate", "500", "--idle", "--nonblocking"]
    cmd += ["--format", "raw", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let it attach
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- workloads -----------------------------------------------------------------------
_BLOCK = os.urandom(MIB)


def seq_write(path: Path, size: int) -> float:
    """Write `size` bytes in 1 MiB writes and fsync; MiB/s including the fsync."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    drop_caches()
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(_BLOCK)
        for _ in range(size // MIB):
            done = 0
            while done < MIB:
                done += os.write(fd, view[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return size / MIB / (time.perf_counter() - start)


def read_all(path: Path) -> int:
    buf = bytearray(MIB)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def cold_read(path: Path) -> float:
    drop_caches()
    start = time.perf_counter()
    total = read_all(path)
    return total / MIB / (time.perf_counter() - start)


@contextlib.contextmanager
def pinned_in_cache(path: Path) -> Iterator[None]:
    """Keep the file's pages in the page cache (MAP_LOCKED) while the block runs.

    Others on the machine may drop caches (drop_caches, memory pressure) between the
    warm-up and the measurement; locked pages stay. For dpmsfs this pins the mount's
    own page cache, the one warm reads are served from.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE | MAP_LOCKED
        mapping = mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)
        try:
            yield
        finally:
            mapping.close()


def ensure_file(path: Path, size: int) -> None:
    if not path.exists() or path.stat().st_size != size:
        seq_write(path, size)


def fio(
    path: Path, size: int, rw: str, bs: str, seconds: int, *, warm: bool, out_dir: Path
) -> float:
    """One fio job on `path`; IOPS for 4k, MiB/s otherwise."""
    out = out_dir / "fio.json"
    cmd = [
        ensure_fio(),
        f"--name={rw}",
        f"--filename={path}",
        f"--size={size}",
        f"--rw={rw}",
        f"--bs={bs}",
        "--ioengine=psync",
        f"--runtime={seconds}",
        "--time_based",
        f"--invalidate={0 if warm else 1}",
        "--output-format=json",
        f"--output={out}",
    ]
    if rw == "randwrite":
        cmd.append("--end_fsync=1")
    run(cmd)
    job = json.loads(out.read_text())["jobs"][0]
    data = job["write" if "write" in rw else "read"]
    return float(data["iops"]) if bs == "4k" else float(data["bw_bytes"]) / MIB


def meta_cycle(side: Side, nfiles: int, results: Results, wanted: set[str]) -> None:
    """Create `nfiles` 4 KiB files (1,000 per directory), stat them, unlink them."""
    root = side.path / "meta"
    root.mkdir()
    paths = []
    for i in range(nfiles):
        if i % 1000 == 0:
            (root / f"d{i // 1000}").mkdir()
        paths.append(os.fsencode(root / f"d{i // 1000}" / f"file{i:05d}.dat"))
    data = b"\xa5" * 4096
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

    def create() -> None:
        for p in paths:
            fd = os.open(p, flags, 0o644)
            os.write(fd, data)
            os.close(fd)

    def stat() -> None:
        for p in paths:
            os.stat(p)

    def unlink() -> None:
        for p in paths:
            os.unlink(p)

    steps: dict[str, Callable[[], None]] = {"create": create, "stat": stat, "unlink": unlink}
    for name, step in steps.items():
        cpu0 = side.cpu_seconds()
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        cpu = side.cpu_seconds() - cpu0
        if name in wanted:
            results.add(name, side.name, nfiles / elapsed)
            if side.pid is not None:
                results.add_cpu(name, side.name, cpu / nfiles * 1e6)
    for d in root.iterdir():
        d.rmdir()
    root.rmdir()


def tar_cycle(side: Side, tarball: Path, results: Results, wanted: set[str]) -> None:
    tree = side.path / "tree"
    for name, cmd in [
        ("tar_x", ["tar", "-xf", str(tarball), "-C", str(side.path)]),
        ("rm_rf", ["rm", "-rf", str(tree)]),
    ]:
        cpu0 = side.cpu_seconds()
        start = time.perf_counter()
        run(cmd)
        elapsed = time.perf_counter() - start
        if name in wanted:
            results.add(name, side.name, elapsed)
            if side.pid is not None:
                results.add_cpu(name, side.name, (side.cpu_seconds() - cpu0) * 1e6)


def rotated(sides: list[Side], run_index: int) -> list[Side]:
    k = run_index % len(sides)
    return sides[k:] + sides[:k]


# --- phases --------------------------------------------------------------------------
def disk_phase(
    base: Path, cfg: Config, wanted: set[str], example: Path, results: Results, capture: bool
) -> None:
    native = base / "native"
    mounted = base / "dpmsfs"
    ex_src, ex_mnt = base / "example-src", base / "example-mnt"
    for d in (native, mounted, ex_src, ex_mnt):
        d.mkdir()
    size, secs, warm = cfg.file_size, cfg.fio_seconds, cfg.warm_seconds
    with contextlib.ExitStack() as stack:
        store = base / "store-disk" if capture else None
        cmd = dpmsfs_cmd(mounted, store)
        pid = stack.enter_context(fuse_daemon(cmd, mounted, base / "dpmsfs.log"))
        sides = [Side("native", native), Side("dpmsfs", mounted, pid)]
        ex_side: Side | None = None
        if "rand_write" in wanted:
            ensure_file(ex_src / "data.bin", size)
            ex_pid = stack.enter_context(
                fuse_daemon(example_cmd(example, ex_src, ex_mnt), ex_mnt, base / "example.log")
            )
            ex_side = Side("example", ex_mnt, ex_pid)
        for i in range(cfg.runs):
            order = rotated(sides, i)
            for name in WORKLOADS:
                if name not in wanted or WORKLOADS[name].place != "disk":
                    continue
                targets = order + ([ex_side] if name == "rand_write" and ex_side else [])
                for side in targets:
                    f = side.path / "data.bin"
                    if name == "seq_write":
                        value = seq_write(f, size)
                    else:
                        ensure_file(f, size)
                        if name == "cold_read":
                            value = cold_read(f)
                        elif name in ("rand_read", "rand_write"):
                            drop_caches()
                            rw = "randread" if name == "rand_read" else "randwrite"
                            value = fio(f, size, rw, "4k", secs, warm=False, out_dir=base)
                        else:
                            read_all(f)  # into the page cache (both, for dpmsfs)
                            rw, bs = ("randread", "4k") if "rand" in name else ("read", "1M")
                            with pinned_in_cache(f):
                                value = fio(f, size, rw, bs, warm, warm=True, out_dir=base)
                    results.add(name, side.name, value)
                    log(f"run {i + 1}/{cfg.runs} {name:15s} {side.name:8s} {value:12.1f}")


def tmpfs_phase(
    base: Path,
    cfg: Config,
    wanted: set[str],
    example: Path,
    tarball: Path,
    results: Results,
    profile_dir: Path | None,
    capture: bool,
) -> None:
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tmpfs_mount(base / "tmpfs", "2g"))
        native, mounted = tmp / "native", tmp / "dpmsfs"
        ex_src, ex_mnt = tmp / "example-src", tmp / "example-mnt"
        for d in (native, mounted, ex_src, ex_mnt):
            d.mkdir()
        local_tar = tmp / "tree.tar"
        shutil.copyfile(tarball, local_tar)
        store = base / "store-tmpfs" if capture else None  # on disk, as in production
        cmd = dpmsfs_cmd(mounted, store)
        pid = stack.enter_context(fuse_daemon(cmd, mounted, base / "dpmsfs.log"))
        ex_pid = stack.enter_context(
            fuse_daemon(example_cmd(example, ex_src, ex_mnt), ex_mnt, base / "example.log")
        )
        sides = [
            Side("native", native),
            Side("dpmsfs", mounted, pid),
            Side("example", ex_mnt, ex_pid),
        ]
        for i in range(cfg.runs):
            for side in rotated(sides, i):
                prof = profile_dir if side.name == "dpmsfs" and i == 0 else None
                if wanted & set(META):
                    out = prof / "meta.txt" if prof else None
                    with profiled(out, side.pid):
                        meta_cycle(side, cfg.nfiles, results, wanted)
                if wanted & {"tar_x", "rm_rf"}:
                    out = prof / "tar.txt" if prof else None
                    with profiled(out, side.pid):
                        tar_cycle(side, local_tar, results, wanted)
                done = [
                    f"{w}={results.samples[w][side.name][-1]:.1f}"
                    for w in WORKLOADS
                    if WORKLOADS[w].place == "tmpfs" and side.name in results.samples.get(w, {})
                ]
                log(f"run {i + 1}/{cfg.runs} tmpfs {side.name:8s} " + " ".join(done))


# --- report --------------------------------------------------------------------------
def fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def evaluate(results: Results, wanted: set[str]) -> list[dict[str, Any]]:
    rows = []
    for row in ROWS:
        w = WORKLOADS[row.workload]
        per_side = results.samples.get(row.workload, {})
        if row.workload not in wanted or "dpmsfs" not in per_side or row.baseline not in per_side:
            continue
        base_samples, ours = per_side[row.baseline], per_side["dpmsfs"]
        base_med, our_med = statistics.median(base_samples), statistics.median(ours)
        ratio = our_med / base_med
        target_text, passed = "-", None
        if row.op == "noise":
            threshold = min(base_samples) / base_med if len(base_samples) >= 3 else 0.9
            note = "noise" if len(base_samples) >= 3 else "<3 runs"
            target_text, passed = f">= {threshold:.2f} ({note})", ratio >= threshold
        elif row.op == ">=":
            target_text, passed = f">= {row.value:g}", ratio >= row.value
        elif row.op == "<=":
            target_text, passed = f"<= {row.value:g}", ratio <= row.value
        rows.append(
            {
                "workload": row.workload,
                "label": f"{w.label} [{w.place}]",
                "unit": w.unit,
                "baseline": row.baseline,
                "baseline_median": base_med,
                "dpmsfs_median": our_med,
                "ratio": ratio,
                "target": target_text,
                "pass": passed,
                "baseline_samples": base_samples,
                "dpmsfs_samples": ours,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["workload", "unit", "baseline", "base", "dpmsfs", "ratio", "target", "result"]
    lines = [header]
    for r in rows:
        result = "-" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
        lines.append(
            [
                r["label"],
                r["unit"],
                r["baseline"],
                fmt(r["baseline_median"]),
                fmt(r["dpmsfs_median"]),
                f"{r['ratio']:.2f}",
                r["target"],
                result,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            print("-+-".join("-" * width for width in widths))


def print_cpu(results: Results) -> None:
    if not results.cpu_per_op_us:
        return
    print("\ndaemon CPU (user+sys), median; per file for create/stat/unlink, total for tar/rm:")
    for workload, per_side in results.cpu_per_op_us.items():
        unit = "us/file" if workload in META else "s"
        cells = []
        for side, values in per_side.items():
            med = statistics.median(values)
            cells.append(f"{side} {med if unit == 'us/file' else med / 1e6:.2f}")
        print(f"  {workload:8s} ({unit}): " + ", ".join(cells))


def environment(base: Path) -> dict[str, Any]:
    def out(cmd: list[str]) -> str:
        try:
            return run(cmd).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "fio": out(["fio", "--version"]),
        "pyfuse3": pyfuse3_version(),
        "git": out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "git_dirty_paths": out(["git", "-C", str(REPO), "status", "--short", "dpmsfs"]),
        "disk": out(["df", "--output=source,fstype", str(base)]).splitlines()[-1:],
        "loadavg_at_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="dpmsfs mount vs native and vs pyfuse3's passthroughfs example (issue 2)."
    )
    parser.add_argument("--runs", type=int, help="runs per workload (default: 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs (~2 min)")
    parser.add_argument(
        "--only", nargs="+", choices=list(WORKLOADS), metavar="WORKLOAD",
        help=f"run only these workloads: {', '.join(WORKLOADS)}",
    )  # fmt: skip
    parser.add_argument(
        "--capture",
        action="store_true",
        help="mount with versioning on (a store under the run's directory); default: "
        "passthrough only (dpmsfs mount --no-capture)",
    )
    parser.add_argument("--json", metavar="OUT", help="write samples and results as JSON")
    parser.add_argument("--base", default="/var/tmp", help="disk directory (default: /var/tmp)")
    parser.add_argument("--mkdataset", help="path of shared/bench/mkdataset.py")
    parser.add_argument(
        "--profile", metavar="DIR",
        help="py-spy raw stacks of the dpmsfs daemon during the tmpfs workloads of run 1 "
        "(slows that run: do not report its figures)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.runs:
        cfg = Config(args.runs, cfg.file_size, cfg.fio_seconds, cfg.warm_seconds, cfg.nfiles)
    wanted = set(args.only or WORKLOADS)
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        print("bench_mount: needs root and /dev/fuse", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    profile_dir = Path(args.profile).absolute() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    ensure_fio()
    results = Results()
    base = Path(tempfile.mkdtemp(prefix="dpmsfs-bench-", dir=args.base))
    try:
        example = fetch_example(base)
        info = environment(base)
        started = time.monotonic()
        log(f"runs={cfg.runs} file={cfg.file_size // MIB} MiB files={cfg.nfiles} in {base}")
        if os.getloadavg()[0] > 0.5:
            log(f"warning: load average {os.getloadavg()[0]:.1f}: other work skews the figures")
        if any(WORKLOADS[w].place == "disk" for w in wanted):
            disk_phase(base, cfg, wanted, example, results, args.capture)
        if any(WORKLOADS[w].place == "tmpfs" for w in wanted):
            tarball = ensure_tree_tarball(mkdataset_path(args.mkdataset))
            tmpfs_phase(base, cfg, wanted, example, tarball, results, profile_dir, args.capture)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = evaluate(results, wanted)
    mode = "with capture" if args.capture else "passthrough only"
    print(f"\ndpmsfs mount ({mode}) benchmark, {info['date']}, {cfg.runs} run(s), medians")
    print_table(rows)
    print_cpu(results)
    print(f"\n{time.monotonic() - started:.0f} s; load average at the end: {os.getloadavg()}")
    if args.json:
        report = {
            "command": " ".join(sys.argv),
            "environment": info,
            "config": cfg.__dict__,
            "rows": rows,
            "samples": results.samples,
            "daemon_cpu_per_op_us": results.cpu_per_op_us,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
