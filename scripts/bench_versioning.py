#!/usr/bin/env python3
"""Versioning benchmark (issue 4): dpmsfs against restic and borg on the same data.

Usage:  .venv/bin/python scripts/bench_versioning.py [options]

Data comes from /work/shared/bench/mkdataset.py (`init --seed 42 --tool 1`), made once
under --workdir-base and reused; every run works on fresh copies of it, with fresh
stores / repositories.

Workloads (`--only` picks some; `--million` adds the last one):
  import       first import of the tree.  dpmsfs: mount (with a fresh `--store`) over a
               copy of the tree, time until `dpmsfs snapshot` returns (import scan +
               ingest + snapshot).  restic: first `restic backup` (compression auto).
               borg: first `borg create --compression zstd,3` (encryption none).
               Stored size = `du -sb` of the store / repository.
  noop         a snapshot with nothing changed: `dpmsfs snapshot` (CLI, so Python
               start-up included, and the daemon's own time over its control socket);
               the peers' second backup.
  incremental  `mkdataset.py mutate --day 1 --seed 7`, through the mount for dpmsfs (so
               the journal sees it), natively on the peers' copy; then time to captured
               + snapshotted (`dpmsfs snapshot`) / the peers' next backup, and the bytes
               the store / repository grew by.
  latency      FUSE latency while ingest runs: create (small files), stat (the pgm/
               tree) and tar (pgm/ to a pipe) through a mount whose first import of the
               tree is running, then the same once it is done (idle).
  million      --million: 1,000 dirs x 1,000 files of a few bytes on disk (not tmpfs);
               dpmsfs import (with the daemon's RssAnon sampled during and after), a
               no-op snapshot, then 100 files changed through the mount and a snapshot;
               restic's initial backup and backup after the same 100 changes.

Page cache: /proc/sys/vm/drop_caches is not writable in every container, so before each
timed import / incremental the data files of the tree are evicted with
posix_fadvise(DONTNEED) (dentries and inodes stay cached); --no-evict keeps them warm.

The dpmsfs daemon runs in the foreground as a child (`dpmsfs mount --foreground`), its
log kept under the run directory; lines with WARNING / ERROR / Traceback are reported.
Every mount is removed with `fusermount3 -u -z` in a finally block, temp dirs too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MKDATASET = "/work/shared/bench/mkdataset.py"
SEED = 42
MUTATE_SEED = 7
MB = 10**6
MIB = 1 << 20
MOUNT_TIMEOUT = 60.0
PASSWORD = "bench-versioning"
WORKLOADS = ("import", "noop", "incremental", "latency")
TOOLS = ("dpmsfs", "restic", "borg")
NOOP_REPEAT = 5
LATENCY_CREATE_FILES = 2000
LATENCY_STAT_PASSES = 3


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# --- environment ----------------------------------------------------------------------


def ensure_peers() -> dict[str, str]:
    """Install restic and borg with apt-get if missing; return their versions."""
    missing = [pkg for cmd, pkg in (("restic", "restic"), ("borg", "borgbackup"))
               if shutil.which(cmd) is None]  # fmt: skip
    if missing:
        log(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    versions = {}
    for cmd in (["restic", "version"], ["borg", "--version"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        versions[cmd[0]] = out.strip().splitlines()[0]
    return versions


def run_text(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def code_state() -> dict[str, Any]:
    """The commit measured, and uncommitted changes to the code the daemon runs."""
    git = ["git", "-C", str(ROOT)]
    head = run_text([*git, "rev-parse", "--short", "HEAD"]).strip()
    dirty = run_text([*git, "status", "--porcelain", "--", "dpmsfs", "chunker"]).splitlines()
    return {"head": head, "uncommitted": [line.strip() for line in dirty if line.strip()]}


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def tree_bytes(path: Path) -> tuple[int, int]:
    """(regular files, their bytes) under path."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_mode & 0o170000 == 0o100000:
                files += 1
                total += st.st_size
    return files, total


