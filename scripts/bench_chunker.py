#!/usr/bin/env python3
"""Benchmark the chunker: throughput (one core, two threads) and stored bytes.

Usage:  .venv/bin/python scripts/bench_chunker.py DATA_DIR [options]

DATA_DIR holds three trees made by /work/shared/bench/mkdataset.py; missing
ones are generated (about 6.5 GB, ~1 min):

    mkdataset.py init   DATA_DIR/tool1 --size-mb 2048 --seed 42 --tool 1
    cp -a DATA_DIR/tool1 DATA_DIR/tool1-day1
    mkdataset.py mutate DATA_DIR/tool1-day1 --day 1 --seed 7
    mkdataset.py init   DATA_DIR/tool2 --size-mb 2048 --seed 42 --tool 2

All files are read once before timing so throughput is CPU, not disk.  Figures
are MB/s (10**6 bytes/s) of input, and stored sizes MiB of compressed chunk
frames (header included) deduplicated by chunk id.  The store's own metadata
(trees, index) is not counted.

Sections:
  components  each C hot loop alone on in-memory data, 1 and 2 threads: shows
              which ones release the GIL (2-thread speed-up ~2x) and which not
  baseline    read + xxh3-128 of whole read blocks (no chunking), one core
  chunk+id    iter_chunks + chunk_id over tool1, one core and two threads
  pipeline    read + chunk + id + dedup + compress of unique chunks over tool1,
              two threads, for each zstd level
  stored      stored bytes of tool1, of the day-1 changes (chunks of tool1-day1
              not in tool1) and of tool2 after tool1, per parameter set x level
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chunker import (
    DEFAULT_PARAMS,
    ChunkerParams,
    chunk_id,
    compress_chunk,
    cut_lengths,
    iter_chunks,
)
from chunker.compress import HEADER_SIZE

MKDATASET = "/work/shared/bench/mkdataset.py"
READ_SIZE = 4 << 20
MIB = 1 << 20

PARAM_SETS: dict[str, ChunkerParams] = {
    "avg512k": ChunkerParams(min_size=128 << 10, avg_size=512 << 10, max_size=2 << 20),
    "avg1m": ChunkerParams(min_size=256 << 10, avg_size=1 << 20, max_size=4 << 20),
    "avg2m": ChunkerParams(min_size=512 << 10, avg_size=2 << 20, max_size=8 << 20),
    "avg4m": ChunkerParams(min_size=1 << 20, avg_size=4 << 20, max_size=16 << 20),
    "avg256k": ChunkerParams(min_size=64 << 10, avg_size=256 << 10, max_size=1 << 20),
}

# Other tools on the same data (from the issue): initial, day-1 delta, tool 2 delta, MiB.
REFERENCES = {
    "restic": (637.0, 14.7, 316.0),
    "borg zstd,3": (598.0, 15.4, 312.0),
}


# ---------------------------------------------------------------- data set


def ensure_dataset(data_dir: Path, mkdataset: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        print("+", " ".join(args), flush=True)
        subprocess.run(args, check=True)

    py = sys.executable
    if not (data_dir / "tool1" / ".mkdataset.json").exists():
        run(py, mkdataset, "init", str(data_dir / "tool1"), "--size-mb", "2048", "--seed", "42",
            "--tool", "1")  # fmt: skip
    if not (data_dir / "tool1-day1" / ".mkdataset.json").exists():
        run("cp", "-a", str(data_dir / "tool1"), str(data_dir / "tool1-day1"))
        run(py, mkdataset, "mutate", str(data_dir / "tool1-day1"), "--day", "1", "--seed", "7")
    if not (data_dir / "tool2" / ".mkdataset.json").exists():
        run(py, mkdataset, "init", str(data_dir / "tool2"), "--size-mb", "2048", "--seed", "42",
            "--tool", "2")  # fmt: skip


def list_files(root: Path) -> list[Path]:
    """Regular files, sorted, largest first (so two threads finish together)."""
    files = [Path(d) / n for d, _, names in os.walk(root) for n in names]
    files = [f for f in files if f.is_file() and not f.is_symlink()]
    return sorted(files, key=lambda f: (-f.stat().st_size, str(f)))


def tree_bytes(files: Iterable[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def preread(files: Iterable[Path]) -> None:
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(READ_SIZE):
                pass


# ---------------------------------------------------------------- timing helpers


@dataclass(order=True)
class Timing:
    """Wall seconds, process CPU seconds (all threads), and host idle share."""

    wall: float
    cpu: float
    host_busy: float  # share of all host CPUs busy (ours + others) during the run

    @property
    def util(self) -> float:
        """CPU seconds per wall second: ~1.0 if the GIL serialises, up to n threads."""
        return self.cpu / self.wall


def _host_ticks() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def run_threads(n: int, work: Callable[[int], None]) -> Timing:
    """Run work(i) in n threads."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    busy0, total0 = _host_ticks()
    c0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    busy1, total1 = _host_ticks()
    return Timing(wall, cpu, (busy1 - busy0) / max(1, total1 - total0))


