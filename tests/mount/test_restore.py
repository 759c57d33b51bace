"""`dpmsfs restore`, `log` and `diff` through the CLI, with the mount running and not."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from dpmsfs import control
from dpmsfs.browse.restore_job import SMALL_ENTRIES
from dpmsfs.config import Config
from dpmsfs.errors import DpmsError
from tests.mount.conftest import CliMount, cli_snapshot, run_cli

MTIME = 1_600_000_000_000_000_000
OWNER = (1234, 2345)


def restore(work: Path, store_dir: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("restore", str(work), "--store", str(store_dir), "--snapshot", name, *args)


def build(work: Path) -> None:
    (work / "pgm" / "src").mkdir(parents=True)
    (work / "pgm" / "src" / "main.cpp").write_text("int main() { return 0; }\n")
    (work / "pgm" / "limits.csv").write_bytes(os.urandom(200_000))
    (work / "h1").write_text("linked")
    os.link(work / "h1", work / "pgm" / "h2")
    os.symlink("pgm/src/main.cpp", work / "link")
    os.mkfifo(work / "fifo", 0o620)
    (work / "tagged").write_text("xattr")
    os.setxattr(work / "tagged", b"user.lot", b"L42")
    os.chmod(work / "pgm" / "limits.csv", 0o640)
    os.chmod(work / "pgm" / "src", 0o750)
    os.chown(work / "pgm" / "src" / "main.cpp", *OWNER)
    os.chown(work / "pgm" / "src", *OWNER)
    os.chown(work / "link", *OWNER, follow_symlinks=False)
    for path in sorted(work.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, ns=(MTIME, MTIME), follow_symlinks=False)


def state(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """path -> (type, mode, uid, gid, mtime_ns, content or target, xattrs)."""
    result: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if key.split("/")[0] in skip:
            continue
        st = path.lstat()
        kind = stat.S_IFMT(st.st_mode)
        data: object = None
        xattrs: dict[str, bytes] = {}
        if stat.S_ISLNK(st.st_mode):
            data = os.readlink(path)
        else:
            if stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
            xattrs = {n: os.getxattr(path, n) for n in os.listxattr(path)}
        mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns  # dirs change on restore
        result[key] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime, data, xattrs)
    return result


def mess_up(work: Path) -> None:
    """Change everything build() made, and add an entry the snapshot does not have."""
    (work / "pgm" / "src" / "main.cpp").write_text("broken")
    os.chmod(work / "pgm" / "limits.csv", 0o666)
    os.chown(work / "pgm" / "src" / "main.cpp", 0, 0)
    os.utime(work / "pgm" / "limits.csv", ns=(1, 1))
    os.unlink(work / "pgm" / "h2")
    (work / "pgm" / "h2").write_text("not a link any more")
    os.unlink(work / "link")
    os.symlink("elsewhere", work / "link")
    os.unlink(work / "fifo")
    os.removexattr(work / "tagged", b"user.lot")
    (work / "extra.txt").write_text("not in the snapshot")
    (work / "newdir").mkdir()
    (work / "newdir" / "x").write_text("x")
    # Fixed mtimes: see test_mtime_of_a_file_written_through_the_mount_is_captured.
    for path in ("pgm/src/main.cpp", "pgm/h2", "extra.txt", "newdir/x", "tagged"):
        os.utime(work / path, ns=(MTIME + 7, MTIME + 7))


def check_restored(work: Path, expected: dict[str, tuple[object, ...]]) -> None:
    assert state(work) == expected
    assert os.lstat(work / "h1").st_ino == os.lstat(work / "pgm" / "h2").st_ino
    assert os.lstat(work / "h1").st_nlink == 2


def snapshot_names(work: Path, store_dir: Path) -> str:
    result = run_cli("snapshots", str(work), "--store", str(store_dir))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_whole_tree_in_place_while_mounted(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    build(work)
    expected = state(work)
    name = cli_snapshot(work, store_dir, "good")
    mess_up(work)
    broken = state(work)

    result = restore(work, store_dir, name)
    assert result.returncode == 0, result.stderr
    check_restored(work, expected)  # extra.txt and newdir are gone
    assert "pre-restore" in result.stdout

    # The pre-restore snapshot holds the state before the restore.
    listing = snapshot_names(work, store_dir)
    pre = [line.split()[0] for line in listing.splitlines() if "pre-restore" in line]
    assert len(pre) == 1, listing
    assert state(work / ".snapshots" / pre[0]) == broken
    # ... and restoring it brings that state back.
    assert restore(work, store_dir, pre[0]).returncode == 0
    assert state(work) == broken
    assert mounted.proc.poll() is None


def test_one_file_and_one_directory_in_place(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    build(work)
    expected = state(work)
    name = cli_snapshot(work, store_dir)
    mess_up(work)

    result = restore(work, store_dir, name, "pgm/src/main.cpp")
    assert result.returncode == 0, result.stderr
    assert state(work)["pgm/src/main.cpp"] == expected["pgm/src/main.cpp"]
    # Small selections are restored by the running daemon (browse/restore_job.py).
    assert f"restored 1 files, 0 directories from {name} into {work} for the CLI" in mounted.log()
    assert (work / "pgm" / "limits.csv").stat().st_mode & 0o777 == 0o666  # not restored
    assert (work / "extra.txt").exists()  # a file restore removes nothing else

    result = restore(work, store_dir, name, str(work / "pgm"))  # absolute path too
    assert result.returncode == 0, result.stderr
    now = state(work)
    for key, value in expected.items():
        if key.startswith("pgm"):
            assert now[key] == value, key
    assert (work / "extra.txt").exists() and (work / "newdir").exists()
    assert "pre-restore" in snapshot_names(work, store_dir)

    # A file deleted since comes back.
    os.unlink(work / "tagged")
    assert restore(work, store_dir, name, "tagged").returncode == 0
    assert state(work)["tagged"] == expected["tagged"]


def test_restore_to_another_directory(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    build(work)
    expected = state(work)
    name = cli_snapshot(work, store_dir)
    mess_up(work)
    before_snapshots = snapshot_names(work, store_dir)
    out = work.parent / "out"

    # Whole tree.
    result = restore(work, store_dir, name, "--to", str(out / "all"))
    assert result.returncode == 0, result.stderr
    check_restored(out / "all", expected)
    # A directory and a file keep their path below the target.
    assert restore(work, store_dir, name, "pgm/src", "--to", str(out / "dir")).returncode == 0
    assert state(out / "dir" / "pgm" / "src") == state(out / "all" / "pgm" / "src")
    assert restore(work, store_dir, name, "tagged", "--to", str(out / "file")).returncode == 0
    assert state(out / "file") == {"tagged": expected["tagged"]}
    # --to takes no pre-restore snapshot and leaves the work directory alone.
    assert snapshot_names(work, store_dir) == before_snapshots
    assert (work / "extra.txt").exists()

    # An existing file is not replaced without --force.
    target = out / "file" / "tagged"
    target.write_text("keep me")
    result = restore(work, store_dir, name, "tagged", "--to", str(out / "file"))
    assert result.returncode == 1
    assert "--force" in result.stderr and "tagged" in result.stderr
    assert target.read_text() == "keep me"
    result = restore(work, store_dir, name, "tagged", "--to", str(out / "file"), "--force")
    assert result.returncode == 0, result.stderr
    assert state(out / "file") == {"tagged": expected["tagged"]}


def test_restore_log_and_diff_unmounted(workdir: Path, store_dir: Path) -> None:
    work = workdir
    build(work)
    expected = state(work)
    mount = CliMount(work, "--store", str(store_dir))
    try:
        first = cli_snapshot(work, store_dir, "one")
        (work / "pgm" / "src" / "main.cpp").write_text("int main() { return 2; }\n")
        (work / "added.txt").write_text("added")
        os.unlink(work / "tagged")
        second = cli_snapshot(work, store_dir, "two")
        (work / "pgm" / "src" / "main.cpp").write_text("int main() { return 3; }\n")
        os.unlink(work / "added.txt")
        third = cli_snapshot(work, store_dir, "three")
        fourth = cli_snapshot(work, store_dir, "four")  # unchanged
    finally:
        mount.stop()

    # log: newest first, with the snapshots holding each version.
    log = run_cli("log", str(work / "pgm" / "src" / "main.cpp"), "--workdir", str(work),
                 "--store", str(store_dir))  # fmt: skip
    assert log.returncode == 0, log.stderr
    lines = log.stdout.splitlines()[1:]
    assert len(lines) == 3, log.stdout
    assert fourth in lines[0] and third in lines[0]
    assert second in lines[1] and first in lines[2]
    assert "four" in lines[0] and "one" in lines[2]
    # ... also for a deleted file.
    log = run_cli("log", str(work / "added.txt"), "--workdir", str(work), "--store", str(store_dir))
    assert log.returncode == 0, log.stderr
    lines = log.stdout.splitlines()[1:]
    assert len(lines) == 1 and second in lines[0]
    missing = run_cli("log", str(work / "never"), "--workdir", str(work), "--store", str(store_dir))
    assert missing.returncode == 3 and len(missing.stderr.splitlines()) == 1

    # diff: + added, - removed, M changed.
    diff = run_cli("diff", str(work), "--store", str(store_dir), first, second)
    assert diff.returncode == 0, diff.stderr
    assert sorted(diff.stdout.splitlines()) == sorted(
        ["+ added.txt", "- tagged", "M pgm/src/main.cpp"]
    )
    diff = run_cli("diff", str(work), "--store", str(store_dir), second, "latest")
    assert sorted(diff.stdout.splitlines()) == ["- added.txt", "M pgm/src/main.cpp"]
    diff = run_cli("diff", str(work), "--store", str(store_dir), third, fourth)
    assert diff.stdout.strip() == ""

    # restore with the mount not running: in place (with pre-restore) and --to.
    (work / "stray").write_text("stray")
    result = restore(work, store_dir, first)
    assert result.returncode == 0, result.stderr
    check_restored(work, expected)
    assert "pre-restore" in snapshot_names(work, store_dir)
    result = restore(work, store_dir, second, "--to", str(work.parent / "out"))
    assert result.returncode == 0, result.stderr
    assert (work.parent / "out" / "added.txt").read_text() == "added"
    # The next mount sees the restored tree as it is.
    mount = CliMount(work, "--store", str(store_dir))
    try:
        check_restored(work, expected)
        latest = cli_snapshot(work, store_dir)
        diff = run_cli("diff", str(work), "--store", str(store_dir), first, latest)
        assert diff.stdout.strip() == "", diff.stdout
    finally:
        mount.stop()


def test_path_errors_are_one_line(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    (work / "a").write_text("a")
    name = cli_snapshot(work, store_dir)
    for args, code in (
        (("../etc/passwd",), 2),
        (("a/../../x",), 2),
        (("/etc/passwd",), 2),
        ((".snapshots/x",), 2),
        (("nope",), 3),
    ):
        result = restore(work, store_dir, name, *args, "--to", str(work.parent / "out"))
        assert result.returncode == code, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    assert not (work.parent / "out" / "etc").exists()
    result = restore(work, store_dir, "2001-01-01T000000Z")
    assert result.returncode == 3 and len(result.stderr.strip().splitlines()) == 1


def test_mtime_of_a_file_written_through_the_mount_is_captured(
    mounted: CliMount, store_dir: Path
) -> None:
    work = mounted.workdir
    for i in range(5):
        (work / f"f{i}").write_bytes(os.urandom(100_000))
    seen = {f"f{i}": os.lstat(work / f"f{i}").st_mtime_ns for i in range(5)}
    name = cli_snapshot(work, store_dir)
    captured = {k: os.lstat(work / ".snapshots" / name / k).st_mtime_ns for k in seen}
    assert captured == seen


def test_large_selection_is_restored_by_the_cli(mounted: CliMount, store_dir: Path) -> None:
    """Above SMALL_ENTRIES the daemon declines and the CLI restores, with the same result."""
    work = mounted.workdir
    (work / "many").mkdir()
    for i in range(SMALL_ENTRIES + 10):
        (work / "many" / f"f{i:03d}").write_text(str(i))
    (work / "one.txt").write_text("one")
    name = cli_snapshot(work, store_dir)
    out = work.parent / "out"

    assert restore(work, store_dir, name, "many", "--to", str(out)).returncode == 0
    assert sorted(p.name for p in (out / "many").iterdir()) == sorted(
        f"f{i:03d}" for i in range(SMALL_ENTRIES + 10)
    )
    assert (out / "many" / "f123").read_text() == "123"
    assert "for the CLI" not in mounted.log()
    assert restore(work, store_dir, name, "one.txt", "--to", str(out)).returncode == 0
    assert "restored 1 files" in mounted.log()


def test_daemon_refuses_bad_restore_requests(mounted: CliMount, store_dir: Path) -> None:
    """The control socket is root-only, but a bad request must still never write
    outside its target nor take the daemon down."""
    work = mounted.workdir
    (work / "a").write_text("a")
    name = cli_snapshot(work, store_dir)
    socket_path = Config(workdir=work, store=store_dir).control_socket
    outside = work.parent / "outside"
    good = {"cmd": "restore", "snapshot": name, "paths": ["a"], "to": None, "force": False}
    bad: list[tuple[dict[str, object], str]] = [
        ({**good, "paths": ["../outside/a"]}, "'..' is not allowed"),
        ({**good, "paths": ["/etc/passwd"]}, "relative to the work directory"),
        ({**good, "paths": ["a\0b"]}, "NUL"),
        ({**good, "paths": [".snapshots/x"]}, "not of .snapshots"),
        ({**good, "paths": "a"}, "malformed request"),
        ({**good, "paths": []}, "malformed request"),
        ({**good, "snapshot": 7}, "malformed request"),
        ({**good, "to": "relative/dir"}, "malformed request"),
        ({**good, "to": str(outside)}, "no such directory"),
        ({**good, "force": "yes"}, "malformed request"),
        ({**good, "snapshot": "1999-01-01T000000Z"}, "no snapshot named"),
        ({**good, "paths": ["missing"]}, "is not in snapshot"),
    ]
    for request, message in bad:
        with pytest.raises(DpmsError) as info:
            control.call(socket_path, request)
        assert message in str(info.value), (request, str(info.value))
    assert not outside.exists()
    assert mounted.proc.poll() is None
    reply = control.call(socket_path, {**good, "to": str(work.parent)})
    assert reply["delegated"] and (work.parent / "a").read_text() == "a"
