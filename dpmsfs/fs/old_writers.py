"""Writers left on a dead daemon's mount: find them at start and re-capture their files.

With passthrough, a program that held a file open for writing when the daemon was
killed goes on writing through its old descriptor: the kernel's data path needs no
daemon. Those writes reach the real file, but through the old (detached) mount, so the
restarted daemon sees no request for them and its reconciliation scan at start saw the
file only as it was then. A datalog open for a whole lot would stay captured at that
point until it is next touched through the new mount.

So at start the daemon looks, once, at every process's descriptors (/proc/PID/fd, as
root) for files of this work directory that are open for writing on a mount that is no
longer in the mount table. They are recognised without asking any FUSE mount:

* the link of a descriptor on a detached mount is its path inside that mount
  ("/pgm/lot.log"), not the work directory's absolute path;
* /proc/PID/fdinfo gives the open flags, the mount id (not in our mount table any more)
  and the inode number, which on a dpmsfs mount is the real file's (inodes.py), so the
  file found at that path under the real directory (opened before our mount hid it)
  must have that inode number too.

Each file found is reported at once and then watched with the same poll as open
writers (open_writer_recapture_seconds): reported again while its size or mtime changes
and once more when the last of those descriptors is closed. A descriptor that goes away
triggers one more scan, so a child that inherited it (fork) is found too. The scan is
one pass over /proc at start, never on the I/O path; when nothing is found the service
ends at once.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

import trio

from dpmsfs.fs.changes import ChangeKind, ChangeSink
from dpmsfs.mountinfo import mount_table

log = logging.getLogger(__name__)

PROC = "/proc"


@dataclass(frozen=True)
class OldWriter:
    """One descriptor open for writing on a dead mount, and the real file behind it."""

    pid: int
    fd: int
    mount_id: int
    ino: int
    path: bytes  # relative to the work directory, as ChangeSink wants it


def _fdinfo(pid: int, fd: int) -> dict[str, str] | None:
    try:
        with open(f"{PROC}/{pid}/fdinfo/{fd}") as info:
            fields = (line.split(":", 1) for line in info)
            return {key: value.strip() for key, value in fields}
    except (OSError, ValueError):
        return None


def _writable(flags: str) -> bool:
    return int(flags, 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


def _real_ino(root_fd: int, path: bytes) -> int | None:
    try:
        st = os.stat(path, dir_fd=root_fd, follow_symlinks=False)
    except (OSError, ValueError):
        return None
    return st.st_ino if stat.S_ISREG(st.st_mode) else None


def find_old_writers(root_fd: int, workdir: str, proc: str = PROC) -> list[OldWriter]:
    """Every descriptor open for writing on a detached mount whose path and inode
    number match a regular file of the real directory behind `root_fd`."""
    live_mounts = {mount.mount_id for mount in mount_table()}
    prefix = workdir.rstrip("/") + "/"
    own = str(os.getpid())
    found = []
    for pid_name in os.listdir(proc):
        if not pid_name.isdigit() or pid_name == own:
            continue
        try:
            fd_names = os.listdir(f"{proc}/{pid_name}/fd")
        except OSError:
            continue  # gone, or a kernel thread
        for fd_name in fd_names:
            try:
                link = os.readlink(f"{proc}/{pid_name}/fd/{fd_name}")
            except OSError:
                continue
            # Cheap filters first: sockets, pipes, files of live mounts (absolute paths
            # under the work directory are the new mount's or the real directory's).
            if not link.startswith("/") or link.startswith(prefix) or link.endswith(" (deleted)"):
                continue
            relative = os.fsencode(link.lstrip("/"))
            ino = _real_ino(root_fd, relative) if relative else None
            if ino is None:
                continue
            info = _fdinfo(int(pid_name), int(fd_name))
            if info is None or not _writable(info.get("flags", "0")):
                continue
            mount_id = int(info.get("mnt_id", "-1"))
            if mount_id in live_mounts or int(info.get("ino", "-1")) != ino:
                continue
            found.append(OldWriter(int(pid_name), int(fd_name), mount_id, ino, relative))
    return found


def still_open(writer: OldWriter) -> bool:
    info = _fdinfo(writer.pid, writer.fd)
    return (
        info is not None
        and info.get("mnt_id") == str(writer.mount_id)
        and info.get("ino") == str(writer.ino)
    )


def _mark(root_fd: int, path: bytes) -> tuple[int, int] | None:
    try:
        st = os.stat(path, dir_fd=root_fd, follow_symlinks=False)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


async def watch_old_writers(root_fd: int, workdir: str, sink: ChangeSink, interval: float) -> None:
    """The daemon's service: find writers left on a dead mount, follow them until they
    close. Runs in a worker thread for each /proc pass; returns when none are left."""
    writers = await trio.to_thread.run_sync(find_old_writers, root_fd, workdir)
    if not writers:
        return
    paths = sorted({writer.path for writer in writers})
    log.info(
        "%d file(s) open for writing on the previous mount, watched until closed: %s",
        len(paths), b", ".join(paths[:5]).decode(errors="replace"),
    )  # fmt: skip
    marks: dict[bytes, tuple[int, int] | None] = {}
    for path in paths:
        sink.record(ChangeKind.WRITE, path)
        marks[path] = await trio.to_thread.run_sync(_mark, root_fd, path)
    while writers:
        await trio.sleep(interval)
        open_now = [writer for writer in writers if still_open(writer)]
        if len(open_now) < len(writers):  # one closed: find inherited copies too
            open_now = await trio.to_thread.run_sync(find_old_writers, root_fd, workdir)
        still = {writer.path for writer in open_now}
        for path in list(marks):
            mark = await trio.to_thread.run_sync(_mark, root_fd, path)
            if path not in still:
                sink.record(ChangeKind.CLOSE_WRITE, path)
                del marks[path]
                log.info(
                    "file written on the previous mount closed: %s", path.decode(errors="replace")
                )
            elif mark != marks[path]:
                sink.record(ChangeKind.WRITE, path)
                marks[path] = mark
        for path in still - set(marks):  # a new copy found by the re-scan
            sink.record(ChangeKind.WRITE, path)
            marks[path] = await trio.to_thread.run_sync(_mark, root_fd, path)
        writers = open_now
