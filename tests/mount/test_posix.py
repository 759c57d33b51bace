"""POSIX behaviour of the mount, compared with the native file system.

Every case runs the same operation on a plain directory (`native`) and through the
mount (`mount`) and asserts the same result: the return value, or the same errno, and
the same resulting metadata. Where it matters, what the mount reports is also compared
with the real file underneath (`under`), reached through a descriptor opened before
mounting.

The whole module runs twice: with the default descriptor budget, and with the minimum
(16) over a tree of many more directories, where `churn()` between the native and the
mounted operation evicts the directory descriptors the case is working in, so every
operation goes through eviction and reopening.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dpmsfs.fs import syscalls
from tests.mount.conftest import ON_PYFUSE3, MountedPair, wait_for

Outcome = tuple[str, Any]


def outcome(op: Callable[[Path], Any], root: Path) -> Outcome:
    """("ok", value) or ("err", errno name): what a program would observe."""
    try:
        return ("ok", op(root))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno or 0, str(exc.errno)))


def meta(st: os.stat_result) -> dict[str, int]:
    """The stat fields that must equal the native ones (not inode numbers or times)."""
    return {
        "type": stat.S_IFMT(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "nlink": st.st_nlink,
        "size": st.st_size if not stat.S_ISDIR(st.st_mode) else -1,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "rdev": st.st_rdev,
    }


def lmeta(path: Path) -> dict[str, int]:
    return meta(os.lstat(path))


def true_meta(st: os.stat_result, times: bool) -> dict[str, int]:
    """Fields the mount must report exactly as the real file underneath has them."""
    fields = meta(st)
    fields["size"] = st.st_size
    fields["ino"] = st.st_ino
    fields["blocks"] = st.st_blocks
    if times:
        fields["mtime_ns"] = st.st_mtime_ns
    return fields


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, path: Path) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


def lchmod(path: Path, mode: int) -> None:
    """fchmodat(AT_SYMLINK_NOFOLLOW): os.chmod(follow_symlinks=False) is not on Linux."""
    _check(_libc.fchmodat(syscalls.AT_FDCWD, bytes(path), mode, syscalls.AT_SYMLINK_NOFOLLOW), path)


def link_following(src: str, dst: Path) -> None:
    """linkat(AT_SYMLINK_FOLLOW): os.link calls link(2), which does not follow."""
    _check(_libc.linkat(syscalls.AT_FDCWD, src.encode(), syscalls.AT_FDCWD, bytes(dst), 0x400), dst)


def tree(root: Path) -> dict[bytes, dict[str, Any]]:
    """Everything observable below `root` except inode numbers and unset times."""
    result: dict[bytes, dict[str, Any]] = {}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            entry: dict[str, Any] = meta(st)
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    entry["content"] = f.read()
            if not stat.S_ISLNK(st.st_mode):
                entry["xattrs"] = {n: os.getxattr(full, n) for n in sorted(os.listxattr(full))}
            result[os.path.relpath(full, broot)] = entry
    return result


@dataclass
class Case:
    """One test's directories: `native`, `mount`, and `under` (beneath the mount)."""

    env: MountedPair
    native: Path
    mount: Path
    under: Path

    def both(self, op: Callable[[Path], Any]) -> Any:
        """Run `op` on the native and on the mounted directory; the outcomes must agree."""
        native = outcome(op, self.native)
        self.env.churn()
        mounted = outcome(op, self.mount)
        assert mounted == native, f"mount gave {mounted}, native {native}"
        return native[1]

    def fails(self, op: Callable[[Path], Any], err: int) -> None:
        """Both fail with `err` (so the case tests something that could fail)."""
        assert self.both(op) == errno.errorcode[err]

    def same_tree(self) -> None:
        self.env.churn()
        assert tree(self.mount) == tree(self.native)

    def same_as_under(self, *names: str, times: bool = False) -> None:
        """What the mount reports for `names` equals the real files beneath it
        (mtime too with `times`, for files whose times were set explicitly last)."""
        os.sync()  # the writeback cache hands dirty pages and times to the daemon
        for name in names:
            mounted = true_meta(os.lstat(self.mount / name), times)
            real = true_meta(os.lstat(self.under / name), times)
            assert mounted == real, name


_counter = itertools.count()


@pytest.fixture
def case(env: MountedPair) -> Case:
    name = f"t{next(_counter):04d}"
    (env.native / name).mkdir()
    (env.mount / name).mkdir()
    return Case(env, env.native / name, env.mount / name, env.under / name)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- files: create, open flags, read, write -----------------------------------------------


def test_create_write_read_close(case: Case) -> None:
    def op(d: Path) -> Any:
        fd = os.open(d / "f", os.O_CREAT | os.O_WRONLY, 0o640)
        assert os.write(fd, b"hello ") == 6
        assert os.write(fd, b"world") == 5
        os.fsync(fd)
        os.close(fd)
        fd = os.open(d / "f", os.O_RDWR)
        try:
            first = os.read(fd, 5)
            os.lseek(fd, 2, os.SEEK_SET)
            os.write(fd, b"L")
            rest = os.pread(fd, 100, 0)
            return first, rest, os.fstat(fd).st_size, lmeta(d / "f")
        finally:
            os.close(fd)

    assert case.both(op)[1] == b"heLlo world"
    case.same_tree()
    case.same_as_under("f")


def test_read_only_open_cannot_write(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "f", b"abc")
        fd = os.open(d / "f", os.O_RDONLY)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)

    case.fails(op, errno.EBADF)

    def wronly_read(d: Path) -> Any:
        fd = os.open(d / "f", os.O_WRONLY)
        try:
            return os.read(fd, 1)
        finally:
            os.close(fd)

    case.fails(wronly_read, errno.EBADF)


def test_append(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "f", b"start.")
        fd = os.open(d / "f", os.O_WRONLY | os.O_APPEND)
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, b"one.")
            pos = os.lseek(fd, 0, os.SEEK_CUR)
        finally:
            os.close(fd)
        return pos, read_file(d / "f")

    assert case.both(op) == (10, b"start.one.")


