"""Every kind of change made through the mount reaches the change hook, with its path."""

from __future__ import annotations

import os
from pathlib import Path

from dpmsfs.fs.changes import ChangeEvent, ChangeKind
from tests.mount.conftest import ON_PYFUSE3, PASSTHROUGH, ThreadMount, wait_for


def kinds_for(mount: ThreadMount, path: bytes) -> list[ChangeKind]:
    """Kinds reported for `path`, once the kernel's asynchronous releases arrived.

    close() returns before FUSE_RELEASE is handled, and the writeback cache sends the
    new mtime as a SETATTR of its own: neither is part of what these tests assert.
    """
    wait_for(lambda: mount.inodes_open() == 0, what="releases")
    return [e.kind for e in mount.sink.events if e.path == path and e.kind != ChangeKind.SETATTR]


def settle(mount: ThreadMount) -> None:
    """Wait for the releases of files already closed, then forget all events so far."""
    wait_for(lambda: mount.inodes_open() == 0, what="releases")
    mount.sink.events.clear()


def assert_in_order(expected: list[ChangeEvent], events: list[ChangeEvent]) -> None:
    """`expected` appears in `events` in this order (others may come between)."""
    position = 0
    for event in events:
        if position < len(expected) and event == expected[position]:
            position += 1
    assert position == len(expected), f"missing {expected[position:]} in {events}"


def test_create_write_close_reported_once_per_handle(thread_mount: ThreadMount) -> None:
    work = thread_mount.workdir
    with open(work / "a.txt", "wb") as f:
        for _ in range(50):
            f.write(b"x" * 4096)
            f.flush()
    kinds = kinds_for(thread_mount, b"a.txt")
    assert kinds[0] == ChangeKind.CREATE
    assert kinds == [ChangeKind.CREATE, ChangeKind.CLOSE_WRITE]  # one event per handle

    settle(thread_mount)
    with open(work / "a.txt", "r+b") as f:
        f.write(b"y")
    assert kinds_for(thread_mount, b"a.txt") == [ChangeKind.WRITE, ChangeKind.CLOSE_WRITE]


def test_reading_reports_nothing(thread_mount: ThreadMount) -> None:
    (thread_mount.workdir / "r.txt").write_bytes(b"data")
    settle(thread_mount)
    assert (thread_mount.workdir / "r.txt").read_bytes() == b"data"
    os.stat(thread_mount.workdir / "r.txt")
    os.listdir(thread_mount.workdir)
    assert thread_mount.sink.events == []


def test_each_kind_of_change_with_its_path(thread_mount: ThreadMount) -> None:
    work = thread_mount.workdir
    events = thread_mount.sink.events
    (work / "d").mkdir()
    (work / "d" / "f").write_bytes(b"1")
    os.truncate(work / "d" / "f", 0)
    os.chmod(work / "d" / "f", 0o600)
    os.utime(work / "d" / "f", ns=(1, 2))
    os.setxattr(work / "d" / "f", b"user.k", b"v")
    os.removexattr(work / "d" / "f", b"user.k")
    os.link(work / "d" / "f", work / "d" / "hard")
    os.symlink("f", work / "d" / "sym")
    os.mkfifo(work / "d" / "fifo")
    os.unlink(work / "d" / "fifo")
    (work / "e").mkdir()
    os.rmdir(work / "e")
    with open(work / "d" / "g", "wb") as f:
        f.write(b"g")
    os.truncate(work / "d" / "g", 10)

    expected = [
        ChangeEvent(ChangeKind.MKDIR, b"d"),
        ChangeEvent(ChangeKind.CREATE, b"d/f"),
        ChangeEvent(ChangeKind.CLOSE_WRITE, b"d/f"),
        ChangeEvent(ChangeKind.TRUNCATE, b"d/f"),
        ChangeEvent(ChangeKind.SETATTR, b"d/f"),
        ChangeEvent(ChangeKind.SETATTR, b"d/f"),
        ChangeEvent(ChangeKind.XATTR, b"d/f"),
        ChangeEvent(ChangeKind.XATTR, b"d/f"),
        ChangeEvent(ChangeKind.LINK, b"d/hard", b"d/f"),
        ChangeEvent(ChangeKind.SYMLINK, b"d/sym"),
        ChangeEvent(ChangeKind.MKNOD, b"d/fifo"),
        ChangeEvent(ChangeKind.UNLINK, b"d/fifo"),
        ChangeEvent(ChangeKind.MKDIR, b"e"),
        ChangeEvent(ChangeKind.RMDIR, b"e"),
        ChangeEvent(ChangeKind.CREATE, b"d/g"),
        ChangeEvent(ChangeKind.CLOSE_WRITE, b"d/g"),
        ChangeEvent(ChangeKind.TRUNCATE, b"d/g"),
    ]
    wait_for(lambda: thread_mount.inodes_open() == 0, what="releases")
    assert_in_order(expected, events)


def test_paths_follow_renames(thread_mount: ThreadMount) -> None:
    work = thread_mount.workdir
    (work / "src" / "deep").mkdir(parents=True)
    (work / "src" / "deep" / "f").write_bytes(b"1")
    settle(thread_mount)
    fd = os.open(work / "src" / "deep" / "f", os.O_WRONLY)
    try:
        os.rename(work / "src", work / "dst")
        thread_mount.sink.events.clear()
        os.write(fd, b"2")
    finally:
        os.close(fd)
    # With passthrough the kernel writes the file itself: the change was reported at
    # open (under the old path, which the journal moves with the rename); the close
    # is reported under the new path.
    writes_seen = ON_PYFUSE3 or not PASSTHROUGH
    expected = [ChangeKind.WRITE] if writes_seen else []
    assert kinds_for(thread_mount, b"dst/deep/f") == [*expected, ChangeKind.CLOSE_WRITE]

    settle(thread_mount)
    os.rename(work / "dst" / "deep" / "f", work / "moved")
    with open(work / "moved", "ab") as f:
        f.write(b"3")
    assert kinds_for(thread_mount, b"moved") == [
        ChangeKind.RENAME,
        ChangeKind.WRITE,
        ChangeKind.CLOSE_WRITE,
    ]
    assert thread_mount.sink.events[0] == ChangeEvent(ChangeKind.RENAME, b"moved", b"dst/deep/f")
    assert (work / "moved").read_bytes() == b"23"  # "2" overwrote "1" at offset 0


def test_rename_over_existing_reports_and_keeps_open_file(thread_mount: ThreadMount) -> None:
    work = thread_mount.workdir
    (work / "old").write_bytes(b"old")
    (work / "new").write_bytes(b"new")
    with open(work / "old", "rb") as held:
        os.rename(work / "new", work / "old")
        assert held.read() == b"old"  # the replaced file stays readable while open
        assert os.fstat(held.fileno()).st_nlink == 0
    assert (work / "old").read_bytes() == b"new"
    assert ChangeEvent(ChangeKind.RENAME, b"old", b"new") in thread_mount.sink.events


def test_snapshots_name_is_reserved_and_hidden(thread_mount: ThreadMount, workdir: Path) -> None:
    work = thread_mount.workdir
    assert ".snapshots" not in os.listdir(work)
    for attempt in (
        lambda: (work / ".snapshots").mkdir(),
        lambda: (work / ".snapshots").write_bytes(b""),
        lambda: os.symlink("x", work / ".snapshots"),
    ):
        try:
            attempt()
        except OSError:
            pass
        else:
            raise AssertionError("created .snapshots")
    assert thread_mount.sink.events == []
