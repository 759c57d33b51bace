"""FUSE over io_uring (dpmsfs.fuseproto.uring) on real mounts: a request is served by
the ring thread of the CPU that asked; unmount with requests in flight ends every
thread; and every way io_uring cannot be had falls back to the /dev/fuse workers
(setting off, ring setup failing, the kernel refusing a queue's registration)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpmsfs import mountinfo
from dpmsfs.fuseproto import kernel, uring
from dpmsfs.fuseproto.session import TRANSPORT_DEV, TRANSPORT_URING, Session
from tests.mount.conftest import (
    ON_PYFUSE3,
    URING_KERNEL,
    CliMount,
    fuse_usable,
    run_cli,
    wait_for,
)
from tests.mount.test_fuseproto import CONTENT, DATA_INO, TinyFs, end

pytestmark = [
    pytest.mark.skipif(not fuse_usable(), reason="needs root and /dev/fuse"),
    pytest.mark.skipif(not URING_KERNEL, reason="this kernel has no FUSE over io_uring"),
]


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dpmsfs-uring-", dir="/tmp"))
    (path / "mnt").mkdir()
    (path / "backing").write_bytes(CONTENT)
    yield path
    if os.path.ismount(path / "mnt"):
        kernel.unmount(str(path / "mnt"))
    shutil.rmtree(path, ignore_errors=True)


def mounted(
    base: Path, io_uring: str = "on", fault: str | None = None, sched_idle: bool = False
) -> tuple[TinyFs, Session]:
    fs = TinyFs(base / "backing")
    session = Session(
        fs, str(base / "mnt"), fsname="tiny", subtype="dpmsfs-prototest",
        options=["default_permissions", "allow_other"], passthrough=False, workers=3,
        io_uring=io_uring, uring_fault=fault, ring_sched_idle=sched_idle,
    )  # fmt: skip
    fs.session = session
    session.mount()
    return fs, session


def test_a_request_from_each_cpu_is_served_on_that_cpu(base: Path) -> None:
    fs, session = mounted(base)
    pinned = os.sched_getaffinity(0)
    try:
        assert session.transport == TRANSPORT_URING, session.transport_reason
        assert uring.parameter_state() is True, "auto/on turned the module parameter on"
        assert sorted(session.requests_per_queue) == uring.possible_cpus()
        for cpu in sorted(pinned):
            os.sched_setaffinity(0, {cpu})
            before = dict(session.requests_per_queue)
            fs.threads.clear()
            for _ in range(200):  # entry and attr timeouts are 0: LOOKUP + GETATTR each
                assert os.stat(base / "mnt" / "data").st_size == len(CONTENT)
            grew = {q: session.requests_per_queue[q] - before[q] for q in before}
            assert grew[cpu] >= 400, grew
            assert sum(n for q, n in grew.items() if q != cpu) < 40, grew
            assert fs.threads == {f"fuse-ring-{cpu}"}, "the lookups ran on that CPU's thread"
        # Errors are replies on the ring too; RELEASE (a background request) arrives.
        with pytest.raises(FileNotFoundError):
            os.stat(base / "mnt" / "nothing")
        with pytest.raises(OSError) as raised:
            os.stat(base / "mnt" / "boom")
        assert raised.value.errno == errno.EIO
        assert (base / "mnt" / "data").read_bytes() == CONTENT
        assert fs.reads >= 1
        wait_for(lambda: not fs.fds, what="RELEASE over the ring")
        # FORGET still comes on /dev/fuse, served by the one worker kept for it.
        Path("/proc/sys/vm/drop_caches").write_text("2")
        wait_for(lambda: fs.forgotten.get(DATA_INO, 0) >= 1, what="FORGET of the file")
    finally:
        os.sched_setaffinity(0, pinned)
        end(session)


def test_ring_threads_as_sched_idle_on_request(base: Path) -> None:
    """The experimental knob: the ring threads run SCHED_IDLE and still serve."""
    _fs, session = mounted(base, sched_idle=True)
    try:
        assert session.transport == TRANSPORT_URING, session.transport_reason
        assert "SCHED_IDLE" in session.transport_reason
        assert (base / "mnt" / "data").read_bytes() == CONTENT
        rings = [t for t in threading.enumerate() if t.name.startswith("fuse-ring-")]
        assert rings and all(
            t.native_id is not None and os.sched_getscheduler(t.native_id) == os.SCHED_IDLE
            for t in rings
        )
    finally:
        end(session)


def test_unmount_with_requests_in_flight_ends_every_thread(base: Path) -> None:
    fs, session = mounted(base)
    assert session.transport == TRANSPORT_URING, session.transport_reason
    outcomes: list[str] = []
    started = threading.Barrier(5)

    def hammer() -> None:
        started.wait()
        try:
            while True:
                (base / "mnt" / "data").read_bytes()
        except OSError as exc:
            outcomes.append(errno.errorcode.get(exc.errno or 0, str(exc)))

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    started.wait()
    wait_for(lambda: fs.reads > 50, what="reads in flight")
    session.unmount()
    session.join(10)
    assert not session.running, "every ring thread and worker saw the end"
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), "no caller hangs on a request of the dead session"
    assert len(outcomes) == 4 and set(outcomes) <= {"ENOTCONN", "ENOENT", "ECONNABORTED"}, outcomes
    session.close()


@pytest.mark.parametrize(
    ("io_uring", "fault", "reason"),
    [
        ("off", None, "fuse_io_uring = off"),
        ("on", "setup", "ring setup failed"),
        ("on", "register", "kernel refused registration"),
    ],
    ids=["setting-off", "ring-setup-fails", "kernel-refuses-registration"],
)
def test_falls_back_to_dev_fuse(base: Path, io_uring: str, fault: str | None, reason: str) -> None:
    fs, session = mounted(base, io_uring, fault)
    try:
        assert session.transport == TRANSPORT_DEV
        assert reason in session.transport_reason
        for _ in range(20):
            assert (base / "mnt" / "data").read_bytes() == CONTENT
        assert sum(session.requests_per_queue.values()) == 0, "nothing served on a ring"
        assert fs.threads and all(name.startswith("fuse-worker-") for name in fs.threads)
    finally:
        end(session)


@pytest.mark.skipif(ON_PYFUSE3, reason="the kernel-protocol layer only")
def test_daemon_falls_back_when_the_kernel_refuses_the_rings(
    workdir: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole daemon: a registration the kernel refuses is one warning, the mount
    serves on /dev/fuse, and `dpmsfs status` says so."""
    monkeypatch.setenv("DPMSFS_FUSE_IO_URING", "on")
    monkeypatch.setenv("DPMSFS_TEST_URING_FAULT", "register")
    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        (workdir / "a.txt").write_bytes(b"served on /dev/fuse\n")
        assert (workdir / "a.txt").read_bytes() == b"served on /dev/fuse\n"
        result = run_cli("status", str(workdir), "--store", str(store_dir), "--json")
        assert result.returncode == 0, result.stderr
        fuse = json.loads(result.stdout)["fuse"]
        assert fuse["transport"] == "/dev/fuse"
        assert "kernel refused registration" in fuse["transport_reason"]
        assert mount.log().count("WARNING") >= 1 and "serving on /dev/fuse" in mount.log()
    finally:
        mount.stop()