def test_two_appenders_interleave(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "log", b"")
        a = os.open(d / "log", os.O_WRONLY | os.O_APPEND)
        b = os.open(d / "log", os.O_RDWR | os.O_APPEND)
        try:
            for i in range(50):
                os.write(a, b"A%02d\n" % i)
                os.write(b, b"B%02d-\n" % i)
        finally:
            os.close(a)
            os.close(b)
        return read_file(d / "log")

    data = case.both(op)
    assert len(data) == 50 * 9
    case.same_as_under("log")


def test_o_trunc(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "f", b"0123456789")
        fd = os.open(d / "f", os.O_RDWR | os.O_TRUNC)
        try:
            size = os.fstat(fd).st_size
            os.write(fd, b"ab")
        finally:
            os.close(fd)
        # O_TRUNC on a read-only open of a file is allowed by Linux and truncates.
        return size, read_file(d / "f")

    assert case.both(op) == (0, b"ab")
    case.same_as_under("f")


def test_o_excl(case: Case) -> None:
    for d in (case.native, case.mount):
        write_file(d / "f", b"x")
        os.symlink("nowhere", d / "dangling")
        os.mkdir(d / "dir")
    for name in ("f", "dangling", "dir"):
        case.fails(
            lambda d, name=name: os.close(os.open(d / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)),
            errno.EEXIST,
        )
    # Without O_EXCL, O_CREAT follows a dangling symlink and creates its target.
    case.both(lambda d: os.close(os.open(d / "dangling", os.O_CREAT | os.O_WRONLY, 0o600)))
    case.fails(lambda d: os.open(d / "dir", os.O_CREAT | os.O_WRONLY), errno.EISDIR)
    case.fails(lambda d: os.open(d / "missing", os.O_RDONLY), errno.ENOENT)
    case.fails(lambda d: os.open(d / "f" / "x", os.O_RDONLY), errno.ENOTDIR)
    case.fails(lambda d: os.open(d / "f", os.O_RDONLY | os.O_DIRECTORY), errno.ENOTDIR)
    case.fails(lambda d: os.open(d / "dangling", os.O_RDONLY | os.O_NOFOLLOW), errno.ELOOP)
    case.same_tree()


def test_truncate_up_and_down(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "f", b"abcdefgh")
        os.truncate(d / "f", 3)
        small = read_file(d / "f")
        os.truncate(d / "f", 10)
        big = read_file(d / "f")
        fd = os.open(d / "f", os.O_RDWR)
        try:
            os.ftruncate(fd, 5)
            os.pwrite(fd, b"Z", 7)
        finally:
            os.close(fd)
        return small, big, read_file(d / "f")

    assert case.both(op) == (b"abc", b"abc" + bytes(7), b"abc\0\0\0\0Z")
    case.fails(lambda d: os.truncate(d, 0), errno.EISDIR)
    case.fails(lambda d: os.truncate(d / "f", -1), errno.EINVAL)
    case.same_as_under("f")