def evict(path: Path) -> None:
    """Drop the page cache of every regular file under path (clean pages only)."""
    os.sync()  # the previous tool's writes must not be flushed during the next timing
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def copy_tree(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    subprocess.run(["sync"], check=True)


def dataset(base: Path, size_mb: int) -> Path:
    path = base / f"dataset-{size_mb}mb-seed{SEED}"
    if not (path / ".mkdataset.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        log(f"generating {path} ({size_mb} MB)")
        jobs = str(os.cpu_count() or 2)
        cmd = [sys.executable, MKDATASET, "init", str(path), "--size-mb", str(size_mb),
               "--seed", str(SEED), "--tool", "1", "--jobs", jobs]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return path


def mutate(path: Path) -> float:
    start = time.monotonic()
    cmd = [sys.executable, MKDATASET, "mutate", str(path), "--day", "1", "--seed", str(MUTATE_SEED)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def timed(cmd: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    result = subprocess.run(list(cmd), capture_output=True, text=True, env=env, check=False)
    elapsed = time.monotonic() - start
    ok = (0, 1) if cmd[0] == "borg" else (0,)  # borg: 1 = warnings (e.g. a file changed)
    if result.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


def rss_anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples a process's RssAnon every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            kb = rss_anon_kb(self.pid)
            self.samples.append((time.monotonic() - start, kb))
            self.peak_kb = max(self.peak_kb, kb)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- dpmsfs -----------------------------------------------------------------------------


class Dpmsfs:
    """`dpmsfs mount --foreground --store STORE WORK` as a child process."""

    def __init__(self, work: Path, store: Path, log_path: Path) -> None:
        from dpmsfs import mountinfo
        from dpmsfs.config import Config

        self.work = work.resolve()
        self.store = store
        self.log_path = log_path
        self.socket = Config(workdir=self.work, store=store).control_socket
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "dpmsfs.cli.main", "--log-level", "INFO", "mount",
               "--foreground", "--store", str(store), str(self.work)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        try:
            while not mountinfo.is_dpmsfs_mount(self.work):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"dpmsfs exited: {self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not mounted after {MOUNT_TIMEOUT} s: {self.log_tail()}")
                time.sleep(0.01)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "dpmsfs.cli.main", *args, str(self.work),
               "--store", str(self.store)]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    def snapshot_cli(self) -> tuple[float, str]:
        start = time.monotonic()
        result = self.cli("snapshot")
        elapsed = time.monotonic() - start
        if result.returncode != 0:
            raise RuntimeError(f"dpmsfs snapshot failed: {result.stderr}\n{self.log_tail()}")
        return elapsed, result.stdout.strip()

    def snapshot_socket(self) -> tuple[float, str]:
        """The daemon's own time for a snapshot (no CLI start-up)."""
        from dpmsfs import control

        start = time.monotonic()
        reply = control.call(self.socket, {"cmd": "snapshot", "label": ""}, timeout=None)
        return time.monotonic() - start, str(reply["snapshot"])

    def status(self) -> dict[str, Any]:
        from dpmsfs import control

        reply = control.call(self.socket, {"cmd": "status"}, timeout=60)
        return dict(reply["status"])

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.work)], capture_output=True,
                       check=False)  # fmt: skip
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def problems(self) -> list[str]:
        text = self.log_path.read_text(errors="replace")
        keys = ("WARNING", "ERROR", "Traceback", "CRITICAL")
        return [line for line in text.splitlines() if any(k in line for k in keys)]


@contextmanager
def mounted(work: Path, store: Path, log_path: Path) -> Iterator[Dpmsfs]:
    mount = Dpmsfs(work, store, log_path)
    try:
        yield mount
    finally:
        mount.stop()


def snapshot_entries(store: Path, name: str) -> tuple[int, int]:
    """(regular files, their bytes) in a snapshot, read back from the store."""
    from dpmsfs.browse.reader import SnapshotReader
    from dpmsfs.store.store import Store
    from dpmsfs.store.tree import EntryType

    files = total = 0
    with Store.open(str(store), readonly=True) as opened:
        reader = SnapshotReader(opened)
        record = reader.snapshot(name)
        for _path, entry in reader.walk(record.root_tree_id):
            if entry.type == EntryType.FILE:
                files += 1
                total += entry.size
    return files, total


def expected_files(work: Path) -> tuple[int, int]:
    """What a snapshot of `work` should hold: regular files not excluded by default."""
    from dpmsfs.config import DEFAULT_EXCLUDES, is_excluded

    files = total = 0
    for dirpath, dirs, names in os.walk(work):
        dirs[:] = [d for d in dirs if not is_excluded(os.fsencode(d), DEFAULT_EXCLUDES)]
        for name in names:
            if is_excluded(os.fsencode(name), DEFAULT_EXCLUDES):
                continue
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_mode & 0o170000 == 0o100000:
                files += 1
                total += st.st_size
    return files, total


