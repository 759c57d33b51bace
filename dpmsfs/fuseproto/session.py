"""A FUSE session: INIT negotiation, worker threads, request parsing, the reply path.

Each worker thread reads its own descriptor cloned from the session's
(FUSE_DEV_IOC_CLONE), parses the request into Python values, calls the matching method
of the `Operations` object above and writes the reply on the same descriptor. Handlers
raise OSError for an error reply; anything else is logged and answered EIO, so one bad
request never takes the mount down. A handler returning None sends no reply (FORGET).

INTERRUPT is read and dropped: every handler of ours finishes promptly (the kernel then
waits for the ordinary reply, as the protocol allows). The session ends when the
kernel answers a read with ENODEV: unmounted, or the connection aborted.

Two transports share that dispatch (`_handle`, one reply callable per transport):
the /dev/fuse workers above, and FUSE over io_uring (uring.py: one ring and one
thread pinned per CPU, so a request is served on the CPU that asked). io_uring is
used when the kernel offers it and every queue registers; any failure on the way
falls back to the /dev/fuse workers with one warning, never a failed mount. With the
rings active one /dev/fuse worker stays for what the kernel still sends there
(FORGET, INTERRUPT).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dpmsfs.fuseproto import abi, kernel, uring
from dpmsfs.fuseproto.abi import InitFlag, Opcode

log = logging.getLogger(__name__)

IO_URING_MODES = ("auto", "on", "off")
URING_DEPTH = 4  # entries per CPU queue: each is a header page and a MAX_WRITE payload
URING_REGISTER_TIMEOUT = 10.0  # seconds for every queue to register before falling back
TRANSPORT_DEV = "/dev/fuse"
TRANSPORT_URING = "io_uring"
Reply = Callable[[int, int, bytes], None]  # unique, -errno or 0, payload
_parameter_logged = False

MAX_PAGES = 256  # 1 MiB per READ/WRITE request
MAX_WRITE = MAX_PAGES * 4096
BUFFER_SIZE = MAX_WRITE + 4096  # the kernel wants room for the largest request
MAX_BACKGROUND = 64
CONGESTION_THRESHOLD = 48


@dataclass(frozen=True, slots=True)
class Request:
    """Who asks and about which node: the parts of fuse_in_header handlers use."""

    unique: int
    nodeid: int
    uid: int
    gid: int
    pid: int


@dataclass(frozen=True)
class Negotiated:
    """What INIT settled on: shown by `dpmsfs status` and logged once."""

    major: int
    minor: int
    offered: int
    flags: int
    max_write: int
    max_readahead: int

    @property
    def passthrough(self) -> bool:
        return bool(self.flags & InitFlag.PASSTHROUGH)

    @property
    def killpriv_v2(self) -> bool:
        return bool(self.flags & InitFlag.HANDLE_KILLPRIV_V2)

    @property
    def readdirplus(self) -> bool:
        return bool(self.flags & InitFlag.DO_READDIRPLUS)

    def describe(self) -> str:
        names = [f.name for f in InitFlag if f.name and self.flags & f]
        return f"protocol {self.major}.{self.minor}, flags: {' '.join(sorted(names))}"

    def as_dict(self) -> dict[str, object]:
        return {
            "protocol": f"{self.major}.{self.minor}",
            "passthrough": self.passthrough,
            "killpriv_v2": self.killpriv_v2,
            "max_write": self.max_write,
        }


class Operations:
    """The file system above the session. Every request it does not serve is ENOSYS
    (the kernel then stops sending many of them). Names arrive as bytes; payloads
    are built with fuseproto.replies."""

    def init(self, negotiated: Negotiated) -> None:
        """Called once INIT is answered, before any other request is read."""

    def lookup(self, req: Request, parent: int, name: bytes) -> bytes:
        raise OSError(errno.ENOSYS, "lookup")

    def forget(self, items: list[tuple[int, int]]) -> None:
        """FORGET and BATCH_FORGET: (nodeid, nlookup) pairs; never answered."""

    def getattr(self, req: Request, fh: int | None) -> bytes:
        raise OSError(errno.ENOSYS, "getattr")

    def setattr(self, req: Request, valid: int, fh: int | None, values: SetattrValues) -> bytes:
        raise OSError(errno.ENOSYS, "setattr")

    def readlink(self, req: Request) -> bytes:
        raise OSError(errno.ENOSYS, "readlink")

    def symlink(self, req: Request, name: bytes, target: bytes) -> bytes:
        raise OSError(errno.ENOSYS, "symlink")

    def mknod(self, req: Request, name: bytes, mode: int, rdev: int) -> bytes:
        raise OSError(errno.ENOSYS, "mknod")

    def mkdir(self, req: Request, name: bytes, mode: int) -> bytes:
        raise OSError(errno.ENOSYS, "mkdir")

    def unlink(self, req: Request, name: bytes) -> bytes:
        raise OSError(errno.ENOSYS, "unlink")

    def rmdir(self, req: Request, name: bytes) -> bytes:
        raise OSError(errno.ENOSYS, "rmdir")

    def rename(
        self, req: Request, name: bytes, new_parent: int, new_name: bytes, flags: int
    ) -> bytes:
        raise OSError(errno.ENOSYS, "rename")

    def link(self, req: Request, old_node: int, new_name: bytes) -> bytes:
        raise OSError(errno.ENOSYS, "link")

    def open(self, req: Request, flags: int, open_flags: int) -> bytes:
        raise OSError(errno.ENOSYS, "open")

    def create(self, req: Request, name: bytes, mode: int, flags: int, open_flags: int) -> bytes:
        raise OSError(errno.ENOSYS, "create")

    def read(self, req: Request, fh: int, offset: int, size: int) -> bytes:
        raise OSError(errno.ENOSYS, "read")

    def write(
        self, req: Request, fh: int, offset: int, data: memoryview, write_flags: int
    ) -> bytes:
        raise OSError(errno.ENOSYS, "write")

    def statfs(self, req: Request) -> bytes:
        raise OSError(errno.ENOSYS, "statfs")

    def release(self, req: Request, fh: int, flags: int) -> bytes:
        return b""

    def flush(self, req: Request, fh: int) -> bytes:
        raise OSError(errno.ENOSYS, "flush")

    def fsync(self, req: Request, fh: int, datasync: bool) -> bytes:
        raise OSError(errno.ENOSYS, "fsync")

    def setxattr(self, req: Request, name: bytes, value: bytes, flags: int) -> bytes:
        raise OSError(errno.ENOSYS, "setxattr")

    def getxattr(self, req: Request, name: bytes, size: int) -> bytes:
        raise OSError(errno.ENOSYS, "getxattr")

    def listxattr(self, req: Request, size: int) -> bytes:
        raise OSError(errno.ENOSYS, "listxattr")

    def removexattr(self, req: Request, name: bytes) -> bytes:
        raise OSError(errno.ENOSYS, "removexattr")

    def opendir(self, req: Request, flags: int) -> bytes:
        raise OSError(errno.ENOSYS, "opendir")

    def readdir(self, req: Request, fh: int, offset: int, size: int, plus: bool) -> bytes:
        raise OSError(errno.ENOSYS, "readdir")

    def releasedir(self, req: Request, fh: int) -> bytes:
        return b""

    def fsyncdir(self, req: Request, fh: int, datasync: bool) -> bytes:
        raise OSError(errno.ENOSYS, "fsyncdir")

    def fallocate(self, req: Request, fh: int, offset: int, length: int, mode: int) -> bytes:
        raise OSError(errno.ENOSYS, "fallocate")

    def lseek(self, req: Request, fh: int, offset: int, whence: int) -> bytes:
        raise OSError(errno.ENOSYS, "lseek")

    def copy_file_range(
        self, req: Request, fh_in: int, off_in: int, node_out: int, fh_out: int, off_out: int,
        length: int, flags: int,
    ) -> bytes:  # fmt: skip
        raise OSError(errno.ENOSYS, "copy_file_range")


@dataclass(frozen=True, slots=True)
class SetattrValues:
    size: int
    atime_ns: int
    mtime_ns: int
    mode: int
    uid: int
    gid: int


def _cstring(body: memoryview, start: int = 0) -> tuple[bytes, int]:
    """A NUL-terminated name at `start`; returns it and the offset after the NUL."""
    raw = body[start:].tobytes()
    end = raw.index(b"\0")
    return raw[:end], start + end + 1


# The flags we ask for when the kernel offers them. PASSTHROUGH is added on request.
# Not asked: WRITEBACK_CACHE (fail-open must never lose a write that returned),
# DONT_MASK (the kernel applies the caller's umask), POSIX/FLOCK locks (kept in the
# kernel), READDIRPLUS_AUTO (always READDIRPLUS: the node references stay simple),
# SETXATTR_EXT, SPLICE_* (no gain for a Python reader).
WANTED = (
    InitFlag.ASYNC_READ | InitFlag.ATOMIC_O_TRUNC | InitFlag.BIG_WRITES
    | InitFlag.AUTO_INVAL_DATA | InitFlag.DO_READDIRPLUS | InitFlag.ASYNC_DIO
    | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES | InitFlag.HANDLE_KILLPRIV_V2
    | InitFlag.INIT_EXT
)  # fmt: skip


class Session:
    """One mounted FUSE connection and the threads serving it."""

    def __init__(
        self,
        operations: Operations,
        mount_point: str,
        *,
        fsname: str,
        subtype: str,
        options: list[str],
        passthrough: bool = True,
        workers: int = 3,
        flags: int = kernel.MS_RELATIME,
        io_uring: str = "off",
        uring_fault: str | None = None,
        ring_sched_idle: bool = False,
    ) -> None:
        self.operations = operations
        self.mount_point = mount_point
        self._fsname = fsname
        self._subtype = subtype
        self._options = options
        self._flags = flags
        self._want_passthrough = passthrough
        self._worker_count = max(1, workers)
        self.fd = -1
        self.negotiated: Negotiated | None = None
        self._threads: list[threading.Thread] = []
        self._fds: list[int] = []
        self._failure: BaseException | None = None
        self._handlers = self._handler_table()
        self.request_counts: dict[str, int] = {}
        self.count_requests = False
        self._count_lock = threading.Lock()
        if io_uring not in IO_URING_MODES:
            raise ValueError(f"io_uring must be one of {IO_URING_MODES}, not {io_uring!r}")
        self._io_uring = io_uring
        # Tests only: "setup" fails creating the rings, "register" makes the kernel
        # refuse one queue's registration (a payload buffer that is too small).
        self._uring_fault = uring_fault
        # Experimental, off by default: the ring threads as SCHED_IDLE, so that the
        # scheduler sees a ring thread's CPU as idle when it wakes the caller with the
        # reply and keeps the caller there (docs/design.md: the measured gain for
        # unpinned callers, and the starvation risk when that CPU is busy).
        self._ring_sched_idle = ring_sched_idle
        self._rings: list[uring.Ring] = []
        self.transport = TRANSPORT_DEV
        self.transport_reason = "not decided yet"
        self.requests_per_queue: dict[int, int] = {}

    # --- life cycle ------------------------------------------------------------------
    def mount(self) -> None:
        """mount(2), answer INIT, start the workers. Raises OSError if any step fails."""
        self._want_uring = self._decide_io_uring()
        self.fd = kernel.open_device()
        try:
            kernel.mount(
                self.fd, self.mount_point, self._fsname, self._subtype, self._options, self._flags
            )
        except OSError:
            os.close(self.fd)
            self.fd = -1
            raise
        self._answer_init()
        workers = self._worker_count
        if self._rings and self._start_rings():
            workers = 1  # FORGET and INTERRUPT still come on /dev/fuse
        self._start_workers(workers)
        log.info("%s: FUSE transport %s (%s)", self.mount_point, self.transport,
                 self.transport_reason)  # fmt: skip

    def _start_workers(self, count: int) -> None:
        for index in range(count):
            fd = self.fd if index == 0 else kernel.clone_device(self.fd)
            if index:
                self._fds.append(fd)
            thread = threading.Thread(
                target=self._serve, args=(fd,), name=f"fuse-worker-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait until every worker has seen the end of the connection."""
        for thread in self._threads:
            thread.join(timeout)
        if self._failure is not None:
            raise self._failure

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def unmount(self) -> None:
        """Detach the mount and end the connection (lazy, as libfuse does for root:
        files still open through it get ENOTCONN from then on)."""
        connection = self._connection_number()
        try:
            kernel.unmount(self.mount_point, lazy=True)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
        if connection is not None and self.running:
            kernel.abort_connection(connection)

    def close(self) -> None:
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _connection_number(self) -> int | None:
        """The connection's number in /sys/fs/fuse/connections (the mount's device
        minor), read from our mount table: never a request to ourselves."""
        target = os.path.realpath(self.mount_point)
        found = None
        try:
            with open("/proc/self/mountinfo") as table:
                for line in table:
                    fields = line.split()
                    if len(fields) < 5:
                        continue
                    point = fields[4].encode().decode("unicode_escape")
                    sep = fields.index("-")
                    if point == target and fields[sep + 1] == f"fuse.{self._subtype}":
                        found = int(fields[2].split(":")[1])
        except OSError:
            return None
        return found

    # --- passthrough -----------------------------------------------------------------
    def backing_open(self, file_fd: int) -> int:
        return kernel.backing_open(self.fd, file_fd)

    def backing_close(self, backing_id: int) -> None:
        kernel.backing_close(self.fd, backing_id)

    # --- INIT ------------------------------------------------------------------------
    def _answer_init(self) -> None:
        buf = bytearray(BUFFER_SIZE)
        while True:
            try:
                size = os.readv(self.fd, [buf])
                break
            except InterruptedError:
                continue
        view = memoryview(buf)[:size]
        _length, opcode, unique, *_ = abi.IN_HEADER.unpack_from(view)
        if opcode != Opcode.INIT:
            raise OSError(errno.EPROTO, f"expected INIT, got opcode {opcode}")
        body = view[abi.IN_HEADER.size :]
        if len(body) < abi.INIT_IN.size:
            body = memoryview(bytes(body) + bytes(abi.INIT_IN.size - len(body)))
        major, minor, max_readahead, flags, flags2 = abi.INIT_IN.unpack_from(body)
        if major != abi.KERNEL_VERSION or minor < abi.MIN_MINOR_VERSION:
            self._send(self.fd, unique, -errno.EPROTO, b"")
            raise OSError(errno.EPROTO, f"kernel FUSE protocol {major}.{minor} is too old")
        offered = flags | (flags2 << 32 if flags & InitFlag.INIT_EXT else 0)
        wanted = int(WANTED)
        if self._want_passthrough:
            wanted |= InitFlag.PASSTHROUGH
        chosen = offered & wanted
        if offered & InitFlag.OVER_IO_URING and self._prepare_rings():
            chosen |= InitFlag.OVER_IO_URING
        our_minor = min(minor, abi.KERNEL_MINOR_VERSION)
        stack_depth = 1 if chosen & InitFlag.PASSTHROUGH else 0
        reply = abi.INIT_OUT.pack(
            abi.KERNEL_VERSION, our_minor, max_readahead, chosen & 0xFFFFFFFF,
            MAX_BACKGROUND, CONGESTION_THRESHOLD, MAX_WRITE, 1, MAX_PAGES, 0,
            chosen >> 32, stack_depth, 0,
        )  # fmt: skip
        self.negotiated = Negotiated(
            abi.KERNEL_VERSION, our_minor, offered, chosen, MAX_WRITE, max_readahead
        )
        self._send(self.fd, unique, 0, reply)
        log.info("%s: FUSE %s", self.mount_point, self.negotiated.describe())
        self.operations.init(self.negotiated)

    # --- FUSE over io_uring ----------------------------------------------------------
    def _decide_io_uring(self) -> bool:
        """Whether to offer io_uring in INIT; decided before mount(2), because the
        kernel offers it in INIT only while the module parameter is on.

        `auto` and `on` turn a present but off `enable_uring` on when we are root: the
        switch only lets FUSE daemons that ask for FUSE_OVER_IO_URING in their INIT
        reply use the rings; every other daemon keeps /dev/fuse (docs/design.md). `on`
        differs from `auto` only in warning when io_uring cannot be had."""
        global _parameter_logged
        mode = self._io_uring
        complain = log.warning if mode == "on" else log.info
        if mode == "off":
            self.transport_reason = "fuse_io_uring = off"
            return False
        if not uring.supported():
            self.transport_reason = "io_uring ring code is x86-64 only"
            complain("%s: FUSE over io_uring not used: %s", self.mount_point,
                     self.transport_reason)  # fmt: skip
            return False
        state = uring.parameter_state()
        if state is None:
            self.transport_reason = "this kernel has no FUSE over io_uring"
            complain("%s: %s", self.mount_point, self.transport_reason)
            return False
        if not state:
            if os.geteuid() != 0:
                self.transport_reason = "fuse enable_uring is off and we are not root"
                complain("%s: %s", self.mount_point, self.transport_reason)
                return False
            try:
                uring.enable_parameter()
            except OSError as exc:
                self.transport_reason = f"cannot turn on fuse enable_uring: {exc.strerror}"
                complain("%s: %s", self.mount_point, self.transport_reason)
                return False
            if not _parameter_logged:
                _parameter_logged = True
                log.info(
                    "turned on /sys/module/fuse/parameters/enable_uring (fuse_io_uring = %s):"
                    " only FUSE daemons that ask for io_uring use it", mode,
                )  # fmt: skip
        return True

    def _prepare_rings(self) -> bool:
        """Create the rings before INIT is answered: a failure here means INIT does not
        ask for io_uring, so the kernel never waits for queues that will not come."""
        if not self._want_uring:
            return False
        self.transport_reason = "io_uring rings registering"

        def fault(qid: int) -> None:
            if self._uring_fault == "setup":
                raise uring.RingError(errno.ENOMEM, "injected ring setup failure")

        try:
            self._rings = uring.create_rings(self.fd, URING_DEPTH, MAX_WRITE, fault)
        except OSError as exc:
            self._fall_back(f"ring setup failed: {exc}")
            return False
        return True

    def _fall_back(self, reason: str) -> None:
        self.transport = TRANSPORT_DEV
        self.transport_reason = f"fell back: {reason}"
        log.warning("%s: FUSE over io_uring %s; serving on /dev/fuse", self.mount_point, reason)

    def _start_rings(self) -> bool:
        """Start one pinned thread per ring and wait until each registered its entries.
        True when the kernel switched to the rings; False after a fallback."""
        results: dict[int, str | None] = {}
        done = threading.Condition()

        def report(qid: int, failure: str | None) -> None:
            with done:
                results[qid] = failure
                done.notify_all()

        for ring in self._rings:
            self.requests_per_queue[ring.qid] = 0
            thread = threading.Thread(
                target=self._serve_ring, args=(ring, report), name=f"fuse-ring-{ring.qid}",
                daemon=True,
            )  # fmt: skip
            self._threads.append(thread)
            thread.start()
        with done:
            done.wait_for(lambda: len(results) == len(self._rings), URING_REGISTER_TIMEOUT)
            failures = [f"queue {qid}: {why}" for qid, why in sorted(results.items()) if why]
            if len(results) < len(self._rings):
                failures.append("a queue did not register in time")
        if not failures:
            self.transport = TRANSPORT_URING
            self.transport_reason = f"{len(self._rings)} queues, one per CPU"
            if self._ring_sched_idle:
                self.transport_reason += ", ring threads SCHED_IDLE"
            return True
        if not any("refused" in failure for failure in failures):
            self._reset_to_device()
        self._fall_back("; ".join(failures))
        return False

    def _reset_to_device(self) -> None:
        """Make the kernel give up waiting for the rings: a REGISTER it must refuse
        (payload buffer too small) resets the connection to /dev/fuse."""
        try:
            probe = uring.Ring(self.fd, 0, 1, uring.PAGE)
        except OSError as exc:
            log.error("%s: cannot reset the FUSE connection to /dev/fuse: %s",
                      self.mount_point, exc)  # fmt: skip
            return
        try:
            probe.register_all(payload_size=0)
            probe.enter(wait=False)
        except OSError as exc:
            log.error("%s: cannot reset the FUSE connection to /dev/fuse: %s",
                      self.mount_point, exc)  # fmt: skip
        finally:
            probe.close()

    def _serve_ring(self, ring: uring.Ring, report: Callable[[int, str | None], None]) -> None:
        """Register the ring's entries from its CPU, then serve: each CQE is one request
        (res 0) whose reply goes back with the COMMIT_AND_FETCH that re-arms the entry."""
        qid = ring.qid
        try:
            try:
                os.sched_setaffinity(0, {qid})
            except OSError as exc:  # an offline CPU: serve unpinned, still correct
                log.warning("fuse-ring-%d: cannot pin to CPU %d: %s", qid, qid, exc.strerror)
            if self._ring_sched_idle:
                try:
                    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                except OSError as exc:
                    log.warning("fuse-ring-%d: cannot set SCHED_IDLE: %s", qid, exc.strerror)
            short = self._uring_fault == "register" and qid == self._rings[-1].qid
            ring.register_all(payload_size=uring.PAGE if short else None)
            ring.enter(wait=False)
        except BaseException as exc:
            report(qid, f"registration failed: {exc}")
            return
        # A refused REGISTER completes at once; an accepted one only with a request.
        early = ring.completions()
        refused = [res for _, res in early if res < 0]
        if refused:
            report(qid, f"kernel refused registration: {os.strerror(-refused[0])}")
            return
        report(qid, None)
        counts = self.requests_per_queue
        try:
            pending = early
            while True:
                for index, res in pending:
                    entry = ring.entries[index]
                    if res == 0:
                        header, body = ring.request(entry)
                        _len, opcode, unique, nodeid, uid, gid, pid, _e, _p = header
                        entry.replied = False
                        self._dispatch(
                            entry.send, opcode, Request(unique, nodeid, uid, gid, pid), body
                        )
                        if not entry.replied:  # a ring request always gets an answer
                            entry.send(unique, -errno.ENOSYS, b"")
                        counts[qid] += 1
                        ring.commit(entry)
                    elif -res in (errno.EAGAIN, errno.EINTR):
                        ring.resubmit(entry)
                    elif -res in uring.ENDED:
                        return  # unmounted or aborted: the normal end
                    elif entry.last_command == uring.FUSE_IO_URING_CMD_COMMIT_AND_FETCH:
                        # The kernel dropped this entry (e.g. a commit it no longer
                        # knew): register it afresh so the queue keeps its depth.
                        log.warning("fuse-ring-%d: entry %d: %s; registering it again",
                                    qid, index, os.strerror(-res))  # fmt: skip
                        ring.resubmit_register(entry)
                    else:  # a fresh registration refused: no retry loop
                        log.error("fuse-ring-%d: entry %d: registering again failed: %s",
                                  qid, index, os.strerror(-res))  # fmt: skip
                ring.enter(wait=True)
                pending = ring.completions()
        except BaseException as exc:  # a broken session must be seen, not hang
            log.exception("FUSE ring thread failed")
            self._failure = exc

    # --- the workers -----------------------------------------------------------------
    def _serve(self, fd: int) -> None:
        buf = bytearray(BUFFER_SIZE)
        whole = memoryview(buf)
        header = abi.IN_HEADER

        def send(unique: int, error: int, payload: bytes) -> None:
            self._send(fd, unique, error, payload)

        try:
            while True:
                try:
                    size = os.readv(fd, [buf])
                except OSError as exc:
                    if exc.errno == errno.ENODEV:
                        return  # unmounted or aborted: the normal end
                    if exc.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                        continue  # the request was interrupted before we read it
                    raise
                view = whole[:size]
                _len, opcode, unique, nodeid, uid, gid, pid, _ext, _pad = header.unpack_from(view)
                self._dispatch(
                    send, opcode, Request(unique, nodeid, uid, gid, pid), view[header.size :]
                )
        except BaseException as exc:  # a broken session must be seen, not hang
            log.exception("FUSE worker failed")
            self._failure = exc

    def _dispatch(self, send: Reply, opcode: int, req: Request, body: memoryview) -> None:
        if not self.count_requests:
            self._handle(send, opcode, req, body)
            return
        # Benchmarks only: how many requests of each opcode, and the microseconds spent
        # handling them (reply included) under "us NAME".
        name = Opcode(opcode).name if opcode in Opcode._value2member_map_ else str(opcode)
        started = time.perf_counter()
        try:
            self._handle(send, opcode, req, body)
        finally:
            spent = int((time.perf_counter() - started) * 1e6)
            with self._count_lock:
                self.request_counts[name] = self.request_counts.get(name, 0) + 1
                key = f"us {name}"
                self.request_counts[key] = self.request_counts.get(key, 0) + spent

    def _handle(self, send: Reply, opcode: int, req: Request, body: memoryview) -> None:
        """One request on either transport; `send` writes the reply on it."""
        handler = self._handlers.get(opcode)
        if handler is None:
            if opcode in (Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT):
                return
            send(req.unique, -errno.ENOSYS, b"")
            return
        try:
            payload = handler(req, body)
        except OSError as exc:
            send(req.unique, -(exc.errno or errno.EIO), b"")
            return
        except Exception:
            log.exception("unexpected error in %s", Opcode(opcode).name)
            send(req.unique, -errno.EIO, b"")
            return
        if payload is not None:
            send(req.unique, 0, payload)

    @staticmethod
    def _send(fd: int, unique: int, error: int, payload: bytes) -> None:
        header = abi.OUT_HEADER.pack(abi.OUT_HEADER.size + len(payload), error, unique)
        try:
            if payload:
                os.writev(fd, [header, payload])
            else:
                os.write(fd, header)
        except OSError as exc:
            # ENOENT: the request was interrupted and is gone; ENODEV: connection ended.
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    # --- parsing ---------------------------------------------------------------------
    def _handler_table(self) -> dict[int, Callable[[Request, memoryview], bytes | None]]:
        ops = self.operations

        def lookup(req: Request, body: memoryview) -> bytes:
            return ops.lookup(req, req.nodeid, _cstring(body)[0])

        def forget(req: Request, body: memoryview) -> None:
            ops.forget([(req.nodeid, abi.FORGET_IN.unpack_from(body)[0])])

        def batch_forget(req: Request, body: memoryview) -> None:
            count, _ = abi.BATCH_FORGET_IN.unpack_from(body)
            step, base = abi.FORGET_ONE.size, abi.BATCH_FORGET_IN.size
            ops.forget([abi.FORGET_ONE.unpack_from(body, base + i * step) for i in range(count)])

        def getattr_(req: Request, body: memoryview) -> bytes:
            flags, _, fh = abi.GETATTR_IN.unpack_from(body)
            return ops.getattr(req, fh if flags & abi.GETATTR_FH else None)

        def setattr_(req: Request, body: memoryview) -> bytes:
            (valid, _, fh, size, _lock, atime, mtime, _ctime, atimensec, mtimensec,
             _ctimensec, mode, _u4, uid, gid, _u5) = abi.SETATTR_IN.unpack_from(body)  # fmt: skip
            values = SetattrValues(
                size, atime * 1_000_000_000 + atimensec, mtime * 1_000_000_000 + mtimensec,
                mode, uid, gid,
            )  # fmt: skip
            return ops.setattr(req, valid, fh if valid & abi.FATTR_FH else None, values)

        def readlink(req: Request, body: memoryview) -> bytes:
            return ops.readlink(req)

        def symlink(req: Request, body: memoryview) -> bytes:
            name, after = _cstring(body)
            target, _ = _cstring(body, after)
            return ops.symlink(req, name, target)

        def mknod(req: Request, body: memoryview) -> bytes:
            mode, rdev, _umask, _ = abi.MKNOD_IN.unpack_from(body)
            return ops.mknod(req, _cstring(body, abi.MKNOD_IN.size)[0], mode, rdev)

        def mkdir(req: Request, body: memoryview) -> bytes:
            mode, _umask = abi.MKDIR_IN.unpack_from(body)
            return ops.mkdir(req, _cstring(body, abi.MKDIR_IN.size)[0], mode)

        def unlink(req: Request, body: memoryview) -> bytes:
            return ops.unlink(req, _cstring(body)[0])

        def rmdir(req: Request, body: memoryview) -> bytes:
            return ops.rmdir(req, _cstring(body)[0])

        def rename(req: Request, body: memoryview) -> bytes:
            (new_dir,) = abi.RENAME_IN.unpack_from(body)
            old, after = _cstring(body, abi.RENAME_IN.size)
            new, _ = _cstring(body, after)
            return ops.rename(req, old, new_dir, new, 0)

        def rename2(req: Request, body: memoryview) -> bytes:
            new_dir, flags, _ = abi.RENAME2_IN.unpack_from(body)
            old, after = _cstring(body, abi.RENAME2_IN.size)
            new, _ = _cstring(body, after)
            return ops.rename(req, old, new_dir, new, flags)

        def link(req: Request, body: memoryview) -> bytes:
            (old_node,) = abi.LINK_IN.unpack_from(body)
            return ops.link(req, old_node, _cstring(body, abi.LINK_IN.size)[0])

        def open_(req: Request, body: memoryview) -> bytes:
            flags, open_flags = abi.OPEN_IN.unpack_from(body)
            return ops.open(req, flags, open_flags)

        def create(req: Request, body: memoryview) -> bytes:
            flags, mode, _umask, open_flags = abi.CREATE_IN.unpack_from(body)
            return ops.create(req, _cstring(body, abi.CREATE_IN.size)[0], mode, flags, open_flags)

        def read(req: Request, body: memoryview) -> bytes:
            fh, offset, size, *_ = abi.READ_IN.unpack_from(body)
            return ops.read(req, fh, offset, size)

        def write(req: Request, body: memoryview) -> bytes:
            fh, offset, size, write_flags, *_ = abi.WRITE_IN.unpack_from(body)
            data = body[abi.WRITE_IN.size : abi.WRITE_IN.size + size]
            return ops.write(req, fh, offset, data, write_flags)

        def statfs(req: Request, body: memoryview) -> bytes:
            return ops.statfs(req)

        def release(req: Request, body: memoryview) -> bytes:
            fh, flags, _rflags, _lock = abi.RELEASE_IN.unpack_from(body)
            return ops.release(req, fh, flags)

        def flush(req: Request, body: memoryview) -> bytes:
            (fh, *_) = abi.FLUSH_IN.unpack_from(body)
            return ops.flush(req, fh)

        def fsync(req: Request, body: memoryview) -> bytes:
            fh, flags, _ = abi.FSYNC_IN.unpack_from(body)
            return ops.fsync(req, fh, bool(flags & abi.FSYNC_FDATASYNC))

        def fsyncdir(req: Request, body: memoryview) -> bytes:
            fh, flags, _ = abi.FSYNC_IN.unpack_from(body)
            return ops.fsyncdir(req, fh, bool(flags & abi.FSYNC_FDATASYNC))

        def setxattr(req: Request, body: memoryview) -> bytes:
            size, flags = abi.SETXATTR_IN.unpack_from(body)
            name, after = _cstring(body, abi.SETXATTR_IN.size)
            return ops.setxattr(req, name, body[after : after + size].tobytes(), flags)

        def getxattr(req: Request, body: memoryview) -> bytes:
            size, _ = abi.GETXATTR_IN.unpack_from(body)
            return ops.getxattr(req, _cstring(body, abi.GETXATTR_IN.size)[0], size)

        def listxattr(req: Request, body: memoryview) -> bytes:
            size, _ = abi.GETXATTR_IN.unpack_from(body)
            return ops.listxattr(req, size)

        def removexattr(req: Request, body: memoryview) -> bytes:
            return ops.removexattr(req, _cstring(body)[0])

        def opendir(req: Request, body: memoryview) -> bytes:
            flags, _ = abi.OPEN_IN.unpack_from(body)
            return ops.opendir(req, flags)

        def readdir(req: Request, body: memoryview) -> bytes:
            fh, offset, size, *_ = abi.READ_IN.unpack_from(body)
            return ops.readdir(req, fh, offset, size, False)

        def readdirplus(req: Request, body: memoryview) -> bytes:
            fh, offset, size, *_ = abi.READ_IN.unpack_from(body)
            return ops.readdir(req, fh, offset, size, True)

        def releasedir(req: Request, body: memoryview) -> bytes:
            fh, *_ = abi.RELEASE_IN.unpack_from(body)
            return ops.releasedir(req, fh)

        def fallocate(req: Request, body: memoryview) -> bytes:
            fh, offset, length, mode, _ = abi.FALLOCATE_IN.unpack_from(body)
            return ops.fallocate(req, fh, offset, length, mode)

        def lseek(req: Request, body: memoryview) -> bytes:
            fh, offset, whence, _ = abi.LSEEK_IN.unpack_from(body)
            return ops.lseek(req, fh, offset, whence)

        def copy_file_range(req: Request, body: memoryview) -> bytes:
            fh_in, off_in, node_out, fh_out, off_out, length, flags = (
                abi.COPY_FILE_RANGE_IN.unpack_from(body)
            )
            return ops.copy_file_range(req, fh_in, off_in, node_out, fh_out, off_out, length, flags)

        def interrupt(req: Request, body: memoryview) -> None:
            return None

        def destroy(req: Request, body: memoryview) -> bytes:
            return b""

        return {
            Opcode.LOOKUP: lookup, Opcode.FORGET: forget, Opcode.BATCH_FORGET: batch_forget,
            Opcode.GETATTR: getattr_, Opcode.SETATTR: setattr_, Opcode.READLINK: readlink,
            Opcode.SYMLINK: symlink, Opcode.MKNOD: mknod, Opcode.MKDIR: mkdir,
            Opcode.UNLINK: unlink, Opcode.RMDIR: rmdir, Opcode.RENAME: rename,
            Opcode.RENAME2: rename2, Opcode.LINK: link, Opcode.OPEN: open_,
            Opcode.CREATE: create, Opcode.READ: read, Opcode.WRITE: write,
            Opcode.STATFS: statfs, Opcode.RELEASE: release, Opcode.FLUSH: flush,
            Opcode.FSYNC: fsync, Opcode.FSYNCDIR: fsyncdir, Opcode.SETXATTR: setxattr,
            Opcode.GETXATTR: getxattr, Opcode.LISTXATTR: listxattr,
            Opcode.REMOVEXATTR: removexattr, Opcode.OPENDIR: opendir,
            Opcode.READDIR: readdir, Opcode.READDIRPLUS: readdirplus,
            Opcode.RELEASEDIR: releasedir, Opcode.FALLOCATE: fallocate,
            Opcode.LSEEK: lseek, Opcode.COPY_FILE_RANGE: copy_file_range,
            Opcode.INTERRUPT: interrupt, Opcode.DESTROY: destroy,
        }  # fmt: skip