def test_sparse_file(case: Case) -> None:
    hole = 8 << 20

    def op(d: Path) -> Any:
        fd = os.open(d / "sparse", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.lseek(fd, hole, os.SEEK_SET)
            os.write(fd, b"end")
            os.fsync(fd)
            st = os.fstat(fd)
            assert st.st_blocks * 512 < st.st_size // 100, "the hole was written"
            zeros = os.pread(fd, 65536, hole // 2)
            return st.st_size, zeros == bytes(65536), os.pread(fd, 10, hole)
        finally:
            os.close(fd)

    assert case.both(op) == (hole + 3, True, b"end")
    case.same_as_under("sparse")


@pytest.mark.xfail(
    ON_PYFUSE3,
    strict=True,
    reason="pyfuse3 3.5 does not implement FUSE_LSEEK: the kernel falls back to "
    "generic_file_llseek, for which the whole file is data (SEEK_DATA 0, SEEK_HOLE at EOF)",
)
def test_seek_data_and_hole(case: Case) -> None:
    hole = 8 << 20

    def op(d: Path) -> Any:
        fd = os.open(d / "sparse", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.pwrite(fd, b"start", 0)
            os.pwrite(fd, b"end", hole)
            os.fsync(fd)
            return os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, 4096, os.SEEK_DATA)
        finally:
            os.close(fd)

    assert case.both(op) == (4096, hole)


def test_fsync_fdatasync_and_directory_fsync(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "f", b"x")
        fd = os.open(d / "f", os.O_RDWR)
        try:
            os.write(fd, b"y")
            os.fsync(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
            os.fdatasync(dfd)
        finally:
            os.close(dfd)
        return read_file(d / "f")

    assert case.both(op) == b"y"


# --- shared writable mmap -----------------------------------------------------------------

# The client runs in its own process: in this one, a page fault on the mapped file while
# holding the GIL would wait for the daemon thread, which needs the GIL.
_MMAP_CLIENT = textwrap.dedent(
    """
    import mmap, os, sys
    path = sys.argv[1]
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0:5] = b"MMAP!"
    m[8000:8003] = b"end"
    m.flush()
    seen = os.pread(fd, 5, 0) + os.pread(fd, 3, 8000)
    os.pwrite(fd, b"write", 100)
    seen += m[100:105]
    m.close()
    os.close(fd)
    sys.stdout.write(seen.decode())
    """
)


def test_shared_writable_mmap(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "m", bytes(8192))
        out = subprocess.run(
            [sys.executable, "-c", _MMAP_CLIENT, str(d / "m")],
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        return out, read_file(d / "m")

    seen, content = case.both(op)
    assert seen == b"MMAP!endwrite"
    assert content[:5] == b"MMAP!" and content[100:105] == b"write"
    case.same_as_under("m")


def test_mmap_in_this_process_reads_pages_populated_by_write(case: Case) -> None:
    # Read-only mapping of pages already in the page cache never waits for the daemon.
    def op(d: Path) -> Any:
        write_file(d / "r", b"abc" * 1000)
        with open(d / "r", "rb") as f:
            f.read()
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                return bytes(m[:6]), len(m)

    assert case.both(op) == (b"abcabc", 3000)


# --- attributes: chmod, chown, utimes -----------------------------------------------------


@pytest.mark.parametrize("mode", [0o000, 0o644, 0o4755, 0o2755, 0o6711, 0o1777, 0o7777])
def test_chmod(case: Case, mode: int) -> None:
    def op(d: Path) -> Any:
        write_file(d / "f", b"x")
        os.mkdir(d / "dir")
        os.chmod(d / "f", mode)
        os.chmod(d / "dir", mode)
        fd = os.open(d / "f", os.O_RDONLY)
        try:
            os.fchmod(fd, mode & ~0o002)
        finally:
            os.close(fd)
        return lmeta(d / "f"), lmeta(d / "dir")

    case.both(op)
    case.same_as_under("f", "dir")


def test_chmod_of_symlink_itself_fails(case: Case) -> None:
    for d in (case.native, case.mount):
        os.symlink("target", d / "l")
    case.fails(lambda d: lchmod(d / "l", 0o600), errno.EOPNOTSUPP)


def test_chown(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "f", b"x")
        os.mkdir(d / "dir")
        os.symlink("f", d / "l")
        steps = []
        os.chown(d / "f", 1234, -1)
        steps.append(lmeta(d / "f"))
        os.chown(d / "f", -1, 5678)
        steps.append(lmeta(d / "f"))
        os.chown(d / "f", -1, -1)
        steps.append(lmeta(d / "f"))
        os.chown(d / "dir", 42, 43)
        os.chown(d / "l", 7, 8, follow_symlinks=False)
        steps.append((lmeta(d / "dir"), lmeta(d / "l"), lmeta(d / "f")))
        # chown clears set-user-ID, and set-group-ID on group-executable files.
        os.chmod(d / "f", 0o6755)
        os.chown(d / "f", 1, 1)
        steps.append(lmeta(d / "f"))
        os.chmod(d / "f", 0o6745)
        os.chown(d / "f", 2, -1)
        steps.append(lmeta(d / "f"))
        return steps

    steps = case.both(op)
    assert steps[0]["uid"] == 1234 and steps[1]["gid"] == 5678 and steps[2] == steps[1]
    assert steps[4]["mode"] == 0o755
    case.same_as_under("f", "dir", "l")


def test_utimes(case: Case) -> None:
    t1, t2 = 1_000_000_123_456_789, 1_500_000_987_654_321

    def op(d: Path) -> Any:
        write_file(d / "f", b"x")
        os.symlink("f", d / "l")
        os.utime(d / "f", ns=(t1, t2))
        explicit = os.stat(d / "f")
        # UTIME_OMIT for atime, explicit mtime; then explicit atime, UTIME_OMIT mtime.
        syscalls.utimensat(syscalls.AT_FDCWD, bytes(d / "f"), None, t1, 0)
        omit_a = os.stat(d / "f")
        syscalls.utimensat(syscalls.AT_FDCWD, bytes(d / "f"), t2, None, 0)
        omit_m = os.stat(d / "f")
        before = time.time_ns()
        syscalls.utimensat(syscalls.AT_FDCWD, bytes(d / "f"), None, None, 0, mtime_now=True)
        after = time.time_ns()
        now = os.stat(d / "f")
        os.utime(d / "l", ns=(t2, t1), follow_symlinks=False)
        link = os.lstat(d / "l")
        return (
            (explicit.st_atime_ns, explicit.st_mtime_ns),
            (omit_a.st_atime_ns, omit_a.st_mtime_ns),
            (omit_m.st_atime_ns, omit_m.st_mtime_ns),
            now.st_atime_ns,
            before - 10_000_000 <= now.st_mtime_ns <= after + 10_000_000,
            (link.st_atime_ns, link.st_mtime_ns),
            os.stat(d / "f").st_mtime_ns == now.st_mtime_ns,
        )

    result = case.both(op)
    assert result[0] == (t1, t2) and result[1] == (t1, t1) and result[2] == (t2, t1)
    assert result[3] == t2 and result[4] and result[5] == (t2, t1)
    case.same_as_under("f", "l")


def test_utime_now_both(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "f", b"x")
        os.utime(d / "f", ns=(5, 5))
        before = time.time_ns()
        os.utime(d / "f")
        st = os.stat(d / "f")
        return before - 10_000_000 <= st.st_atime_ns and before - 10_000_000 <= st.st_mtime_ns

    assert case.both(op) is True


# --- directories and names ----------------------------------------------------------------


def test_mkdir_rmdir_unlink(case: Case) -> None:
    case.both(lambda d: os.mkdir(d / "a", 0o750))
    case.both(lambda d: lmeta(d / "a"))
    case.fails(lambda d: os.mkdir(d / "a"), errno.EEXIST)
    case.both(lambda d: write_file(d / "a" / "f", b"1"))
    case.fails(lambda d: os.rmdir(d / "a"), errno.ENOTEMPTY)
    case.fails(lambda d: os.unlink(d / "a"), errno.EISDIR)
    case.fails(lambda d: os.rmdir(d / "a" / "f"), errno.ENOTDIR)
    case.fails(lambda d: os.rmdir(d / "missing"), errno.ENOENT)
    case.fails(lambda d: os.unlink(d / "missing"), errno.ENOENT)
    case.fails(lambda d: os.mkdir(d / "missing" / "x"), errno.ENOENT)
    case.fails(lambda d: os.rmdir(os.path.join(d, "a", ".")), errno.EINVAL)
    case.fails(lambda d: os.rmdir(os.path.join(d, "a", "..")), errno.ENOTEMPTY)
    case.both(lambda d: os.unlink(d / "a" / "f"))
    case.both(lambda d: lmeta(d))
    case.both(lambda d: os.rmdir(d / "a"))
    case.fails(lambda d: os.stat(d / "a"), errno.ENOENT)
    case.both(lambda d: os.mkdir(d / "a"))  # the same name again, a new directory
    case.same_tree()


def test_rename_cases(case: Case) -> None:
    def setup(d: Path) -> None:
        write_file(d / "f1", b"one")
        write_file(d / "f2", b"two")
        os.mkdir(d / "d1")
        write_file(d / "d1" / "inner", b"in")
        os.mkdir(d / "empty")
        os.mkdir(d / "full")
        write_file(d / "full" / "x", b"x")
        os.mkdir(d / "d1" / "sub")

    case.both(setup)
    case.both(lambda d: os.rename(d / "f1", d / "f2"))  # file over file
    case.both(lambda d: read_file(d / "f2"))
    case.both(lambda d: os.rename(d / "d1", d / "empty"))  # dir over empty dir
    case.fails(lambda d: os.rename(d / "empty", d / "full"), errno.ENOTEMPTY)
    case.fails(lambda d: os.rename(d / "f2", d / "full"), errno.EISDIR)
    case.fails(lambda d: os.rename(d / "full", d / "f2"), errno.ENOTDIR)
    case.both(lambda d: os.rename(d / "f2", d / "f2"))  # onto itself
    case.both(lambda d: os.rename(d / "empty", d / "empty"))
    case.fails(lambda d: os.rename(d / "empty", d / "empty" / "sub" / "x"), errno.EINVAL)
    case.fails(lambda d: os.rename(d / "missing", d / "x"), errno.ENOENT)
    case.both(lambda d: os.rename(d / "empty" / "inner", d / "full" / "moved"))  # across dirs
    case.both(lambda d: os.rename(d / "empty" / "sub", d / "sub"))
    case.both(lambda d: os.rename(d / "full", d / "sub" / "full"))
    case.both(lambda d: read_file(d / "sub" / "full" / "moved"))
    case.same_tree()


def test_rename_hard_links_of_same_inode_is_a_noop(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "a", b"a")
        os.link(d / "a", d / "b")
        os.rename(d / "a", d / "b")
        return sorted(os.listdir(d)), os.stat(d / "a").st_nlink

    assert case.both(op) == (["a", "b"], 2)
    case.same_tree()


def test_renameat2_noreplace_and_exchange(case: Case) -> None:
    def r2(d: Path, a: str, b: str, flags: int) -> None:
        syscalls.renameat2(syscalls.AT_FDCWD, bytes(d / a), syscalls.AT_FDCWD, bytes(d / b), flags)

    def setup(d: Path) -> None:
        write_file(d / "a", b"AAA")
        write_file(d / "b", b"BBBBB", 0o600)
        os.mkdir(d / "da")
        write_file(d / "da" / "in_a", b"1")
        os.mkdir(d / "db")
        os.mkdir(d / "db" / "in_b")

    case.both(setup)
    case.fails(lambda d: r2(d, "a", "b", syscalls.RENAME_NOREPLACE), errno.EEXIST)
    case.fails(lambda d: r2(d, "da", "db", syscalls.RENAME_NOREPLACE), errno.EEXIST)
    case.both(lambda d: r2(d, "a", "c", syscalls.RENAME_NOREPLACE))
    case.both(lambda d: r2(d, "c", "b", syscalls.RENAME_EXCHANGE))
    assert case.both(lambda d: (read_file(d / "b"), read_file(d / "c"))) == (b"AAA", b"BBBBB")
    case.both(lambda d: r2(d, "da", "db", syscalls.RENAME_EXCHANGE))
    assert case.both(lambda d: (os.listdir(d / "da"), os.listdir(d / "db"))) == (
        ["in_b"],
        ["in_a"],
    )
    case.both(lambda d: r2(d, "b", "db", syscalls.RENAME_EXCHANGE))  # file <-> dir
    case.fails(lambda d: r2(d, "b", "missing", syscalls.RENAME_EXCHANGE), errno.ENOENT)
    case.fails(
        lambda d: r2(d, "b", "c", syscalls.RENAME_EXCHANGE | syscalls.RENAME_NOREPLACE),
        errno.EINVAL,
    )
    # Files reached by the names they had before the exchange still work afterwards.
    case.both(lambda d: write_file(d / "c", b"changed"))
    case.both(lambda d: write_file(d / "b" / "in_b" / "deeper", b"deep"))
    case.same_tree()
    case.same_as_under("b", "c", "da", "db", "b/in_a", "da/in_b")


def test_exchange_keeps_open_files_and_paths(case: Case) -> None:
    def op(d: Path) -> Any:
        os.mkdir(d / "x")
        os.mkdir(d / "y")
        write_file(d / "x" / "f", b"x-file")
        write_file(d / "y" / "f", b"y-file")
        fd = os.open(d / "x" / "f", os.O_RDWR)
        try:
            syscalls.renameat2(
                syscalls.AT_FDCWD,
                bytes(d / "x"),
                syscalls.AT_FDCWD,
                bytes(d / "y"),
                syscalls.RENAME_EXCHANGE,
            )
            os.pwrite(fd, b"X", 0)
        finally:
            os.close(fd)
        return read_file(d / "y" / "f"), read_file(d / "x" / "f")

    assert case.both(op) == (b"X-file", b"y-file")
    case.same_tree()


def test_hard_links(case: Case) -> None:
    case.both(lambda d: write_file(d / "a", b"shared"))
    case.both(lambda d: os.link(d / "a", d / "b"))
    case.both(lambda d: os.mkdir(d / "sub"))
    case.both(lambda d: os.link(d / "b", d / "sub" / "c"))
    assert case.both(lambda d: [os.stat(d / n).st_nlink for n in ("a", "b", "sub/c")]) == [3] * 3
    assert case.both(lambda d: len({os.stat(d / n).st_ino for n in ("a", "b", "sub/c")})) == 1
    case.both(lambda d: write_file(d / "sub" / "c", b"changed via c"))
    assert case.both(lambda d: read_file(d / "a")) == b"changed via c"
    case.both(lambda d: os.unlink(d / "a"))
    assert case.both(lambda d: (os.stat(d / "b").st_nlink, read_file(d / "b"))) == (
        2,
        b"changed via c",
    )
    case.fails(lambda d: os.link(d / "a", d / "z"), errno.ENOENT)
    case.fails(lambda d: os.link(d / "b", d / "sub" / "c"), errno.EEXIST)
    case.fails(lambda d: os.link(d / "sub", d / "sublink"), errno.EPERM)
    case.both(lambda d: os.rename(d / "b", d / "renamed"))
    case.both(lambda d: os.unlink(d / "sub" / "c"))
    assert case.both(lambda d: os.stat(d / "renamed").st_nlink) == 1
    case.same_tree()
    case.same_as_under("renamed")


def test_link_of_open_unlinked_file_fails(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "gone", b"data")
        fd = os.open(d / "gone", os.O_RDWR)
        try:
            os.unlink(d / "gone")
            link_following(f"/proc/self/fd/{fd}", d / "back")
        finally:
            os.close(fd)

    case.fails(op, errno.ENOENT)
    case.same_tree()


def test_link_of_symlink_links_the_symlink(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "t", b"t")
        os.symlink("t", d / "s")
        os.link(d / "s", d / "s2", follow_symlinks=False)
        return os.readlink(d / "s2"), os.lstat(d / "s").st_nlink

    assert case.both(op) == ("t", 2)
    case.same_tree()


def test_symlinks(case: Case) -> None:
    def setup(d: Path) -> None:
        os.mkdir(d / "dir")
        write_file(d / "dir" / "target", b"T", 0o600)
        os.symlink("dir/target", d / "rel")
        os.symlink(str(case.env.base / "abs-target"), d / "abs")
        os.symlink("no/such/thing", d / "dangling")
        os.symlink("dir", d / "dirlink")
        os.symlink("loop", d / "loop")
        os.symlink("x" * 4000, d / "long")

    write_file(case.env.base / "abs-target", b"T")
    case.both(setup)
    assert case.both(lambda d: os.readlink(d / "rel")) == "dir/target"
    assert case.both(lambda d: read_file(d / "rel")) == b"T"
    assert case.both(lambda d: read_file(d / "abs")) == b"T"
    assert case.both(lambda d: os.readlink(d / "long")) == "x" * 4000
    case.fails(lambda d: read_file(d / "dangling"), errno.ENOENT)
    case.fails(lambda d: os.stat(d / "loop"), errno.ELOOP)
    case.fails(lambda d: os.readlink(d / "dir"), errno.EINVAL)
    case.fails(lambda d: os.symlink("x", d / "rel"), errno.EEXIST)
    assert case.both(lambda d: (meta(os.stat(d / "rel")), lmeta(d / "rel")))[1]["type"] == (
        stat.S_IFLNK
    )
    assert case.both(lambda d: lmeta(d / "rel"))["size"] == len("dir/target")
    assert case.both(lambda d: os.listdir(d / "dirlink")) == ["target"]
    case.both(lambda d: write_file(d / "dangling", b"made"))  # creates through the link
    case.fails(lambda d: os.open(d / "abs", os.O_RDONLY | os.O_NOFOLLOW), errno.ELOOP)
    case.same_tree()
    case.same_as_under("rel", "dangling", "long")


def test_special_files(case: Case) -> None:
    def op(d: Path) -> Any:
        os.mkfifo(d / "fifo", 0o640)
        os.mknod(d / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(d / "plain", stat.S_IFREG | 0o600)
        return lmeta(d / "fifo"), lmeta(d / "null"), lmeta(d / "plain")

    case.both(op)

    def use(d: Path) -> Any:
        fd = os.open(d / "null", os.O_RDWR)
        try:
            return os.write(fd, b"discarded"), os.read(fd, 10)
        finally:
            os.close(fd)

    assert case.both(use) == (9, b"")

    def fifo(d: Path) -> Any:
        r = os.open(d / "fifo", os.O_RDONLY | os.O_NONBLOCK)
        w = os.open(d / "fifo", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(w, b"through the pipe")
            return os.read(r, 100)
        finally:
            os.close(w)
            os.close(r)

    assert case.both(fifo) == b"through the pipe"
    case.same_tree()
    case.same_as_under("fifo", "null", "plain")


def test_unix_socket_file(case: Case) -> None:
    def op(d: Path) -> Any:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(d / "sock"))
            server.listen(1)
            client.connect(str(d / "sock"))
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                got = conn.recv(4)
            return got, lmeta(d / "sock")["type"]
        finally:
            client.close()
            server.close()

    assert case.both(op) == (b"ping", stat.S_IFSOCK)

    def rebind(d: Path) -> None:
        with socket.socket(socket.AF_UNIX) as again:
            again.bind(str(d / "sock"))

    case.fails(rebind, errno.EADDRINUSE)
    case.same_as_under("sock")


# --- extended attributes ------------------------------------------------------------------


def test_xattrs(case: Case) -> None:
    case.both(lambda d: write_file(d / "f", b"x"))
    case.both(lambda d: os.mkdir(d / "dir"))
    for name in ("f", "dir"):
        case.both(lambda d, n=name: os.setxattr(d / n, "user.a", b"1"))
        case.both(lambda d, n=name: os.setxattr(d / n, "user.b", b"\0binary\xff" * 100))
        assert case.both(lambda d, n=name: os.getxattr(d / n, "user.a")) == b"1"
        assert case.both(lambda d, n=name: sorted(os.listxattr(d / n))) == ["user.a", "user.b"]
        case.fails(lambda d, n=name: os.getxattr(d / n, "user.missing"), errno.ENODATA)
        case.fails(lambda d, n=name: os.removexattr(d / n, "user.missing"), errno.ENODATA)
        case.fails(
            lambda d, n=name: os.setxattr(d / n, "user.a", b"2", os.XATTR_CREATE), errno.EEXIST
        )
        case.fails(
            lambda d, n=name: os.setxattr(d / n, "user.new", b"2", os.XATTR_REPLACE),
            errno.ENODATA,
        )
        case.both(lambda d, n=name: os.setxattr(d / n, "user.a", b"22", os.XATTR_REPLACE))
        case.both(lambda d, n=name: os.setxattr(d / n, "user.c", b"", os.XATTR_CREATE))
        case.both(lambda d, n=name: os.removexattr(d / n, "user.b"))
        assert case.both(lambda d, n=name: sorted(os.listxattr(d / n))) == ["user.a", "user.c"]
        case.fails(lambda d, n=name: os.setxattr(d / n, "nonamespace", b"1"), errno.EOPNOTSUPP)
    case.same_tree()


def test_xattr_on_symlink(case: Case) -> None:
    case.both(lambda d: os.symlink("nowhere", d / "l"))
    case.fails(lambda d: os.setxattr(d / "l", "user.a", b"1", follow_symlinks=False), errno.EPERM)
    case.both(lambda d: os.listxattr(d / "l", follow_symlinks=False))
    case.fails(lambda d: os.getxattr(d / "l", "user.a", follow_symlinks=False), errno.ENODATA)


def test_xattr_size_query(case: Case) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    libc.getxattr.restype = ctypes.c_ssize_t

    def op(d: Path) -> Any:
        write_file(d / "f", b"x")
        os.setxattr(d / "f", "user.big", b"v" * 300)
        size = libc.getxattr(bytes(d / "f"), b"user.big", None, 0)
        buf = ctypes.create_string_buffer(10)
        small = libc.getxattr(bytes(d / "f"), b"user.big", buf, 10)
        return size, small, ctypes.get_errno() if small < 0 else 0

    assert case.both(op) == (300, -1, errno.ERANGE)


# --- the file system and names ------------------------------------------------------------


def test_statvfs(case: Case) -> None:
    native = os.statvfs(case.native)
    mounted = os.statvfs(case.mount)
    assert mounted.f_namemax == native.f_namemax == 255
    assert mounted.f_bsize == native.f_bsize
    assert mounted.f_frsize == native.f_frsize
    assert mounted.f_blocks == native.f_blocks
    assert mounted.f_files == native.f_files


def test_name_length_limits(case: Case) -> None:
    name255 = "n" * 255
    name256 = "n" * 256
    case.both(lambda d: write_file(d / name255, b"ok"))
    case.both(lambda d: os.mkdir(d / ("d" * 255)))
    case.both(lambda d: os.symlink(name255, d / ("s" * 255)))
    assert case.both(lambda d: read_file(d / ("s" * 255))) == b"ok"
    case.fails(lambda d: write_file(d / name256, b"no"), errno.ENAMETOOLONG)
    case.fails(lambda d: os.mkdir(d / name256), errno.ENAMETOOLONG)
    case.fails(lambda d: os.stat(d / name256), errno.ENAMETOOLONG)
    case.fails(lambda d: os.rename(d / name255, d / name256), errno.ENAMETOOLONG)
    # A multi-byte UTF-8 name: the limit is in bytes.
    case.both(lambda d: write_file(d / ("é" * 127), b"254 bytes"))
    case.fails(lambda d: write_file(d / ("é" * 128), b"256 bytes"), errno.ENAMETOOLONG)
    case.same_tree()


def test_non_utf8_names(case: Case) -> None:
    names = [b"latin1-\xe9t\xe9", b"\xff\xfe", b"mixed-\xc3\x28", b"ctrl-\x01\x7f", b"sp ace\n"]

    def op(d: Path) -> Any:
        bd = bytes(d)
        for name in names:
            fd = os.open(bd + b"/" + name, os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, name)
            os.close(fd)
        os.mkdir(bd + b"/dir-\xfa")
        os.rename(bd + b"/" + names[0], bd + b"/dir-\xfa/\x80")
        listing = sorted(os.listdir(bd))
        with open(bd + b"/dir-\xfa/\x80", "rb") as f:
            return listing, f.read(), sorted(os.listdir(bd + b"/dir-\xfa"))

    assert case.both(op)[1] == names[0]
    case.same_tree()


def test_paths_near_path_max(case: Case) -> None:
    component = "c" * 200
    depth = 20  # ~ 4,000 bytes below the case directory

    def op(d: Path) -> Any:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(depth):
                os.mkdir(component, dir_fd=fd)
                new = os.open(component, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = new
            full = os.readlink(f"/proc/self/fd/{fd}")
            f = os.open("file", os.O_CREAT | os.O_RDWR, 0o600, dir_fd=fd)
            os.write(f, b"deep")
            os.close(f)
            os.rename("file", "renamed", src_dir_fd=fd, dst_dir_fd=fd)
            os.symlink("renamed", "link", dir_fd=fd)
            os.mkdir("sub", dir_fd=fd)
            os.rmdir("sub", dir_fd=fd)
            st = os.stat("link", dir_fd=fd)
            names = sorted(os.listdir(fd))
            # The whole path is too long to use as one.
            try:
                os.stat(full + "/" + component + "/" + component + "/renamed")
                too_long = "no error"
            except OSError as exc:
                too_long = errno.errorcode[exc.errno or 0]
            cwd = os.getcwd()
            os.fchdir(fd)
            try:
                with open("renamed", "rb") as g:
                    relative = g.read()
            finally:
                os.chdir(cwd)
            return len(full) > 4000, st.st_size, names, too_long, relative
        finally:
            os.close(fd)

    assert case.both(op) == (True, 4, ["link", "renamed"], "ENAMETOOLONG", b"deep")
    case.same_tree()


def test_unlinked_while_open(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "f", b"before")
        fd = os.open(d / "f", os.O_RDWR)
        try:
            os.unlink(d / "f")
            os.pwrite(fd, b"AFTER-UNLINK", 0)
            os.ftruncate(fd, 20)
            st = os.fstat(fd)
            os.fchmod(fd, 0o600)
            os.setxattr(fd, "user.k", b"v")
            st2 = os.fstat(fd)
            data = os.pread(fd, 100, 0)
            os.fsync(fd)
            missing = os.path.lexists(d / "f")
            return meta(st), stat.S_IMODE(st2.st_mode), data, missing, os.getxattr(fd, "user.k")
        finally:
            os.close(fd)

    result = case.both(op)
    assert result[0]["nlink"] == 0 and result[2] == b"AFTER-UNLINK" + bytes(8)
    case.same_tree()


def test_replaced_by_rename_while_open(case: Case) -> None:
    def op(d: Path) -> Any:
        write_file(d / "f", b"old")
        write_file(d / "g", b"new")
        fd = os.open(d / "f", os.O_RDWR)
        try:
            os.rename(d / "g", d / "f")
            os.pwrite(fd, b"OLD!", 0)
            return os.pread(fd, 10, 0), os.fstat(fd).st_nlink, read_file(d / "f")
        finally:
            os.close(fd)

    assert case.both(op) == (b"OLD!", 0, b"new")


def test_directory_removed_while_cwd_or_open(case: Case) -> None:
    def op(d: Path) -> Any:
        os.mkdir(d / "dir")
        fd = os.open(d / "dir", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.rmdir(d / "dir")
            st = os.fstat(fd)
            listing = os.listdir(fd)
            try:
                os.open("new", os.O_CREAT | os.O_WRONLY, dir_fd=fd)
                create = "created"
            except OSError as exc:
                create = errno.errorcode[exc.errno or 0]
            return st.st_nlink, listing, create
        finally:
            os.close(fd)

    assert case.both(op) == (0, [], "ENOENT")


# --- readdir ------------------------------------------------------------------------------


def raw_listing(path: Path, env: MountedPair, inodes: bool = False) -> list[str]:
    """Every entry the kernel returns, "." and ".." included (`ls -a`, unsorted)."""
    out = subprocess.run(
        ["ls", "-a", "-f", "-1", "--quoting-style=escape", *(["-i"] if inodes else []), str(path)],
        capture_output=True,
        check=True,
        text=True,
        pass_fds=(env.under_fd,),  # keeps its number: env.under works in the child
    ).stdout
    return out.splitlines()


def test_readdir_large_directory(case: Case) -> None:
    count = 5000

    def setup(d: Path) -> None:
        os.mkdir(d / "big")
        for i in range(count):
            if i % 10 == 0:
                os.mkdir(d / "big" / f"dir{i:05d}")
            else:
                os.close(os.open(d / "big" / f"file{i:05d}", os.O_CREAT | os.O_WRONLY, 0o644))

    case.both(setup)
    native = raw_listing(case.native / "big", case.env)
    mounted = raw_listing(case.mount / "big", case.env, inodes=True)
    assert sorted(n.split(maxsplit=1)[1] for n in mounted) == sorted(native)
    assert len(native) == count + 2 and "." in native and ".." in native
    # Order and types are what the real directory gives.
    assert mounted == raw_listing(case.under / "big", case.env, inodes=True)
    types = {e.name: e.is_dir(follow_symlinks=False) for e in os.scandir(case.mount / "big")}
    assert types == {
        e.name: e.is_dir(follow_symlinks=False) for e in os.scandir(case.native / "big")
    }
    # d_ino equals the real inode number of each entry.
    inos = {e.name: e.inode() for e in os.scandir(case.mount / "big")}
    assert inos == {e.name: e.inode() for e in os.scandir(case.under / "big")}
    assert inos == {name: os.lstat(case.mount / "big" / name).st_ino for name in inos}


def test_readdir_with_entries_removed_during_iteration(case: Case) -> None:
    def op(d: Path) -> Any:
        os.mkdir(d / "dir")
        for i in range(300):
            write_file(d / "dir" / f"e{i:03d}", b"")
        seen = []
        with os.scandir(d / "dir") as it:
            for i, entry in enumerate(it):
                seen.append(entry.name)
                if i == 5:
                    # Remove every entry not yet seen whose number is even.
                    for j in range(0, 300, 2):
                        name = f"e{j:03d}"
                        if name not in seen:
                            os.unlink(d / "dir" / name)
        remaining = sorted(os.listdir(d / "dir"))
        survivors = {n for n in seen if n in remaining}
        # POSIX: an entry removed during iteration may or may not be returned; every
        # entry never removed must be returned exactly once.
        return remaining, len(seen) == len(set(seen)), set(remaining) <= set(seen), survivors

    result = case.both(op)
    assert result[1] and result[2]
    case.same_tree()


def test_readdir_dot_entries(case: Case) -> None:
    case.both(lambda d: [os.mkdir(d / f"s{i}") for i in range(3)])
    for sub in ("s1", "."):
        mounted = raw_listing(case.mount / sub, case.env, inodes=True)
        real = raw_listing(case.under / sub, case.env, inodes=True)
        # Same entries with the same d_ino; the mount lists "." and ".." first.
        assert sorted(mounted) == sorted(real)
        dots = {".", ".."}
        assert [e for e in mounted if e.split()[1] not in dots] == [
            e for e in real if e.split()[1] not in dots
        ]
    inos = {e.name: e.inode() for e in os.scandir(case.mount)}
    assert inos == {e.name: e.inode() for e in os.scandir(case.under)}


def test_root_inode_number_is_the_real_one(env: MountedPair) -> None:
    """A program that remembers the work directory's inode number sees no change."""
    assert os.stat(env.mount).st_ino == os.stat(env.under).st_ino
    (env.mount / "rootcheck").mkdir(exist_ok=True)
    out = subprocess.run(
        ["ls", "-a", "-i", "-f", "-1", str(env.mount / "rootcheck")],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    inos = {line.split()[1]: int(line.split()[0]) for line in out.splitlines()}
    assert inos[".."] == os.stat(env.under).st_ino


# --- metadata equals the file underneath --------------------------------------------------


def test_stat_equals_underlying(case: Case) -> None:
    def op(d: Path) -> None:
        os.mkdir(d / "dir", 0o705)
        os.mkdir(d / "dir" / "child")
        write_file(d / "file", b"z" * 10000, 0o640)
        os.link(d / "file", d / "dir" / "hard")
        os.symlink("file", d / "sym")
        os.chown(d / "file", 321, 654)
        os.utime(d / "dir", ns=(10**18, 2 * 10**17))
        fd = os.open(d / "append", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        os.write(fd, b"a" * 123)
        os.close(fd)

    case.both(op)
    case.same_tree()
    case.same_as_under(".", "dir", "dir/child", "file", "dir/hard", "sym", "append")


def test_fallocate_mode_0(case: Case) -> None:
    """posix_fallocate: pyfuse3 has no FUSE_FALLOCATE, the kernel answers EOPNOTSUPP
    and glibc falls back to writing zeros: the outcome is as native's."""

    def op(d: Path) -> Any:
        write_file(d / "f", b"abc")
        fd = os.open(d / "f", os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, 1 << 20)
            st = os.fstat(fd)
            return st.st_size, os.pread(fd, 4, 0), os.pread(fd, 10, 500_000)
        finally:
            os.close(fd)

    assert case.both(op) == (1 << 20, b"abc\0", bytes(10))
    case.same_tree()


def _fallocate_cli(*args: str) -> Callable[[Path], Any]:
    def op(d: Path) -> Any:
        result = subprocess.run(["fallocate", *args, str(d / "f")], capture_output=True)
        if result.returncode != 0:
            raise OSError(errno.EOPNOTSUPP, result.stderr.decode())
        return read_file(d / "f"), os.stat(d / "f").st_size

    return op


@pytest.mark.xfail(
    ON_PYFUSE3,
    strict=True,
    reason="pyfuse3 3.5 does not implement FUSE_FALLOCATE: the kernel returns EOPNOTSUPP "
    "for every fallocate(2) mode through the mount, and punch-hole has no glibc fallback",
)
def test_fallocate_punch_hole(case: Case) -> None:
    case.both(lambda d: write_file(d / "f", b"x" * 16384))
    content, size = case.both(
        _fallocate_cli("--punch-hole", "--offset", "4096", "--length", "4096")
    )
    assert size == 16384 and content[4096:8192] == bytes(4096)


@pytest.mark.xfail(
    ON_PYFUSE3,
    strict=True,
    reason="pyfuse3 3.5 does not implement FUSE_FALLOCATE: fallocate(2) itself (mode 0, "
    "no glibc emulation, as util-linux calls it) fails with EOPNOTSUPP through the mount",
)
def test_fallocate_syscall_mode_0(case: Case) -> None:
    case.both(lambda d: write_file(d / "f", b"x"))
    case.both(_fallocate_cli("--length", "65536"))


def test_every_case_released_its_handles(env: MountedPair) -> None:
    wait_for(lambda: env.thread_mount.inodes_open() == 0, what="all handles released")


@pytest.mark.xfail(ON_PYFUSE3, strict=True, reason="pyfuse3 3.5 has no FUSE_FALLOCATE")
@pytest.mark.parametrize(
    "args",
    [
        ("--keep-size", "--offset", "16384", "--length", "65536"),
        ("--zero-range", "--offset", "1000", "--length", "5000"),
        ("--offset", "0", "--length", "100000"),
    ],
    ids=["keep-size", "zero-range", "extend"],
)
def test_fallocate_modes(case: Case, args: tuple[str, ...]) -> None:
    """Every fallocate mode the underlying file system supports, exactly as native
    (content, size and allocated blocks)."""
    case.both(lambda d: write_file(d / "f", bytes(range(256)) * 64))

    def op(d: Path) -> Any:
        content, size = _fallocate_cli(*args)(d)
        return content, size, os.stat(d / "f").st_blocks

    case.both(op)
    case.same_as_under("f")


@pytest.mark.parametrize("flag", ["--collapse-range", "--insert-range"])
def test_fallocate_range_shifts_refused_cleanly(case: Case, flag: str) -> None:
    """The kernel's FUSE module itself refuses COLLAPSE_RANGE and INSERT_RANGE with
    EOPNOTSUPP before asking any daemon (fs/fuse/file.c allows only KEEP_SIZE,
    PUNCH_HOLE and ZERO_RANGE): a clear error, and the file is untouched."""
    original = bytes(range(256)) * 64
    write_file(case.mount / "f", original)
    with pytest.raises(OSError) as raised:
        _fallocate_cli(flag, "--offset", "4096", "--length", "4096")(case.mount)
    assert raised.value.errno == errno.EOPNOTSUPP
    assert read_file(case.mount / "f") == original
    case.same_as_under("f")


@pytest.mark.xfail(ON_PYFUSE3, strict=True, reason="pyfuse3 3.5 has no FUSE_COPY_FILE_RANGE")
def test_copy_file_range_in_kernel(case: Case) -> None:
    """copy_file_range(2) between two files of the mount is one request, not a read and
    write loop, and copies exactly what native does (offsets of both files kept)."""
    payload = os.urandom(200_000)

    def op(d: Path) -> Any:
        write_file(d / "src", payload)
        src = os.open(d / "src", os.O_RDONLY)
        dst = os.open(d / "dst", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            copied = os.copy_file_range(src, dst, 150_000, 10_000, 5)
            return copied, os.lseek(src, 0, os.SEEK_CUR), os.lseek(dst, 0, os.SEEK_CUR)
        finally:
            os.close(src)
            os.close(dst)

    assert case.both(op) == (150_000, 0, 0)  # explicit offsets move neither position
    assert read_file(case.mount / "dst") == bytes(5) + payload[10_000:160_000]
    case.same_as_under("dst")