# --- peers ------------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    repo: Path
    home: Path
    counter: int = 0

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "RESTIC_PASSWORD": PASSWORD, "BORG_BASE_DIR": str(self.home),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}  # fmt: skip

    def init(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.name == "restic":
            cmd = ["restic", "init", "--repo", str(self.repo), "--cache-dir",
                   str(self.home / "cache")]  # fmt: skip
        else:
            cmd = ["borg", "init", "--encryption", "none", str(self.repo)]
        subprocess.run(cmd, check=True, capture_output=True, env=self.env)

    def backup(self, tree: Path) -> float:
        self.counter += 1
        if self.name == "restic":
            cmd = ["restic", "backup", "--repo", str(self.repo), "--cache-dir",
                   str(self.home / "cache"), "--compression", "auto", "-q", str(tree)]  # fmt: skip
        else:
            cmd = ["borg", "create", "--compression", "zstd,3",
                   f"{self.repo}::b{self.counter}", str(tree)]  # fmt: skip
        return timed(cmd, self.env)

    def size(self) -> int:
        return du_bytes(self.repo)


# --- workloads --------------------------------------------------------------------------


@dataclass
class RunResult:
    figures: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, tool: str, key: str, value: float) -> None:
        self.figures.setdefault(tool, {})[key] = value


def run_dpmsfs(
    run_dir: Path, data: Path, workloads: set[str], do_evict: bool, result: RunResult
) -> None:
    work = run_dir / "dpmsfs" / "work"
    store = run_dir / "dpmsfs" / "store"
    work.parent.mkdir(parents=True)
    copy_tree(data, work)
    files, nbytes = expected_files(work)
    if do_evict:
        evict(work)
    log("dpmsfs: import")
    start = time.monotonic()
    with mounted(work, store, run_dir / "dpmsfs" / "mount.log") as mount:
        sampler = RssSampler(mount.pid)
        try:
            _, name = mount.snapshot_cli()
            elapsed = time.monotonic() - start
        finally:
            sampler.stop()
        result.put("dpmsfs", "import_s", elapsed)
        result.put("dpmsfs", "import_MBps", nbytes / MB / elapsed)
        result.put("dpmsfs", "import_rss_anon_peak_MiB", sampler.peak_kb / 1024)
        result.put("dpmsfs", "stored_bytes", du_bytes(store))
        got = snapshot_entries(store, name)
        if got != (files, nbytes):
            result.notes.append(
                f"dpmsfs: first snapshot {name} holds {got[0]} files / {got[1]} bytes, "
                f"the tree {files} / {nbytes}"
            )
        if "noop" in workloads:
            log("dpmsfs: no-op snapshots")
            cli = [mount.snapshot_cli()[0] for _ in range(NOOP_REPEAT)]
            sock = [mount.snapshot_socket()[0] for _ in range(NOOP_REPEAT)]
            result.put("dpmsfs", "noop_s", statistics.median(cli))
            result.put("dpmsfs", "noop_daemon_s", statistics.median(sock))
        if "incremental" in workloads:
            log("dpmsfs: mutate through the mount")
            before = du_bytes(store)
            result.put("dpmsfs", "mutate_through_mount_s", mutate(work))
            if do_evict:
                evict(work)
            elapsed, name = mount.snapshot_cli()
            result.put("dpmsfs", "incremental_s", elapsed)
            result.put("dpmsfs", "incremental_added_bytes", du_bytes(store) - before)
            expected = expected_files(work)
            got = snapshot_entries(store, name)
            if got != expected:
                result.notes.append(
                    f"dpmsfs: snapshot {name} after mutate holds {got[0]} files / {got[1]} "
                    f"bytes, the tree {expected[0]} / {expected[1]}"
                )
        result.put("dpmsfs", "rss_anon_after_MiB", rss_anon_kb(mount.pid) / 1024)
    for line in mount.problems()[:10]:
        result.notes.append(f"dpmsfs log: {line}")
    shutil.rmtree(run_dir / "dpmsfs", ignore_errors=True)