@pytest.mark.skipif(ON_PYFUSE3, reason="the kernel-protocol layer only")
def test_kill9_with_the_rings_active_fails_open(
    workdir: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of the daemon while callers on every CPU have requests on the rings:
    no caller hangs (ENOTCONN, or the real directory once the watchdog detached the
    mount), and the real directory shows again."""
    monkeypatch.setenv("DPMSFS_FUSE_IO_URING", "on")  # also in CI's first (/dev/fuse) pass
    (workdir / "real.txt").write_bytes(b"on the disk\n")
    mount = CliMount(workdir, "--store", str(store_dir))
    stop = threading.Event()
    seen: list[set[str]] = []
    try:
        fuse = json.loads(
            run_cli("status", str(workdir), "--store", str(store_dir), "--json").stdout
        )["fuse"]
        assert fuse["transport"] == "io_uring", fuse.get("transport_reason")
        cpus = sorted(os.sched_getaffinity(0))

        def hammer(cpu: int) -> None:
            os.sched_setaffinity(0, {cpu})
            outcomes: set[str] = set()
            while not stop.is_set():
                try:  # GETXATTR is never cached: every call is a request
                    os.getxattr(workdir / "real.txt", "user.none")
                except OSError as exc:
                    outcomes.add(errno.errorcode.get(exc.errno or 0, str(exc)))
            seen.append(outcomes)

        threads = [threading.Thread(target=hammer, args=(c,), daemon=True) for c in cpus]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the callers are in their loops, requests on both rings
        mount.proc.kill()
        mount.proc.wait(10)
        wait_for(lambda: not mountinfo.is_dpmsfs_mount(workdir), timeout=15,
                 what="fail-open after kill -9")  # fmt: skip
        assert (workdir / "real.txt").read_bytes() == b"on the disk\n"
        stop.set()
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive(), "a caller hung on a request of the dead daemon"
        assert len(seen) == len(cpus)
        for outcomes in seen:
            # ECANCELED: a request the kernel was handing to the dying ring thread
            # (fs/fuse/dev_uring.c, the task is dead); an error, never a hang.
            assert outcomes <= {"ENODATA", "ENOTCONN", "ECONNABORTED", "ECANCELED"}, outcomes
    finally:
        stop.set()
        mount.stop()
