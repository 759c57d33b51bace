"""What the live mount on our own FUSE layer adds: negotiation shown in status, capture
of writes the daemon never sees (passthrough), and fail-open for an open datalog."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dpmsfs import mountinfo
from dpmsfs.fs.changes import ChangeKind
from tests.mount.conftest import (
    IO_URING,
    ON_PYFUSE3,
    PASSTHROUGH,
    CliMount,
    ThreadMount,
    cli_snapshot,
    run_cli,
    wait_for,
)
from tests.mount.test_versioning import files_of

pytestmark = pytest.mark.skipif(ON_PYFUSE3, reason="the kernel-protocol layer only")

RECORD = 256


def record(n: int) -> bytes:
    return (b"%08d " % n).ljust(RECORD - 1, b"r") + b"\n"


def test_status_shows_what_was_negotiated(workdir: Path, store_dir: Path) -> None:
    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        result = run_cli("status", str(workdir), "--store", str(store_dir), "--json")
        assert result.returncode == 0, result.stderr
        fuse = json.loads(result.stdout)["fuse"]
        assert fuse["layer"] == "kernel"
        assert fuse["protocol"].startswith("7.")
        assert fuse["passthrough"] is PASSTHROUGH  # this kernel offers it
        assert fuse["killpriv_v2"] is True
        text = run_cli("status", str(workdir), "--store", str(store_dir)).stdout
        assert f"passthrough {'on' if PASSTHROUGH else 'off'}" in text
        assert "FUSE protocol 7." in mount.log()  # logged once at INIT
        transport = "io_uring" if IO_URING else "/dev/fuse"
        assert fuse["transport"] == transport, fuse.get("transport_reason")
        assert f"transport {transport}" in text
        assert mount.log().count("FUSE transport ") == 1, "logged once"
    finally:
        mount.stop()


def test_a_file_held_open_for_writing_is_reported_again_while_it_changes(
    workdir: Path,
) -> None:
    mount = ThreadMount(workdir, recapture=0.3)
    try:
        events = mount.sink.events
        fd = os.open(workdir / "datalog", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        try:
            for n in range(3):
                os.write(fd, record(n))
            wait_for(lambda: len(events) >= 1, what="create reported")
            events.clear()
            deadline = time.monotonic() + 1.5
            n = 3
            while time.monotonic() < deadline:  # a lot in progress: appends go on
                os.write(fd, record(n))
                n += 1
                time.sleep(0.02)
            writes = [e for e in events if e.kind == ChangeKind.WRITE and e.path == b"datalog"]
            assert len(writes) >= 2, f"re-reported while open and changing: {events}"
            time.sleep(0.5)  # quiet now: one more report at most, then none
            events.clear()
            time.sleep(0.8)
            assert events == [], "nothing changed: nothing re-reported"
        finally:
            os.close(fd)
        wait_for(lambda: any(e.kind == ChangeKind.CLOSE_WRITE for e in events), what="close")
    finally:
        mount.stop()


def test_truncate_and_mmap_writes_count_as_changes(workdir: Path) -> None:
    (workdir / "m").write_bytes(bytes(8192))
    mount = ThreadMount(workdir)
    try:
        events = mount.sink.events
        os.truncate(workdir / "m", 4096)
        wait_for(lambda: (ChangeKind.TRUNCATE, b"m") in [(e.kind, e.path) for e in events],
                 what="truncate reported")  # fmt: skip
        events.clear()
        # In a process of its own: its page faults are FUSE requests (without
        # passthrough) taken while holding the GIL that this process's FUSE worker
        # threads need to answer them.
        writer = (
            "import mmap, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "with mmap.mmap(fd, 4096) as m:\n"
            "    m[0:5] = b'mmap!'\n"
            "    m.flush()\n"
            "os.close(fd)\n"
        )
        subprocess.run([sys.executable, "-c", writer, str(workdir / "m")], check=True, timeout=60)
        wait_for(lambda: (ChangeKind.CLOSE_WRITE, b"m") in [(e.kind, e.path) for e in events],
                 what="mmap writer's release reported")  # fmt: skip
        assert (workdir / "m").read_bytes()[:5] == b"mmap!"
    finally:
        mount.stop()


@pytest.mark.skipif(not PASSTHROUGH, reason="without passthrough writes need the daemon")
def test_datalog_writer_runs_through_kill9_and_restart(
    workdir: Path, store_dir: Path, tmp_path: Path
) -> None:
    """No write() on an already-open file fails when the daemon dies; fsync and fstat
    do (ENOTCONN, measured below); every record is in the file and, after the restart,
    captured: also those written through the old descriptor *after* the restarted
    daemon's scan, which the new mount never sees (old_writers.py)."""
    mount = CliMount(workdir, "--store", str(store_dir))
    written: list[int] = []
    failures: list[str] = []
    stop = threading.Event()
    fd = os.open(workdir / "lot.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)

    def writer() -> None:
        n = 0
        while not stop.is_set():
            try:
                assert os.write(fd, record(n)) == RECORD
                written.append(n)
            except OSError as exc:
                failures.append(f"write {n}: {exc}")
                return
            n += 1
            time.sleep(0.002)

    thread = threading.Thread(target=writer)
    after_kill: dict[str, str] = {}
    config = tmp_path / "fast-recapture.toml"
    config.write_text("open_writer_recapture_seconds = 0.3\nquiet_seconds = 0.2\n")
    again: CliMount | None = None
    fd_open = True
    try:
        thread.start()
        wait_for(lambda: len(written) > 200, what="records before the kill")
        os.kill(mount.proc.pid, signal.SIGKILL)
        mount.proc.wait(10)
        for name, call in (("fsync", lambda: os.fsync(fd)), ("fstat", lambda: os.fstat(fd))):
            try:
                call()
                after_kill[name] = "ok"
            except OSError as exc:
                after_kill[name] = errno.errorcode.get(exc.errno or 0, "?")
        wait_for(lambda: not mountinfo.is_dpmsfs_mount(workdir), timeout=10, what="fail-open")
        count_at_fail_open = len(written)
        wait_for(lambda: len(written) > count_at_fail_open + 200, what="records after")
        mount.stop()
        # The restart, with the writer still going through its pre-kill descriptor.
        again = CliMount(workdir, "--store", str(store_dir), "--config", str(config))
        restarted = again
        wait_for(lambda: "open for writing on the previous mount" in restarted.log(),
                 what="the restarted daemon found the old writer")  # fmt: skip
        # Once the restarted daemon has captured the file (its scan saw it changed), no
        # request of the new mount will ever say it changed again: only the watch does.
        # A file appended to without pause may be deferred by capture for a moment (it
        # changed while being read): snapshot until one holds it.
        snaps: list[str] = []

        def snapshot_holds_the_log() -> bool:
            snaps.append(cli_snapshot(workdir, store_dir, "while-writing"))
            if "lot.log" in files_of(store_dir, snaps[-1]):
                return True
            time.sleep(0.3)
            return False

        wait_for(snapshot_holds_the_log, timeout=30, what="a snapshot holding lot.log")
        first = snaps[-1]
        count_at_restart_scan = len(written)
        wait_for(lambda: len(written) > count_at_restart_scan + 300, what="records after scan")
        stop.set()
        thread.join(10)
        assert not failures, failures
        os.close(fd)
        fd_open = False
        wait_for(lambda: "written on the previous mount closed" in restarted.log(),
                 what="the old descriptor's close noticed")  # fmt: skip
        name = cli_snapshot(workdir, store_dir, "after-restart")
    finally:
        stop.set()
        thread.join(10)
        if fd_open:
            os.close(fd)
        (again or mount).stop()
    expected = b"".join(record(n) for n in written)
    assert len(written) > count_at_restart_scan + 300
    assert (workdir / "lot.log").read_bytes() == expected, "every record, in order"
    # Measured on this kernel (6.18): the connection is gone for everything that asks
    # the daemon; the data path of the open file is the kernel's own. On io_uring the
    # connection ends a few ms after the process (the rings' teardown holds /dev/fuse):
    # a request in that window ends ECONNABORTED, or ECANCELED if it was being handed
    # to the dead ring thread.
    print("after kill -9:", after_kill)
    dead = ("ENOTCONN", "ECONNABORTED", "ECANCELED", "ok") if IO_URING else ("ENOTCONN", "ok")
    assert after_kill["fsync"] in dead and after_kill["fstat"] in dead, after_kill
    assert len(files_of(store_dir, first)["lot.log"]) < len(expected)
    assert files_of(store_dir, name)["lot.log"] == expected, "records after the scan too"


def test_kill9_right_after_mount_leaves_no_dead_mount(workdir: Path, store_dir: Path) -> None:
    """The daemon SIGKILLs itself the moment mount(2) (and INIT) returned, before it told
    the fail-open watchdog which mount is its own: the watchdog, started before
    mounting, still finds and detaches it, and the real directory shows again."""
    (workdir / "real.txt").write_bytes(b"on the disk\n")
    env = {**os.environ, "DPMSFS_TEST_KILL_AFTER_MOUNT": "1"}
    for attempt in range(3):
        proc = subprocess.run(
            [sys.executable, "-m", "dpmsfs.cli.main", "mount", "--foreground",
             "--store", str(store_dir), str(workdir)],
            env=env, capture_output=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == -signal.SIGKILL, (attempt, proc.stderr.decode(errors="replace"))
        wait_for(lambda: not mountinfo.is_dpmsfs_mount(workdir), timeout=10,
                 what=f"fail-open after kill -9 #{attempt}")  # fmt: skip
        assert (workdir / "real.txt").read_bytes() == b"on the disk\n"
        assert "real.txt" in os.listdir(workdir)
