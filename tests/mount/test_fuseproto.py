"""The protocol layer alone (dpmsfs.fuseproto), on a real mount, with a tiny file system.

The file system here serves one directory with one file, `data`, whose content lives
in a real file under /tmp: READ is served by the daemon, or, with passthrough, by the
kernel from that file (no READ request reaches us).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpmsfs.fuseproto import abi, kernel, replies
from dpmsfs.fuseproto.abi import InitFlag
from dpmsfs.fuseproto.session import Negotiated, Operations, Request, Session
from tests.mount.conftest import fuse_usable, wait_for

pytestmark = pytest.mark.skipif(not fuse_usable(), reason="needs root and /dev/fuse")

CONTENT = b"0123456789" * 1000
DATA_INO = 2
# The transport under test: /dev/fuse by default, io_uring where the kernel has it
# in CI's second pass (DPMSFS_FUSE_IO_URING=auto).
IO_URING_MODE = os.environ.get("DPMSFS_FUSE_IO_URING", "off").lower()


class TinyFs(Operations):
    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self.session: Session | None = None
        self.negotiated: Negotiated | None = None
        self.threads: set[str] = set()
        self.forgotten: dict[int, int] = {}
        self.reads = 0
        self.lookups = 0
        self.lock = threading.Lock()
        self.fds: dict[int, int] = {}

    def init(self, negotiated: Negotiated) -> None:
        self.negotiated = negotiated

    def _attr(self, ino: int) -> replies.Attr:
        if ino == abi.ROOT_ID:
            return replies.Attr(1, stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, 4096, 0, 0, 0, 0)
        return replies.Attr(
            DATA_INO, stat.S_IFREG | 0o644, 1, 0, 0, 0, len(CONTENT), 4096, 24, 0, 0, 0
        )

    def lookup(self, req: Request, parent: int, name: bytes) -> bytes:
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.lookups += 1
        if name == b"data":
            return replies.entry(DATA_INO, self._attr(DATA_INO), 0, 0)  # no caching
        if name == b"boom":
            raise RuntimeError("a bug in a handler")
        raise FileNotFoundError(errno.ENOENT, "no such name")

    def forget(self, items: list[tuple[int, int]]) -> None:
        with self.lock:
            for nodeid, count in items:
                self.forgotten[nodeid] = self.forgotten.get(nodeid, 0) + count

    def getattr(self, req: Request, fh: int | None) -> bytes:
        return replies.attr_out(self._attr(req.nodeid), 0)

    def open(self, req: Request, flags: int, open_flags: int) -> bytes:
        fd = os.open(self.backing, os.O_RDONLY | os.O_CLOEXEC)
        assert self.session is not None and self.negotiated is not None
        if self.negotiated.passthrough:
            backing_id = self.session.backing_open(fd)
            self.fds[fd] = backing_id
            return replies.open_out(fd, abi.FOPEN_PASSTHROUGH, backing_id)
        self.fds[fd] = 0
        return replies.open_out(fd)

    def read(self, req: Request, fh: int, offset: int, size: int) -> bytes:
        with self.lock:
            self.reads += 1
        return os.pread(fh, size, offset)

    def release(self, req: Request, fh: int, flags: int) -> bytes:
        backing_id = self.fds.pop(fh)
        if backing_id:
            assert self.session is not None
            self.session.backing_close(backing_id)
        os.close(fh)
        return b""


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dpmsfs-proto-", dir="/tmp"))
    (path / "mnt").mkdir()
    (path / "backing").write_bytes(CONTENT)
    yield path
    kernel.unmount(str(path / "mnt")) if os.path.ismount(path / "mnt") else None
    shutil.rmtree(path, ignore_errors=True)


def mounted(base: Path, passthrough: bool) -> tuple[TinyFs, Session]:
    fs = TinyFs(base / "backing")
    session = Session(
        fs, str(base / "mnt"), fsname="tiny", subtype="dpmsfs-prototest",
        options=["default_permissions", "allow_other"], passthrough=passthrough, workers=3,
        io_uring=IO_URING_MODE,
    )  # fmt: skip
    fs.session = session
    session.mount()
    return fs, session


def end(session: Session) -> None:
    session.unmount()
    session.join(10)
    assert not session.running, "every worker sees ENODEV at the end"
    session.close()


@pytest.mark.parametrize("passthrough", [True, False], ids=["passthrough", "no-passthrough"])
def test_negotiation_takes_what_the_kernel_offers(base: Path, passthrough: bool) -> None:
    fs, session = mounted(base, passthrough)
    try:
        negotiated = session.negotiated
        assert negotiated is not None and fs.negotiated is negotiated
        assert negotiated.major == 7 and negotiated.minor >= abi.MIN_MINOR_VERSION
        assert negotiated.flags & ~negotiated.offered == 0, "never a flag the kernel lacks"
        assert not negotiated.flags & InitFlag.WRITEBACK_CACHE
        if negotiated.offered & InitFlag.HANDLE_KILLPRIV_V2:
            assert negotiated.killpriv_v2
        assert negotiated.passthrough == (
            passthrough and bool(negotiated.offered & InitFlag.PASSTHROUGH)
        )
        assert negotiated.as_dict()["protocol"] == f"7.{negotiated.minor}"
    finally:
        end(session)


@pytest.mark.parametrize("passthrough", [True, False], ids=["passthrough", "no-passthrough"])
def test_reads_with_and_without_passthrough(base: Path, passthrough: bool) -> None:
    fs, session = mounted(base, passthrough)
    try:
        assert (base / "mnt" / "data").read_bytes() == CONTENT
        if fs.negotiated is not None and fs.negotiated.passthrough:
            assert fs.reads == 0, "the kernel read the backing file itself"
        else:
            assert fs.reads >= 1
        wait_for(lambda: not fs.fds, what="release")
    finally:
        end(session)


def test_errors_are_replies_and_a_bug_is_eio(base: Path) -> None:
    _fs, session = mounted(base, passthrough=False)
    try:
        with pytest.raises(FileNotFoundError):
            os.stat(base / "mnt" / "nothing")
        with pytest.raises(OSError) as raised:
            os.stat(base / "mnt" / "boom")
        assert raised.value.errno == errno.EIO
        with pytest.raises(OSError) as raised:
            os.mkdir(base / "mnt" / "new")  # no mkdir handler: ENOSYS from the base class
        assert raised.value.errno == errno.ENOSYS
        assert (base / "mnt" / "data").stat().st_size == len(CONTENT), "still serving"
    finally:
        end(session)


def test_workers_share_the_load_and_forgets_arrive(base: Path) -> None:
    fs, session = mounted(base, passthrough=False)
    try:
        errors: list[BaseException] = []

        cpus = sorted(os.sched_getaffinity(0))

        def hammer(index: int) -> None:
            # One caller per CPU: io_uring serves each CPU's requests on its own
            # thread, so spreading the callers is what spreads the load there.
            os.sched_setaffinity(0, {cpus[index % len(cpus)]})
            try:
                for _ in range(300):
                    os.stat(base / "mnt" / "data")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert len(fs.threads) >= 2, f"requests were served by {fs.threads}"
        # Evicting the kernel's inodes sends FORGET (or BATCH_FORGET) for them; no
        # reply is written, and the session goes on serving.
        Path("/proc/sys/vm/drop_caches").write_text("2")
        wait_for(lambda: fs.forgotten.get(DATA_INO, 0) >= 1, what="FORGET of the file")
        assert (base / "mnt" / "data").stat().st_size == len(CONTENT)
    finally:
        end(session)


def test_abort_ends_the_session_with_enodev(base: Path) -> None:
    _fs, session = mounted(base, passthrough=False)
    connection = session._connection_number()
    assert connection is not None
    assert kernel.abort_connection(connection)
    session.join(10)
    assert not session.running
    with pytest.raises(OSError) as raised:
        os.stat(base / "mnt" / "data")
    assert raised.value.errno == errno.ENOTCONN
    kernel.unmount(str(base / "mnt"))
    session.close()