def file_queue(files: list[Path]) -> queue.SimpleQueue[Path]:
    q: queue.SimpleQueue[Path] = queue.SimpleQueue()
    for f in files:
        q.put(f)
    return q


def drain(q: queue.SimpleQueue[Path]) -> Iterable[Path]:
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


def mbps(nbytes: int, secs: float) -> float:
    return nbytes / secs / 1e6


def fmt_timing(nbytes: int, t: Timing) -> str:
    """Cells: MB/s wall | MB per CPU-second | our CPU util | CPUs used by other processes."""
    others = max(0.0, t.host_busy * (os.cpu_count() or 1) - t.util)
    return f"{mbps(nbytes, t.wall):,.0f} | {mbps(nbytes, t.cpu):,.0f} | {t.util:.2f} | {others:.2f}"


# ---------------------------------------------------------------- components


def bench_components(sample: bytes, params: ChunkerParams, repeat: int) -> list[str]:
    """Each hot loop alone on in-memory data, 1 and 2 threads, best of 3.

    The CPU-utilisation column tells GIL release apart from contention: a loop
    that holds the GIL cannot use more than ~1.0 CPU-second per second with any
    number of threads.
    """
    mv = memoryview(sample)
    cs = 1 << 20
    pieces = [mv[i : i + cs] for i in range(0, len(mv), cs)]
    zpieces = pieces[: max(1, len(pieces) // 4)]  # zstd is slow: a quarter of the sample
    zbytes = sum(len(p) for p in zpieces)

    def zstd_job(level: int) -> Callable[[int], None]:
        def job(_i: int) -> None:
            for p in zpieces:
                compress_chunk(p, level)

        return job

    def cdc_job(_i: int) -> None:
        for _ in range(4):
            cut_lengths(sample, params)

    def id_job(_i: int) -> None:
        for _ in range(16):
            for p in pieces:
                chunk_id(p)

    def oneshot_job(_i: int) -> None:
        for _ in range(16):
            for p in pieces:
                xxhash.xxh3_128_digest(p)

    jobs: list[tuple[str, Callable[[int], None], int]] = [
        ("pyfastcdc cut (`cut_lengths`)", cdc_job, 4 * len(sample)),
        ("`chunk_id` (xxh3-128 hasher)", id_job, 16 * len(sample)),
        ("xxh3_128_digest one-shot (GIL held before xxhash 4.1)", oneshot_job, 16 * len(sample)),
        *((f"`compress_chunk` level {lv}", zstd_job(lv), zbytes) for lv in (1, 2, 3)),
    ]
    lines = [
        "| hot loop (1 MiB pieces) | threads | MB/s wall | MB/CPU-s | CPU util | others' CPUs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, job, nbytes in jobs:
        job(0)  # warm up
        for n in (1, 2):
            t = min(run_threads(n, job) for _ in range(repeat))
            lines.append(f"| {name} | {n} | {fmt_timing(n * nbytes, t)} |")
    return lines


def gil_probe(op: Callable[[], object]) -> tuple[float, float]:
    """(seconds, share of its solo speed that a pure-Python thread keeps during op).

    A call that holds the GIL freezes every other Python thread for its whole
    duration (share ~0); one that releases it lets the other thread run on the
    other core (share well above 0, up to ~1 with a free core).  This does not
    depend on how busy the host is, unlike a two-thread speed-up.
    """
    count = [0]
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            for _ in range(1000):
                n += 1
            count[0] = n

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.2)
    c0, t0 = count[0], time.perf_counter()
    time.sleep(0.3)
    solo = (count[0] - c0) / (time.perf_counter() - t0)
    c0, t0 = count[0], time.perf_counter()
    op()
    secs = time.perf_counter() - t0
    during = (count[0] - c0) / secs
    stop.set()
    t.join()
    return secs, during / solo


def bench_gil(sample: bytes, params: ChunkerParams) -> list[str]:
    """Median of 5 probes per call; calls repeated to ~50 ms so that the GIL
    switch interval (set to 0.1 ms here) is small against them."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0001)
    big = sample[: 64 << 20]

    def times(n: int, fn: Callable[[], object]) -> Callable[[], None]:
        def op() -> None:
            for _ in range(n):
                fn()

        return op

    try:
        rows = [
            ("pyfastcdc cut, 4 x 64 MiB", times(4, lambda: cut_lengths(big, params))),
            ("`chunk_id` (xxh3 hasher), 16 x 64 MiB", times(16, lambda: chunk_id(big))),
            ("xxh3_128_digest, 16 x 64 MiB", times(16, lambda: xxhash.xxh3_128_digest(big))),
            ("`compress_chunk` level 3, 1 x 16 MiB", lambda: compress_chunk(big[: 16 << 20])),
        ]
        lines = [
            "| call | seconds | other Python thread's progress during the call |",
            "|---|---:|---:|",
        ]
        for name, op in rows:
            probes = sorted((gil_probe(op) for _ in range(5)), key=lambda x: x[1])
            secs, share = probes[2]
            verdict = "GIL released" if share > 0.15 else "GIL held"
            lines.append(f"| {name} | {secs:.3f} | {share:.0%} ({verdict}) |")
        return lines
    finally:
        sys.setswitchinterval(old)


# ---------------------------------------------------------------- throughput


def bench_baseline(files: list[Path]) -> Timing:
    """Plain read (readinto a reused buffer) + xxh3-128 of each 4 MiB block."""

    def work(_i: int) -> None:
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        for f in files:
            with open(f, "rb") as fh:
                while n := fh.readinto(buf):
                    chunk_id(view[:n])

    return run_threads(1, work)


def bench_chunk_id(files: list[Path], params: ChunkerParams, nthreads: int) -> Timing:
    q = file_queue(files)

    def work(_i: int) -> None:
        for f in drain(q):
            with open(f, "rb") as fh:
                for chunk in iter_chunks(fh.read, params, READ_SIZE):
                    chunk_id(chunk)

    return run_threads(nthreads, work)


_stock: threading.local = threading.local()


def frame_size(chunk: bytes, variant: str) -> int:
    """Stored size of ``chunk`` with ``variant``: "3" = compress_chunk(level 3),
    "3s" = stock zstd level 3 without our min_match tuning (same frame layout)."""
    if not variant.endswith("s"):
        return len(compress_chunk(chunk, int(variant)))
    comps = _stock.__dict__.setdefault("c", {})
    comp = comps.get(variant)
    if comp is None:
        comp = comps[variant] = zstandard.ZstdCompressor(
            level=int(variant[:-1]), write_checksum=True
        )
    return HEADER_SIZE + min(len(chunk), len(comp.compress(chunk)))


@dataclass
class StoreResult:
    timing: Timing = field(default_factory=lambda: Timing(0.0, 0.0, 0.0))
    input_bytes: int = 0
    chunks: int = 0
    new_chunks: int = 0
    new_raw_bytes: int = 0
    stored: dict[str, int] = field(default_factory=dict)  # zstd variant -> stored bytes
    ids: set[bytes] = field(default_factory=set)


def store_tree(
    files: list[Path],
    params: ChunkerParams,
    variants: list[str],
    nthreads: int,
    known: set[bytes] | frozenset[bytes] = frozenset(),
) -> StoreResult:
    """Chunk, id and dedup a tree against ``known``; compress new chunks per variant.

    With one variant this is the real backup pipeline; several compress each new
    chunk several times (for the stored-size table, not for throughput).
    """
    q = file_queue(files)
    lock = threading.Lock()
    seen: set[bytes] = set()
    per_thread = [StoreResult() for _ in range(nthreads)]

    def work(i: int) -> None:
        mine = per_thread[i]
        mine.stored = dict.fromkeys(variants, 0)
        for f in drain(q):
            with open(f, "rb") as fh:
                for chunk in iter_chunks(fh.read, params, READ_SIZE):
                    cid = chunk_id(chunk)
                    mine.chunks += 1
                    mine.input_bytes += len(chunk)
                    with lock:
                        new = cid not in seen and cid not in known
                        if new:
                            seen.add(cid)
                    if new:
                        mine.new_chunks += 1
                        mine.new_raw_bytes += len(chunk)
                        for v in variants:
                            mine.stored[v] += frame_size(chunk, v)

    res = StoreResult(timing=run_threads(nthreads, work))
    for p in per_thread:
        res.input_bytes += p.input_bytes
        res.chunks += p.chunks
        res.new_chunks += p.new_chunks
        res.new_raw_bytes += p.new_raw_bytes
        for v, n in p.stored.items():
            res.stored[v] = res.stored.get(v, 0) + n
    res.ids = seen | set(known)
    return res


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--mkdataset", default=MKDATASET)
    ap.add_argument("--params", default="avg1m,avg2m,avg4m", help="parameter sets for 'stored'")
    ap.add_argument("--levels", default="1,2,3", help="zstd levels for the pipeline section")
    ap.add_argument("--variants", default="1,2,3,3s", help="zstd variants for 'stored' "
                    "(N = compress_chunk level N, Ns = stock zstd level N)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="best of N for throughput runs")
    ap.add_argument("--skip", default="", help="comma list: components,throughput,stored")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    variants = args.variants.split(",")
    skip = set(args.skip.split(",")) if args.skip else set()

    ensure_dataset(args.data_dir, args.mkdataset)
    tool1 = list_files(args.data_dir / "tool1")
    day1 = list_files(args.data_dir / "tool1-day1")
    tool2 = list_files(args.data_dir / "tool2")
    size1 = tree_bytes(tool1)
    print(f"# chunker benchmark on {args.data_dir}  ({time.strftime('%Y-%m-%d %H:%M')})")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    print(
        f"tool1 {len(tool1)} files {size1 / MIB:,.1f} MiB; "
        f"tool1-day1 {tree_bytes(day1) / MIB:,.1f} MiB; tool2 {tree_bytes(tool2) / MIB:,.1f} MiB"
    )
    print(f"default params: {DEFAULT_PARAMS.identity}\n", flush=True)

    t0 = time.perf_counter()
    preread(tool1 + day1 + tool2)
    print(f"pre-read all trees into the page cache: {time.perf_counter() - t0:.1f} s\n")
    cols = "MB/s wall | MB/CPU-s | CPU util | others' CPUs"
    ruler = "---:|---:|---:|---:"

    if "components" not in skip:
        biggest = tool1[0]
        with open(biggest, "rb") as fh:
            sample = fh.read(256 << 20)
        print(f"## components ({len(sample) / MIB:.0f} MiB of {biggest.name}, in memory)\n")
        print("### GIL release probe\n")
        print("\n".join(bench_gil(sample, DEFAULT_PARAMS)), "\n", flush=True)
        print("### each hot loop alone, 1 and 2 threads\n")
        print("\n".join(bench_components(sample, DEFAULT_PARAMS, args.repeat)), "\n", flush=True)

    if "throughput" not in skip:
        print("## throughput over tool1 (page cache), default params\n")
        print(f"| what | threads | {cols} |")
        print(f"|---|---:|{ruler}|")
        bench_baseline(tool1)  # warm-up
        base = min(bench_baseline(tool1) for _ in range(args.repeat))
        print(f"| baseline: read + xxh3-128 per 4 MiB block | 1 | {fmt_timing(size1, base)} |")
        for n in sorted({1, args.threads}):
            t = min(bench_chunk_id(tool1, DEFAULT_PARAMS, n) for _ in range(args.repeat))
            print(f"| read + chunk + id | {n} | {fmt_timing(size1, t)} |", flush=True)
        for level in levels:
            for n in sorted({1, args.threads}):
                runs = [
                    store_tree(tool1, DEFAULT_PARAMS, [str(level)], n) for _ in range(args.repeat)
                ]
                r = min(runs, key=lambda x: x.timing)
                print(f"| read + chunk + id + dedup + `compress_chunk` level {level} "
                      f"(stored {r.stored[str(level)] / MIB:,.1f} MiB) | {n} "
                      f"| {fmt_timing(size1, r.timing)} |", flush=True)  # fmt: skip
        print()

    if "stored" not in skip:
        print(f"## stored MiB (compressed frames, dedup by chunk id), {args.threads} threads\n")
        refs = " | ".join(
            f"{k}: {a:.0f} / +{b:.1f} / +{c:.0f}" for k, (a, b, c) in REFERENCES.items()
        )
        print(f"targets (initial / day-1 / tool2): {refs}\n")
        print("| params | zstd | tool1 initial | tool1 day-1 delta | tool2 after tool1 "
              "| chunks (tool1) | mean chunk KiB (files > max) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in args.params.split(","):
            params = PARAM_SETS[name]
            r1 = store_tree(tool1, params, variants, args.threads)
            rd = store_tree(day1, params, variants, args.threads, known=r1.ids)
            r2 = store_tree(tool2, params, variants, args.threads, known=r1.ids)
            big = [f for f in tool1 if f.stat().st_size > params.max_size]
            nbig = 0
            for f in big:
                with open(f, "rb") as fh:
                    nbig += sum(1 for _ in iter_chunks(fh.read, params))
            mean_big = tree_bytes(big) / max(1, nbig) / 1024
            for v in variants:
                print(f"| {name} `{params.identity}` | {v} | {r1.stored[v] / MIB:,.1f} "
                      f"| +{rd.stored[v] / MIB:,.1f} | +{r2.stored[v] / MIB:,.1f} "
                      f"| {r1.chunks} | {mean_big:,.0f} |", flush=True)  # fmt: skip
            print(f"|   {name} unique, uncompressed | - | {r1.new_raw_bytes / MIB:,.1f} "
                  f"| +{rd.new_raw_bytes / MIB:,.1f} | +{r2.new_raw_bytes / MIB:,.1f} | | |",
                  flush=True)  # fmt: skip
        print()
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
