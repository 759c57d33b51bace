"""Real FUSE mounts for tests: in a subprocess through the CLI, or in a thread.

Every fixture cleans up the way pyfuse3's own tests do: `fusermount3 -u -z`, then
terminate, then kill, so a failing test never leaves a mount behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpmsfs import mountinfo
from dpmsfs.fs.changes import RecordingSink
from dpmsfs.fs.mount import MountOptions, serve

MOUNT_TIMEOUT = 20.0

# The live mount's FUSE layer and passthrough setting under test (mount.py reads the
# same variables): CI runs this suite with DPMSFS_PASSTHROUGH=1 and =0 on the kernel
# layer; DPMSFS_LIVE_FUSE=pyfuse3 runs it on the previous path.
LIVE_FUSE = os.environ.get("DPMSFS_LIVE_FUSE", "kernel")
ON_PYFUSE3 = LIVE_FUSE == "pyfuse3"
PASSTHROUGH = os.environ.get("DPMSFS_PASSTHROUGH", "1").lower() not in ("0", "false", "no", "off")
# The kernel layer's transport: /dev/fuse (the default), or FUSE over io_uring where
# this kernel has it when the run asks (CI's second pass: DPMSFS_FUSE_IO_URING=auto).
URING_KERNEL = os.path.exists("/sys/module/fuse/parameters/enable_uring")
IO_URING = URING_KERNEL and os.environ.get("DPMSFS_FUSE_IO_URING", "off").lower() != "off"


def fuse_usable() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/fuse")


pytestmark = pytest.mark.skipif(not fuse_usable(), reason="needs root and /dev/fuse")


def wait_for(predicate: object, timeout: float = MOUNT_TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def force_unmount(path: Path) -> None:
    if mountinfo.is_dpmsfs_mount(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)


class CliMount:
    """`dpmsfs mount --foreground WORKDIR` as a child process."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.log_path = workdir.parent / f"{workdir.name}.mount.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dpmsfs.cli.main",
                "--log-level",
                "INFO",
                "mount",
                "--foreground",
                *extra,
                str(workdir),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self._ready, what=f"mount of {workdir}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"mount failed: {self.log()}") from None

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited: {self.log()}")
        return mountinfo.is_dpmsfs_mount(self.workdir)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    @property
    def view(self) -> Path:
        return self.workdir / ".snapshots"

    def view_mounted(self) -> bool:
        return mountinfo.is_dpmsfs_mount(self.view, mountinfo.VIEW_FSTYPE)

    def wait_for_view(self) -> None:
        """Until the snapshot view's own mount is up on WORKDIR/.snapshots."""
        wait_for(self.view_mounted, what=f"snapshot view on {self.view}")

    def view_pid(self) -> int:
        """The snapshot view's process (a child of the daemon)."""
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                if "dpmsfs.fs.snapshot_mount" in Path(f"/proc/{child}/cmdline").read_text():
                    return int(child)
        raise AssertionError("no snapshot view process")

    def stop_view(self) -> None:
        """Unmount the view; the daemon leaves it down and serves .snapshots itself."""
        subprocess.run(["fusermount3", "-u", str(self.view)], check=True, capture_output=True)
        wait_for(lambda: not self.view_mounted(), what="view unmounted")
        wait_for(lambda: "unmounted from outside" in self.log(), what="daemon saw it")

    def stop(self) -> None:
        force_unmount(self.workdir)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class ThreadMount:
    """The FUSE loop in a thread of the test process, so tests can read its sink."""

    def __init__(self, workdir: Path, fd_budget: int = 4096, recapture: float = 120.0) -> None:
        self.workdir = workdir
        self.sink = RecordingSink()
        self.error: BaseException | None = None
        ready = threading.Event()
        self.operations: Any = None  # PassthroughOperations or kernel_mount.LiveMount

        def started(operations: Any) -> None:
            self.operations = operations
            ready.set()

        def run() -> None:
            try:
                serve(
                    MountOptions(
                        workdir, fd_budget=fd_budget, open_writer_recapture_seconds=recapture
                    ),
                    self.sink,
                    on_ready=started,
                    handle_signals=False,
                )
            except BaseException as exc:  # reported to the test
                self.error = exc
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(MOUNT_TIMEOUT)
        if self.error is not None:
            raise self.error
        wait_for(lambda: mountinfo.is_dpmsfs_mount(workdir), what="thread mount")

    def inodes_open(self) -> int:
        """Open file handles the daemon holds (releases arrive after close())."""
        assert self.operations is not None
        return self.operations.open_file_count

    def stop(self) -> None:
        force_unmount(self.workdir)
        self.thread.join(10)
        if self.error is not None:
            raise self.error


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A work directory every user can reach (pytest's tmp_path is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="dpmsfs-test-", dir="/tmp"))
    os.chmod(base, 0o755)
    path = base / "work"
    path.mkdir(mode=0o755)
    yield path
    force_unmount(path)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cli_mount(workdir: Path) -> Iterator[CliMount]:
    mount = CliMount(workdir)
    yield mount
    mount.stop()


@pytest.fixture
def thread_mount(workdir: Path) -> Iterator[ThreadMount]:
    mount = ThreadMount(workdir)
    yield mount
    mount.stop()


# --- differential testing: a native directory beside a mounted one --------------------


@contextlib.contextmanager
def scratch_base() -> Iterator[Path]:
    """A world-traversable scratch directory under /tmp, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="dpmsfs-test-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        force_unmount(base / "work")
        shutil.rmtree(base, ignore_errors=True)


class MountedPair:
    """`native` (plain directory) and `mount` (dpmsfs over base/work), created alike.

    `under` reaches the real directory beneath the mount, through a descriptor opened
    before mounting, to compare what the mount reports with what is really there.
    """

    def __init__(self, base: Path, fd_budget: int = 4096) -> None:
        self.base = base
        self.native = base / "native"
        self.mount = base / "work"
        self.native.mkdir(mode=0o755)
        self.mount.mkdir(mode=0o755)
        os.chmod(self.native, 0o755)
        os.chmod(self.mount, 0o755)
        self.under_fd = os.open(self.mount, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.under = Path(f"/proc/self/fd/{self.under_fd}")
        self.fd_budget = fd_budget
        self._churn_counter = 0
        self.churn_dirs: list[str] = []
        self.thread_mount = ThreadMount(self.mount, fd_budget=fd_budget)
        if fd_budget < 4096:
            # More directories than descriptors, so every churn() evicts the others.
            for i in range(3 * fd_budget):
                name = f".churn/d{i:03d}"
                (self.mount / name).mkdir(parents=True)
                self.churn_dirs.append(name)

    def churn(self) -> None:
        """Make the daemon open every churn directory (a lookup of a new name in each),
        evicting the descriptors of the directories the test is working in."""
        self._churn_counter += 1
        for name in self.churn_dirs:
            os.path.lexists(self.mount / name / f"nx{self._churn_counter}")

    def close(self) -> None:
        try:
            self.thread_mount.stop()
        finally:
            os.close(self.under_fd)


# --- the CLI against a mount with its own store -------------------------------------


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`dpmsfs ARGS...` as a child process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "dpmsfs.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_snapshot(workdir: Path, store_dir: Path, label: str = "") -> str:
    """`dpmsfs snapshot`, asserting success; returns the snapshot's name."""
    result = run_cli("snapshot", str(workdir), "--store", str(store_dir), "--label", label)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def store_dir(workdir: Path) -> Path:
    return workdir.parent / "store"


@pytest.fixture
def mounted(workdir: Path, store_dir: Path) -> Iterator[CliMount]:
    """A versioning mount of `workdir` with its store in `store_dir`."""
    mount = CliMount(workdir, "--store", str(store_dir))
    mount.wait_for_view()
    yield mount
    mount.stop()


@pytest.fixture(scope="module", params=[4096, 16], ids=["budget4096", "budget16"])
def env(request: pytest.FixtureRequest) -> Iterator[MountedPair]:
    """A native directory beside a mount, with the default and the minimum fd budget
    (the minimum makes every directory descriptor get evicted and reopened)."""
    with scratch_base() as base:
        pair = MountedPair(base, fd_budget=request.param)
        try:
            yield pair
        finally:
            pair.close()
