"""Real FUSE mounts for tests: in a subprocess through the CLI, or in a thread.

Every fixture cleans up the way pyfuse3's own tests do: `fusermount3 -u -z`, then
terminate, then kill, so a failing test never leaves a mount behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpmsfs import mountinfo
from dpmsfs.fs.changes import RecordingSink
from dpmsfs.fs.mount import MountOptions, serve
from dpmsfs.fs.operations import PassthroughOperations

MOUNT_TIMEOUT = 20.0


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

    def __init__(self, workdir: Path, fd_budget: int = 4096) -> None:
        self.workdir = workdir
        self.sink = RecordingSink()
        self.error: BaseException | None = None
        ready = threading.Event()
        self.operations: PassthroughOperations | None = None

        def started(operations: PassthroughOperations) -> None:
            self.operations = operations
            ready.set()

        def run() -> None:
            try:
                serve(
                    MountOptions(workdir, fd_budget=fd_budget),
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
