#!/usr/bin/env python3
"""Browse and restore benchmark (issue 5): dpmsfs next to restic and borg, in one run.

Measures, on an mkdataset tree (/work/shared/bench/mkdataset.py):

* listing `.snapshots/` holding N snapshots (target <= 0.5 s);
* listing a 10,000-entry directory inside a snapshot (target <= 0.5 s);
* `cat` of a 1 GiB file from a snapshot, cold and warm (target >= 300 MB/s), next to
  `restic dump` and `borg extract --stdout` of the same file;
* `ls -R` of a whole snapshot, next to `restic mount` and `borg mount`;
* a full restore with `dpmsfs restore --to` (target >= 1.3x restic's speed) next to
  `restic restore` and `borg extract`, and of one small file (target <= 0.1 s).

"Cold" runs drop the page cache first (echo 3 > /proc/sys/vm/drop_caches), so store
and repository reads come from disk. Each figure is the median of --runs runs (peer
restores run min(--runs, 2) times: they are the slow part). Needs root and /dev/fuse;
installs restic and borgbackup with apt-get if they are missing (--no-peers skips them).

Example (the figures in docs/benchmarks.md):
    .venv/bin/python scripts/bench_restore.py --base /tmp/bench5 --size-mb 2200
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
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dpmsfs import control, mountinfo  # noqa: E402
from dpmsfs.config import Config  # noqa: E402

MKDATASET = Path("/work/shared/bench/mkdataset.py")
PASSWORD = "bench-restore"
EXTRA = "zz-bench-extra"  # added after the first snapshot: the big file and the big dir


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload,no-any-return]


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(runs: int, fn: Callable[[], object], before: Callable[[], None] | None) -> float:
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        times.append(timed(fn))
    return statistics.median(times)


def ensure_peers() -> None:
    missing = [pkg for tool, pkg in (("restic", "restic"), ("borg", "borgbackup"))
               if shutil.which(tool) is None]  # fmt: skip
    if missing:
        log(f"installing {' '.join(missing)} with apt-get")
        run(["apt-get", "install", "-y", *missing], stdout=subprocess.DEVNULL)


def dir_bytes(root: Path) -> int:
    total = 0
    for base, _, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(base, name)).st_size
    return total


# --- dpmsfs --------------------------------------------------------------------------


class Dpmsfs:
    def __init__(self, work: Path, store: Path, log_path: Path) -> None:
        self.work, self.store = work, store
        self.socket = Config(workdir=work, store=store).control_socket
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dpmsfs.cli.main", "mount", "--foreground",
             "--store", str(store), str(work)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (
            mountinfo.is_dpmsfs_mount(work)
            and mountinfo.is_dpmsfs_mount(work / ".snapshots", mountinfo.VIEW_FSTYPE)
        ):
            # Both: the work directory's mount and the snapshot view's own.
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dpmsfs mount failed, see {log_path}")
            time.sleep(0.05)

    def snapshot(self, label: str = "") -> str:
        reply = control.call(self.socket, {"cmd": "snapshot", "label": label}, timeout=None)
        return str(reply["snapshot"])

    def cli(self, *args: str) -> None:
        run([sys.executable, "-m", "dpmsfs.cli.main", *args], cwd=REPO,
            stdout=subprocess.DEVNULL)  # fmt: skip

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.work)], check=False,
                       capture_output=True)  # fmt: skip
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextmanager
def fuse_process(cmd: list[str], mountpoint: Path, ready: Path, env: dict[str, str]
                 ) -> Iterator[None]:  # fmt: skip
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} mount failed")
            time.sleep(0.1)
        yield
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False,
                       capture_output=True)  # fmt: skip
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the benchmark --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", type=Path, default=Path("/tmp/bench-restore"),
                        help="scratch directory (the dataset is kept in BASE/data)")  # fmt: skip
    parser.add_argument("--size-mb", type=int, default=2200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--snapshots", type=int, default=1000, help="snapshots to list")
    parser.add_argument("--big-mb", type=int, default=1024, help="size of the file to cat")
    parser.add_argument("--entries", type=int, default=10_000, help="entries of the big dir")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="skip restic and borg")
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
    shutil.rmtree(data / EXTRA, ignore_errors=True)
    for leftover in ("store", "restic", "borg", "extra-src", "mnt", "out"):
        shutil.rmtree(base / leftover, ignore_errors=True)
    tree_bytes = dir_bytes(data)
    tree_files = sum(len(files) for _, _, files in os.walk(data))
    results: dict[str, float] = {}

    # The extras: a big file and a big directory, made outside and copied in later.
    extra_src = base / "extra-src"
    (extra_src / "many").mkdir(parents=True)
    for i in range(args.entries):
        (extra_src / "many" / f"entry{i:05d}.csv").write_bytes(b"x" * (i % 97))
    with open(extra_src / "big.bin", "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(args.big_mb):
            f.write(i.to_bytes(8, "big") + block[8:])  # incompressible, no two alike
    big_bytes = args.big_mb << 20

    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, BORG_PASSPHRASE="",
               BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")  # fmt: skip
    restic_repo, borg_repo = base / "restic", base / "borg"
    if peers:
        log("restic and borg: backing up the dataset and the extras")
        run(["restic", "-r", str(restic_repo), "init", "-q"], env=env)
        run(["restic", "-r", str(restic_repo), "backup", "-q", "--tag", "data", str(data)],
            env=env)  # fmt: skip
        run(["restic", "-r", str(restic_repo), "backup", "-q", "--tag", "extra",
             str(extra_src)], env=env)  # fmt: skip
        run(["borg", "init", "-e", "none", str(borg_repo)], env=env)
        run(["borg", "create", f"{borg_repo}::data", str(data)], env=env)
        run(["borg", "create", f"{borg_repo}::extra", str(extra_src)], env=env)

    store = base / "store"
    out = base / "out"
    with ExitStack() as stack:
        log("dpmsfs: mounting, importing the dataset (first snapshot)")
        fs = Dpmsfs(data, store, base / "dpmsfs.log")
        stack.callback(fs.stop)
        snap_data = fs.snapshot("data")
        run(["cp", "-a", str(extra_src), str(data / EXTRA)])
        snap_extra = fs.snapshot("extra")
        log(f"dpmsfs: taking {args.snapshots - 2} more snapshots through the control socket")
        start = time.perf_counter()
        for _ in range(args.snapshots - 2):
            fs.snapshot()
        per_snapshot = (time.perf_counter() - start) / max(1, args.snapshots - 2)
        results["snapshot_create_s"] = per_snapshot
        snaps = data / ".snapshots"

        def ls(path: Path, *opts: str) -> Callable[[], object]:
            return lambda: run(["ls", *opts, str(path)], stdout=subprocess.DEVNULL)

        log("listing .snapshots and a big directory")
        results["list_snapshots_cold_s"] = median_of(args.runs, ls(snaps, "-l"), drop_caches)
        results["list_snapshots_warm_s"] = median_of(args.runs, ls(snaps, "-l"), None)
        many = snaps / snap_extra / EXTRA / "many"
        results["list_bigdir_cold_s"] = median_of(args.runs, ls(many, "-l"), drop_caches)
        results["list_bigdir_warm_s"] = median_of(args.runs, ls(many, "-l"), None)

        log("cat of the big file")
        big = snaps / snap_extra / EXTRA / "big.bin"
        cat = lambda: run(["cat", str(big)], stdout=subprocess.DEVNULL)  # noqa: E731
        results["cat_cold_MBps"] = big_bytes / 1e6 / median_of(args.runs, cat, drop_caches)
        results["cat_warm_MBps"] = big_bytes / 1e6 / median_of(args.runs, cat, None)
        native = lambda: run(["cat", str(extra_src / "big.bin")], stdout=subprocess.DEVNULL)  # noqa: E731
        results["native_cat_cold_MBps"] = (
            big_bytes / 1e6 / median_of(args.runs, native, drop_caches)
        )  # the disk itself, same file, same run: what a cold cat can reach at most
        if peers:
            dump = ["restic", "-r", str(restic_repo), "dump", "--tag", "extra", "latest",
                    str(extra_src / "big.bin")]  # fmt: skip
            results["restic_cat_cold_MBps"] = (
                big_bytes
                / 1e6
                / median_of(
                    args.runs, lambda: run(dump, env=env, stdout=subprocess.DEVNULL), drop_caches
                )
            )
            extract = ["borg", "extract", "--stdout", f"{borg_repo}::extra",
                       str(extra_src / "big.bin").lstrip("/")]  # fmt: skip
            results["borg_cat_cold_MBps"] = (
                big_bytes
                / 1e6
                / median_of(
                    args.runs, lambda: run(extract, env=env, stdout=subprocess.DEVNULL), drop_caches
                )
            )

        log("ls -R of a whole snapshot")
        results["lsR_cold_s"] = median_of(args.runs, ls(snaps / snap_data, "-R"), drop_caches)
        results["lsR_warm_s"] = median_of(args.runs, ls(snaps / snap_data, "-R"), None)
        if peers:
            mnt = base / "mnt"
            restic_mnt, borg_mnt = mnt / "restic", mnt / "borg"
            with fuse_process(["restic", "-r", str(restic_repo), "mount", str(restic_mnt)],
                              restic_mnt, restic_mnt / "snapshots", env):  # fmt: skip
                deadline = time.monotonic() + 30
                while not (restic_mnt / "tags" / "extra").exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                tagged = restic_mnt / "tags" / "data"
                target = next(tagged.iterdir()) / str(data).lstrip("/")
                results["restic_lsR_cold_s"] = median_of(
                    1, ls(target, "-R"), drop_caches
                )  # restic caches inside the mount: only the first run is cold
                results["restic_lsR_warm_s"] = median_of(args.runs, ls(target, "-R"), None)
                extra_snap = next((restic_mnt / "tags" / "extra").iterdir())
                peer_many = extra_snap / str(extra_src).lstrip("/") / "many"
                results["restic_list_bigdir_cold_s"] = median_of(1, ls(peer_many, "-l"),
                                                                 drop_caches)  # fmt: skip
                results["restic_list_bigdir_warm_s"] = median_of(args.runs, ls(peer_many, "-l"),
                                                                 None)  # fmt: skip
            with fuse_process(["borg", "mount", "-f", str(borg_repo), str(borg_mnt)],
                              borg_mnt, borg_mnt / "extra", env):  # fmt: skip
                target = borg_mnt / "data" / str(data).lstrip("/")
                results["borg_lsR_warm_s"] = median_of(args.runs, ls(target, "-R"), None)
                peer_many = borg_mnt / "extra" / str(extra_src).lstrip("/") / "many"
                results["borg_list_bigdir_warm_s"] = median_of(args.runs, ls(peer_many, "-l"),
                                                               None)  # fmt: skip

        log("ls -l of the big directory with the view unmounted (the daemon's own fallback)")
        run(["fusermount3", "-u", str(snaps)])
        deadline = time.monotonic() + 30
        while mountinfo.is_dpmsfs_mount(snaps, mountinfo.VIEW_FSTYPE):
            if time.monotonic() > deadline:
                raise RuntimeError("the snapshot view did not unmount")
            time.sleep(0.05)
        results["list_bigdir_fallback_cold_s"] = median_of(args.runs, ls(many, "-l"), drop_caches)
        results["list_bigdir_fallback_warm_s"] = median_of(args.runs, ls(many, "-l"), None)

        def fresh_out() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            drop_caches()

        log("full restore")
        small = next(p for p in sorted((data / "pgm").rglob("*")) if p.is_file())
        small_rel = str(small.relative_to(data))

        def ours(*paths: str) -> None:
            fs.cli("restore", str(data), "--store", str(store), "--snapshot", snap_data,
                   *paths, "--to", str(out))  # fmt: skip

        def restic_restore(*include: str) -> None:
            extra = [arg for path in include for arg in ("--include", path)]
            run(["restic", "-r", str(restic_repo), "restore", "-q", "--tag", "data", "latest",
                 "--target", str(out), *extra], env=env)  # fmt: skip

        def borg_extract(*paths: str) -> None:
            run(["borg", "extract", f"{borg_repo}::data", *paths], env=env, cwd=out)

        # Full restores in rounds (dpmsfs, restic, borg, then again): this disk's speed
        # drifts by 2x within minutes, so each round's ratio compares like with like;
        # the ratio reported is the median of the rounds' ratios.
        full: dict[str, list[float]] = {"dpmsfs": [], "restic": [], "borg": []}
        for _ in range(args.runs):
            fresh_out()
            full["dpmsfs"].append(timed(ours))
            if dir_bytes(out) != tree_bytes:
                raise RuntimeError("dpmsfs restored a different number of bytes")
            if peers:
                fresh_out()
                full["restic"].append(timed(restic_restore))
                fresh_out()
                full["borg"].append(timed(borg_extract))
        results["restore_full_s"] = statistics.median(full["dpmsfs"])
        results["restore_small_s"] = median_of(args.runs, lambda: ours(small_rel), fresh_out)
        if peers:
            for peer in ("restic", "borg"):
                results[f"{peer}_restore_full_s"] = statistics.median(full[peer])
                results[f"{peer}_restore_full_ratio"] = statistics.median(
                    theirs / mine for mine, theirs in zip(full["dpmsfs"], full[peer], strict=True)
                )
            results["restic_restore_small_s"] = median_of(
                args.runs, lambda: restic_restore(str(small)), fresh_out
            )
            results["borg_restore_small_s"] = median_of(
                args.runs, lambda: borg_extract(str(small).lstrip("/")), fresh_out
            )
        shutil.rmtree(out, ignore_errors=True)

    results["tree_MB"] = tree_bytes / 1e6
    results["tree_files"] = tree_files
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print_table(results, args, peers)
    return 0


def print_table(r: dict[str, float], args: argparse.Namespace, peers: bool) -> None:
    def ratio(ours: float, theirs: str, higher_is_better: bool) -> str:
        if theirs not in r:
            return "-"
        value = ours / r[theirs] if higher_is_better else r[theirs] / ours
        return f"{value:.2f}x"

    mb = r["tree_MB"]
    rows = [
        (f"list .snapshots ({args.snapshots} snapshots), cold / warm",
         f"{r['list_snapshots_cold_s']:.3f} s / {r['list_snapshots_warm_s']:.3f} s",
         "<= 0.5 s", "-", "-", "-"),
        (f"list a {args.entries}-entry dir in a snapshot (ls -l), cold / warm",
         f"{r['list_bigdir_cold_s']:.3f} s / {r['list_bigdir_warm_s']:.3f} s",
         "<= 0.5 s",
         f"{r.get('restic_list_bigdir_cold_s', 0):.2f} s / "
         f"{r.get('restic_list_bigdir_warm_s', 0):.2f} s",
         f"- / {r.get('borg_list_bigdir_warm_s', 0):.2f} s",
         f"{ratio(r['list_bigdir_warm_s'], 'restic_list_bigdir_warm_s', False)} / "
         f"{ratio(r['list_bigdir_warm_s'], 'borg_list_bigdir_warm_s', False)} (warm)"),
        ("  same, view unmounted (served by the work directory's mount), cold / warm",
         f"{r['list_bigdir_fallback_cold_s']:.3f} s / {r['list_bigdir_fallback_warm_s']:.3f} s",
         "-", "-", "-", "-"),
        (f"cat {args.big_mb} MiB file, cold",
         f"{r['cat_cold_MBps']:.0f} MB/s", ">= 300 MB/s",
         f"{r.get('restic_cat_cold_MBps', 0):.0f} MB/s (dump)",
         f"{r.get('borg_cat_cold_MBps', 0):.0f} MB/s (extract --stdout)",
         f"{ratio(r['cat_cold_MBps'], 'restic_cat_cold_MBps', True)} / "
         f"{ratio(r['cat_cold_MBps'], 'borg_cat_cold_MBps', True)}"),
        (f"cat {args.big_mb} MiB file, warm", f"{r['cat_warm_MBps']:.0f} MB/s",
         ">= 300 MB/s", "-", "-", "-"),
        ("  the same file from the native disk, cold (baseline)",
         f"{r['native_cat_cold_MBps']:.0f} MB/s "
         f"(dpmsfs cold = {r['cat_cold_MBps'] / r['native_cat_cold_MBps']:.2f}x of it)",
         "-", "-", "-", "-"),
        (f"ls -R of a snapshot ({mb:.0f} MB, {r['tree_files']:.0f} files), cold / warm",
         f"{r['lsR_cold_s']:.2f} s / {r['lsR_warm_s']:.2f} s", "-",
         f"{r.get('restic_lsR_cold_s', 0):.2f} s / {r.get('restic_lsR_warm_s', 0):.2f} s",
         f"- / {r.get('borg_lsR_warm_s', 0):.2f} s",
         f"{ratio(r['lsR_warm_s'], 'restic_lsR_warm_s', False)} / "
         f"{ratio(r['lsR_warm_s'], 'borg_lsR_warm_s', False)} (warm)"),
        (f"full restore --to ({mb:.0f} MB)",
         f"{r['restore_full_s']:.1f} s ({mb / r['restore_full_s']:.0f} MB/s)",
         ">= 1.3x restic",
         f"{r.get('restic_restore_full_s', 0):.1f} s", f"{r.get('borg_restore_full_s', 0):.1f} s",
         f"{r.get('restic_restore_full_ratio', 0):.2f}x / "
         f"{r.get('borg_restore_full_ratio', 0):.2f}x (median of per-round ratios)"),
        ("restore one small file --to", f"{r['restore_small_s']:.2f} s", "<= 0.1 s",
         f"{r.get('restic_restore_small_s', 0):.2f} s",
         f"{r.get('borg_restore_small_s', 0):.2f} s",
         f"{ratio(r['restore_small_s'], 'restic_restore_small_s', False)} / "
         f"{ratio(r['restore_small_s'], 'borg_restore_small_s', False)}"),
    ]  # fmt: skip
    print("| measurement | dpmsfs | target | restic | borg | dpmsfs speed vs restic / borg |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nsnapshot creation (control socket, no changes): {r['snapshot_create_s'] * 1000:.0f} "
          f"ms each; peers {'measured' if peers else 'skipped'}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