def run_peers(
    run_dir: Path, data: Path, workloads: set[str], do_evict: bool, result: RunResult
) -> None:
    tree = run_dir / "peers" / "work"
    tree.parent.mkdir(parents=True)
    copy_tree(data, tree)
    _, nbytes = tree_bytes(tree)
    peers = [Peer(n, run_dir / "peers" / f"{n}-repo", run_dir / "peers" / f"{n}-home")
             for n in ("restic", "borg")]  # fmt: skip
    for peer in peers:
        peer.init()
        if do_evict:
            evict(tree)
        log(f"{peer.name}: first backup")
        elapsed = peer.backup(tree)
        result.put(peer.name, "import_s", elapsed)
        result.put(peer.name, "import_MBps", nbytes / MB / elapsed)
        result.put(peer.name, "stored_bytes", peer.size())
        if "noop" in workloads:
            log(f"{peer.name}: backup with nothing changed")
            result.put(peer.name, "noop_s", peer.backup(tree))
    if "incremental" in workloads:
        result.put("peers", "mutate_native_s", mutate(tree))
        for peer in peers:
            if do_evict:
                evict(tree)
            before = peer.size()
            log(f"{peer.name}: backup after mutate")
            result.put(peer.name, "incremental_s", peer.backup(tree))
            result.put(peer.name, "incremental_added_bytes", peer.size() - before)
    shutil.rmtree(run_dir / "peers", ignore_errors=True)


