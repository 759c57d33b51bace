"""The snapshot view's own mount on WORKDIR/.snapshots: what it is, and its life cycle
beside the work directory's mount (crash, restart, unmount, signals)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path

import pytest

from dpmsfs import mountinfo
from dpmsfs.errors import EXIT_BUSY
from tests.mount.conftest import CliMount, run_cli, wait_for
from tests.mount.test_snapshots_dir import quick_snapshot


def mount_options(mount_point: Path) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mount_point):
            return set(fields[5].split(","))
    raise AssertionError(f"{mount_point} is not mounted")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def test_view_is_its_own_read_only_mount(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    (work / "many").mkdir()
    for i in range(2000):
        (work / "many" / f"e{i:04d}.csv").write_bytes(b"x" * (i % 13))
    name = quick_snapshot(work, store_dir)

    assert mounted.view_mounted()
    assert {"ro", "nosuid", "nodev"} <= mount_options(mounted.view)
    listing = subprocess.run(
        ["ls", "-ln", str(mounted.view / name / "many")], capture_output=True, text=True, check=True
    ).stdout.splitlines()[1:]
    assert len(listing) == 2000
    sizes = {line.split()[-1]: int(line.split()[4]) for line in listing}
    assert all(sizes[f"e{i:04d}.csv"] == i % 13 for i in range(2000))
    # Extended attributes are off for the whole view: the kernel answers without asking
    # (that is what makes `ls -l` fast), and nothing is listed.
    with pytest.raises(OSError) as info:
        os.getxattr(mounted.view / name / "many" / "e0001.csv", b"security.selinux")
    assert info.value.errno == errno.EOPNOTSUPP
    status = run_cli("status", str(work), "--store", str(store_dir))
    assert "snapshot view   mounted (process" in status.stdout, status.stdout


def test_killed_view_is_served_meanwhile_and_restarted(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    (work / "f.txt").write_text("kept")
    name = quick_snapshot(work, store_dir)
    old = mounted.view_pid()

    os.kill(old, signal.SIGKILL)
    # The dead mount is detached and the work directory's mount serves .snapshots.
    wait_for(lambda: not alive(old) and not mounted.view_mounted(), what="dead view detached")
    assert (mounted.view / name / "f.txt").read_text() == "kept"
    # Then a new view process mounts again.
    wait_for(lambda: mounted.view_mounted() and mounted.view_pid() != old, what="restart")
    assert (mounted.view / name / "f.txt").read_text() == "kept"
    assert "snapshot view process exited with status -9; restarting" in mounted.log()
    assert (work / "f.txt").read_text() == "kept"
    assert mounted.proc.poll() is None


def test_umount_takes_the_view_first(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    (work / "f.txt").write_text("x")
    quick_snapshot(work, store_dir)
    view_pid = mounted.view_pid()

    result = run_cli("umount", str(work))
    assert result.returncode == 0, result.stderr
    assert mounted.proc.wait(20) == 0
    assert not mountinfo.is_dpmsfs_mount(work)
    assert not any(point.startswith(str(work)) for point, _ in mountinfo.mounts())
    wait_for(lambda: not alive(view_pid), what="view process gone")
    assert (work / "f.txt").read_text() == "x"  # the real directory again


def test_umount_refused_while_a_snapshot_file_is_open(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    (work / "f.txt").write_text("open me")
    name = quick_snapshot(work, store_dir)

    with open(mounted.view / name / "f.txt") as held:
        result = run_cli("umount", str(work))
        assert result.returncode == EXIT_BUSY
        assert result.stderr.strip().count("\n") == 0 and "busy" in result.stderr
        assert "Traceback" not in result.stderr
        assert held.read() == "open me"
    assert mountinfo.is_dpmsfs_mount(work)
    assert mounted.view_mounted()
    assert (mounted.view / name / "f.txt").read_text() == "open me"


def test_sigterm_unmounts_view_then_workdir(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    (work / "f.txt").write_text("x")
    quick_snapshot(work, store_dir)
    view_pid = mounted.view_pid()

    mounted.proc.send_signal(signal.SIGTERM)
    assert mounted.proc.wait(30) == 0
    assert not any(point.startswith(str(work)) for point, _ in mountinfo.mounts())
    wait_for(lambda: not alive(view_pid), what="view process gone")
    assert "Traceback" not in mounted.log()


def test_daemon_killed_takes_the_view_down(mounted: CliMount, store_dir: Path) -> None:
    """kill -9 of the daemon: the view process sees its pipe close and exits; the
    fail-open watchdog detaches both mounts; the real directory shows through."""
    work = mounted.workdir
    (work / "f.txt").write_text("x")
    quick_snapshot(work, store_dir)
    view_pid = mounted.view_pid()

    mounted.proc.kill()
    mounted.proc.wait(10)
    wait_for(lambda: not alive(view_pid), what="view process gone")
    wait_for(
        lambda: not any(point.startswith(str(work)) for point, _ in mountinfo.mounts()),
        what="mounts detached",
    )
    assert (work / "f.txt").read_text() == "x"
