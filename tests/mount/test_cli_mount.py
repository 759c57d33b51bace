"""The mount as operators and systemd use it: the CLI, errors, unmount, fail-open."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from dpmsfs import mountinfo
from tests.mount.conftest import CliMount, run_cli, wait_for


def test_mount_keeps_the_path_and_the_contents(workdir: Path) -> None:
    (workdir / "pgm").mkdir()
    (workdir / "pgm" / "flow.cfg").write_text("before\n")
    mount = CliMount(workdir)
    try:
        assert (workdir / "pgm" / "flow.cfg").read_text() == "before\n"
        (workdir / "pgm" / "flow.cfg").write_text("during\n")
    finally:
        mount.stop()
    assert not mountinfo.is_dpmsfs_mount(workdir)
    assert (workdir / "pgm" / "flow.cfg").read_text() == "during\n"


def test_sigkill_fails_open_and_mount_works_again(workdir: Path) -> None:
    (workdir / "keep.txt").write_bytes(b"precious")
    mount = CliMount(workdir)
    try:
        (workdir / "during.txt").write_bytes(b"written through the mount")
        # Kill the daemon as soon as its mount shows, whatever it is still starting: the
        # fail-open watchdog is started before mount(2), so no window is left.
        os.kill(mount.proc.pid, signal.SIGKILL)
        mount.proc.wait(10)
        # Nobody runs fusermount: the auto_unmount watchdog must do it.
        wait_for(lambda: not mountinfo.is_dpmsfs_mount(workdir), timeout=10, what="fail-open")
        assert (workdir / "keep.txt").read_bytes() == b"precious"
        assert (workdir / "during.txt").read_bytes() == b"written through the mount"
        (workdir / "after.txt").write_bytes(b"usable")  # the real directory, writable
    finally:
        mount.stop()
    again = CliMount(workdir)
    try:
        assert (workdir / "after.txt").read_bytes() == b"usable"
    finally:
        again.stop()


def test_detached_mount_and_umount(workdir: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "daemon.log"
    result = run_cli("mount", "--log-file", str(log_file), str(workdir))
    try:
        assert result.returncode == 0, result.stderr
        assert mountinfo.is_dpmsfs_mount(workdir)
        second = run_cli("mount", str(workdir))
        assert second.returncode == 5
        assert second.stderr.strip() == f"dpmsfs: {workdir}: already a dpmsfs mount"
        with open(workdir / "held", "w"):
            busy = run_cli("umount", str(workdir))
        assert busy.returncode in (0, 5), busy.stderr
        if mountinfo.is_dpmsfs_mount(workdir):
            done = run_cli("umount", str(workdir))
            assert done.returncode == 0, done.stderr
        assert not mountinfo.is_dpmsfs_mount(workdir)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(workdir)], check=False, capture_output=True)


def test_clear_errors(workdir: Path) -> None:
    missing = run_cli("mount", str(workdir / "nope"))
    assert missing.returncode == 3
    assert missing.stderr.strip().endswith("no such directory")
    (workdir / "file").write_text("")
    not_dir = run_cli("mount", str(workdir / "file"))
    assert not_dir.returncode == 2
    assert not_dir.stderr.strip().endswith("not a directory")
    assert "Traceback" not in missing.stderr + not_dir.stderr
    not_mounted = run_cli("umount", str(workdir))
    assert not_mounted.returncode == 2
    assert "not a dpmsfs mount" in not_mounted.stderr