def fuse_workloads(root: Path, tag: str, do_evict: bool) -> dict[str, float]:
    """create / stat / tar figures through the mount at `root` (in its pgm/ tree)."""
    figures: dict[str, float] = {}
    scratch = root / f".bench-create-{tag}"
    scratch.mkdir()
    payload = b"x" * 4096
    start = time.monotonic()
    for i in range(LATENCY_CREATE_FILES):
        fd = os.open(scratch / f"f{i:05d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)
    figures["create_us"] = (time.monotonic() - start) / LATENCY_CREATE_FILES * 1e6
    paths = []
    for dirpath, dirs, names in os.walk(root / "pgm"):
        paths.extend(os.path.join(dirpath, n) for n in dirs + names)
    start = time.monotonic()
    for _ in range(LATENCY_STAT_PASSES):
        for p in paths:
            os.lstat(p)
    figures["stat_us"] = (time.monotonic() - start) / (LATENCY_STAT_PASSES * len(paths)) * 1e6
    if do_evict:
        evict(root / "pgm")
    start = time.monotonic()
    with open(os.devnull, "wb") as sink, tarfile.open(fileobj=sink, mode="w|") as tar:
        tar.add(root / "pgm", arcname="pgm")
    figures["tar_s"] = time.monotonic() - start
    shutil.rmtree(scratch)
    return figures


def run_latency(run_dir: Path, data: Path, do_evict: bool, result: RunResult) -> None:
    work = run_dir / "latency" / "work"
    store = run_dir / "latency" / "store"
    work.parent.mkdir(parents=True)
    copy_tree(data, work)
    if do_evict:
        evict(work)
    with mounted(work, store, run_dir / "latency" / "mount.log") as mount:
        time.sleep(0.5)  # let the import scan start
        log("latency: workloads during the import")
        busy = fuse_workloads(work, "busy", do_evict)
        status = mount.status()
        still = status["import"]["running"] or status["pending_files"] > 0
        if not still:
            result.notes.append("latency: the import finished before the busy workloads did")
        mount.snapshot_cli()
        log("latency: workloads idle")
        idle = fuse_workloads(work, "idle", do_evict)
    for key, value in busy.items():
        result.put("dpmsfs", f"latency_busy_{key}", value)
        result.put("dpmsfs", f"latency_idle_{key}", idle[key])
        result.put("dpmsfs", f"latency_ratio_{key}", value / idle[key])
    for line in mount.problems()[:10]:
        result.notes.append(f"dpmsfs log (latency): {line}")
    shutil.rmtree(run_dir / "latency", ignore_errors=True)


# --- million ----------------------------------------------------------------------------


def make_million(path: Path, dirs: int, per_dir: int) -> None:
    path.mkdir(parents=True)
    for d in range(dirs):
        sub = path / f"d{d:04d}"
        sub.mkdir()
        for f in range(per_dir):
            fd = os.open(sub / f"f{f:04d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, f"{d}/{f}\n".encode())
            os.close(fd)


def change_files(path: Path, dirs: int, per_dir: int, count: int = 100) -> None:
    step = max(1, dirs // count)
    for i in range(count):
        d = (i * step) % dirs
        with open(path / f"d{d:04d}" / f"f{(i * 7) % per_dir:04d}", "a") as f:
            f.write("changed\n")


def run_million(
    run_dir: Path, dirs: int, per_dir: int, with_restic: bool, result: RunResult
) -> None:
    base = run_dir / "million"
    work = base / "work"
    store = base / "store"
    log(f"million: generating {dirs} x {per_dir} files on disk")
    start = time.monotonic()
    make_million(work, dirs, per_dir)
    subprocess.run(["sync"], check=True)
    result.put("million", "generate_s", time.monotonic() - start)
    log("million: dpmsfs import")
    start = time.monotonic()
    with mounted(work, store, base / "mount.log") as mount:
        sampler = RssSampler(mount.pid, interval=1.0)
        try:
            mount.snapshot_cli()
            elapsed = time.monotonic() - start
        finally:
            sampler.stop()
        result.put("million", "dpmsfs_import_s", elapsed)
        result.put("million", "dpmsfs_rss_anon_peak_during_import_MiB", sampler.peak_kb / 1024)
        time.sleep(5)
        result.put("million", "dpmsfs_rss_anon_after_import_MiB", rss_anon_kb(mount.pid) / 1024)
        status = mount.status()
        result.put("million", "dpmsfs_captured_files", status["captured_files"])
        if status["captured_files"] < dirs * per_dir:
            result.notes.append(
                f"million: captured_files {status['captured_files']} < {dirs * per_dir}"
            )
        result.put("million", "dpmsfs_stored_bytes", du_bytes(store))
        result.put("million", "dpmsfs_noop_s", mount.snapshot_cli()[0])
        result.put("million", "dpmsfs_noop_daemon_s", mount.snapshot_socket()[0])
        change_files(work, dirs, per_dir)
        result.put("million", "dpmsfs_100_changed_s", mount.snapshot_cli()[0])
        result.put("million", "dpmsfs_rss_anon_end_MiB", rss_anon_kb(mount.pid) / 1024)
        result.put("million", "dpmsfs_rss_anon_peak_MiB", sampler.peak_kb / 1024)
    for line in mount.problems()[:10]:
        result.notes.append(f"dpmsfs log (million): {line}")
    shutil.rmtree(store, ignore_errors=True)
    if with_restic:
        shutil.rmtree(work)
        make_million(work, dirs, per_dir)
        subprocess.run(["sync"], check=True)
        restic = Peer("restic", base / "restic-repo", base / "restic-home")
        restic.init()
        log("million: restic first backup")
        result.put("million", "restic_import_s", restic.backup(work))
        result.put("million", "restic_noop_s", restic.backup(work))
        change_files(work, dirs, per_dir)
        result.put("million", "restic_100_changed_s", restic.backup(work))
    shutil.rmtree(base, ignore_errors=True)


# --- report -----------------------------------------------------------------------------


def medians(runs: list[RunResult]) -> dict[str, dict[str, float]]:
    keys: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for tool, figs in run.figures.items():
            for key, value in figs.items():
                keys.setdefault(tool, {}).setdefault(key, []).append(value)
    return {t: {k: statistics.median(v) for k, v in f.items()} for t, f in keys.items()}


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MiB":
        return f"{value / MIB:.1f} MiB"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "MB/s":
        return f"{value:.1f} MB/s"
    return f"{value:.1f} {unit}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def report(med: dict[str, dict[str, float]]) -> str:
    d, r, b = med.get("dpmsfs", {}), med.get("restic", {}), med.get("borg", {})
    rows = [
        ("import throughput", "import_MBps", "MB/s", ">= 2x borg, > restic"),
        ("import time", "import_s", "s", ""),
        ("import stored size", "stored_bytes", "MiB", "<= borg"),
        ("no-op snapshot (CLI)", "noop_s", "s", "<= 0.1 s"),
        ("day-1 changes captured", "incremental_s", "s", "<= 0.5x peers"),
        ("day-1 stored bytes added", "incremental_added_bytes", "MiB", "<= peers"),
    ]
    lines = [f"{'figure':28} {'dpmsfs':>12} {'restic':>12} {'borg':>12} "
             f"{'d/restic':>9} {'d/borg':>9}  target"]  # fmt: skip
    for label, key, unit, target in rows:
        dv, rv, bv = d.get(key), r.get(key), b.get(key)
        if dv is None and rv is None and bv is None:
            continue
        lines.append(f"{label:28} {fmt(dv, unit):>12} {fmt(rv, unit):>12} {fmt(bv, unit):>12} "
                     f"{ratio(dv, rv):>9} {ratio(dv, bv):>9}  {target}")  # fmt: skip
    extra = {k: v for k, v in d.items() if k not in {row[1] for row in rows}}
    for key, value in sorted(extra.items()):
        lines.append(f"dpmsfs {key:40} {value:.4g}")
    for tool in ("peers", "million"):
        for key, value in sorted(med.get(tool, {}).items()):
            lines.append(f"{tool} {key:40} {value:.4g}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Versioning benchmark: dpmsfs vs restic and borg (issue 4).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--size-mb", type=int, default=2200, help="tree size (default 2200)")
    parser.add_argument("--runs", type=int, default=3, help="runs, medians reported (default 3)")
    parser.add_argument(
        "--only", default="", help=f"comma list of workloads among {','.join(WORKLOADS)},million"
    )
    parser.add_argument("--million", action="store_true", help="add the 1M-file workload")
    parser.add_argument("--million-dirs", type=int, default=1000)
    parser.add_argument("--million-per-dir", type=int, default=1000)
    parser.add_argument("--no-restic-million", action="store_true",
                        help="skip restic in the million workload")  # fmt: skip
    parser.add_argument("--no-peers", action="store_true", help="dpmsfs only")
    parser.add_argument("--no-evict", action="store_true", help="keep the page cache warm")
    parser.add_argument("--json", dest="json_out", help="write all figures to this file")
    parser.add_argument(
        "--workdir-base",
        default="/var/tmp/dpmsfs-bench",
        help="where the dataset and the runs go, on disk (default %(default)s)",
    )
    args = parser.parse_args(argv)

    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        parser.error("needs root and /dev/fuse")
    workloads = set(args.only.split(",")) if args.only else set(WORKLOADS)
    if args.million:
        workloads.add("million")
    unknown = workloads - {*WORKLOADS, "million"}
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if workloads & {"noop", "incremental"}:
        workloads.add("import")  # they run on the imported state
    versions = {} if args.no_peers else ensure_peers()
    base = Path(args.workdir_base)
    base.mkdir(parents=True, exist_ok=True)
    do_evict = not args.no_evict
    started = datetime.datetime.now(datetime.UTC)
    runs: list[RunResult] = []
    needs_data = bool(workloads & set(WORKLOADS))
    data = dataset(base, args.size_mb) if needs_data else None
    for index in range(args.runs if needs_data else 0):
        assert data is not None
        run_dir = Path(tempfile.mkdtemp(prefix=f"run{index}-", dir=base))
        os.chmod(run_dir, 0o755)
        result = RunResult()
        result.put("env", "loadavg_1min_at_start", os.getloadavg()[0])
        log(f"run {index + 1}/{args.runs} in {run_dir}")
        try:
            if "import" in workloads:
                run_dpmsfs(run_dir, data, workloads, do_evict, result)
                if not args.no_peers:
                    run_peers(run_dir, data, workloads, do_evict, result)
            if "latency" in workloads:
                run_latency(run_dir, data, do_evict, result)
        finally:
            for sub in ("dpmsfs/work", "latency/work"):
                subprocess.run(["fusermount3", "-u", "-z", str(run_dir / sub)],
                               capture_output=True, check=False)  # fmt: skip
            shutil.rmtree(run_dir, ignore_errors=True)
        runs.append(result)
        print(f"run {index + 1}: {json.dumps(result.figures)}", flush=True)
    if "million" in workloads:
        run_dir = Path(tempfile.mkdtemp(prefix="million-", dir=base))
        os.chmod(run_dir, 0o755)
        result = RunResult()
        try:
            with_restic = not (args.no_peers or args.no_restic_million)
            run_million(run_dir, args.million_dirs, args.million_per_dir, with_restic, result)
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(run_dir / "million" / "work")],
                           capture_output=True, check=False)  # fmt: skip
            shutil.rmtree(run_dir, ignore_errors=True)
        runs.append(result)
    med = medians(runs)
    print(report(med))
    notes = [n for run in runs for n in run.notes]
    for note in notes:
        print(f"NOTE: {note}")
    if args.json_out:
        out = {
            "date": started.isoformat(timespec="seconds"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "command": sys.argv,
            "versions": versions,
            "code": code_state(),
            "size_mb": args.size_mb,
            "evict": do_evict,
            "median": med,
            "runs": [r.figures for r in runs],
            "notes": notes,
        }
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
