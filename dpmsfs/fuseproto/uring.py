"""FUSE over io_uring: one ring and one pinned thread per CPU (Linux 6.14+).

Why: on the classic /dev/fuse queue the kernel wakes a reader with a plain wake-up, so
the scheduler puts it on an idle other CPU and each request pays two wake-ups of a
halted vCPU (27-38 µs per request on one CPU against 110-260 µs across, measured on
the lead's 2-vCPU VM). With FUSE over io_uring the kernel puts a request on the queue
of the CPU its caller runs on (`task_cpu(current)`) and completes it as task work on
the thread that registered that queue's entries; pinned to that CPU, the thread
serves the request where it was asked.

The protocol (fs/fuse/dev_uring.c, include/uapi/linux/fuse.h):

* INIT stays on /dev/fuse; the reply carries FUSE_OVER_IO_URING (offered only while
  the module parameter `enable_uring` is on). From then on the kernel holds new
  requests back until every possible CPU's queue has an entry registered, then
  switches to the rings. FORGET and INTERRUPT still come on /dev/fuse.
* An entry is a header buffer (struct fuse_uring_req_header: 128 bytes in/out header,
  128 bytes per-opcode header, 32 bytes fuse_uring_ent_in_out) and a payload buffer of
  at least max(max_write, max_pages * PAGE_SIZE). It is registered with an
  IORING_OP_URING_CMD SQE (SQE128: the 80-byte command area holds struct
  fuse_uring_cmd_req {flags, commit_id, qid}) whose addr points at an iovec[2].
* A request arrives as a CQE with res 0: fuse_in_header in the header buffer, the
  opcode's first argument (fuse_read_in, fuse_getxattr_in, ...; empty for name-only
  opcodes such as LOOKUP) in op_in, every further argument packed in the payload,
  ent_in_out.commit_id and payload_sz set. The answer: fuse_out_header in the header
  buffer, the whole reply body in the payload, payload_sz, and a COMMIT_AND_FETCH SQE
  with commit_id, which also re-arms the entry.
* The end: on unmount or abort the kernel completes every armed entry with -ENOTCONN
  (or -ECANCELED / -ECONNABORTED); a failed REGISTER resets the connection to
  /dev/fuse (`fc->io_uring = 0`), which is how a half-done setup falls back.

Memory ordering, and what this code assumes: x86-64 (TSO). Stores are not reordered
with other stores, loads not with other loads, and loads not with later stores. So an
SQE filled with plain stores before the store of the SQ tail is complete when the
kernel sees the tail (and the kernel reads the tail only inside io_uring_enter, a full
barrier anyway); a CQE read after the load of the CQ tail is the one the tail covers;
the CQ head stored after reading a CQE frees it only after we read it. Each ring is
used by exactly one thread. On a weakly ordered CPU these would need acquire/release
and this module refuses to start there (`supported()`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import platform
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from dpmsfs.fuseproto import abi

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# io_uring_enter once per request batch: its own function object with argtypes, so a
# call converts plain ints in C (cheaper than building ctypes values in Python).
_enter = _libc["syscall"]
_enter.restype = ctypes.c_long
_enter.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                   ctypes.c_void_p, ctypes.c_size_t]  # fmt: skip

SYS_IO_URING_SETUP = 425
SYS_IO_URING_ENTER = 426

IORING_SETUP_CQSIZE = 1 << 3
IORING_SETUP_COOP_TASKRUN = 1 << 8
IORING_SETUP_TASKRUN_FLAG = 1 << 9
IORING_SETUP_SQE128 = 1 << 10
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000
IORING_ENTER_GETEVENTS = 1 << 0
IORING_OP_URING_CMD = 46

FUSE_IO_URING_CMD_REGISTER = 1
FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2

ENABLE_PARAMETER = "/sys/module/fuse/parameters/enable_uring"

SQE_SIZE = 128  # IORING_SETUP_SQE128
CQE = struct.Struct("<QiI")  # user_data res flags
# struct io_uring_params: 10 u32, then io_sqring_offsets and io_cqring_offsets (40 each)
PARAMS = struct.Struct("<IIIIIII12x" + "IIIIIIIIQ" + "IIIIIIIIQ")
assert PARAMS.size == 120
# SQE fields we set: opcode flags ioprio fd | cmd_op pad | addr | len | rw_flags | user_data
SQE_HEAD = struct.Struct("<BBHiIIQIIQ")
CMD_OFFSET = 48  # the 80-byte command area of an SQE128
CMD_REQ = struct.Struct("<QQH6x")  # struct fuse_uring_cmd_req: flags commit_id qid
IOVEC2 = struct.Struct("<QQQQ")

# struct fuse_uring_req_header
HEADER_IN_OUT = 0
HEADER_OP_IN = 128
OP_IN_SIZE = 128
HEADER_ENT_IN_OUT = 256
HEADER_SIZE = 288
ENT_IN_OUT = struct.Struct("<QQII8x")  # flags commit_id payload_sz padding reserved
COMMIT_AND_SIZE = struct.Struct("<8xQI")  # the two fields of it a request needs
COMMIT_ID = struct.Struct("<Q")
U32 = struct.Struct("<I")
PAYLOAD_SZ_OFFSET = HEADER_ENT_IN_OUT + 16

# Our entry layout in one anonymous mapping: the header at 0, the payload at PAGE; the
# opcode header is copied to just before the payload so that a request's body is one
# contiguous memoryview, as on /dev/fuse (no copy of WRITE data).
PAGE = mmap.PAGESIZE

ENDED = (errno.ENOTCONN, errno.ECANCELED, errno.ECONNABORTED, errno.ENODEV)


class RingError(OSError):
    """Setting up or registering a ring failed: the session falls back to /dev/fuse."""


def supported() -> bool:
    """x86-64 only: the ring code relies on its store and load order (module docstring)."""
    return platform.machine() in ("x86_64", "AMD64")


def parameter_state() -> bool | None:
    """The fuse module's `enable_uring`: True/False, None when this kernel lacks it."""
    try:
        with open(ENABLE_PARAMETER) as param:
            return param.read().strip() in ("Y", "1")
    except OSError:
        return None


def enable_parameter() -> None:
    """Turn `enable_uring` on (root). Raises OSError if the kernel refuses."""
    with open(ENABLE_PARAMETER, "w") as param:
        param.write("1")


def possible_cpus() -> list[int]:
    """The kernel makes one queue per possible CPU (num_possible_cpus)."""
    try:
        with open("/sys/devices/system/cpu/possible") as spec:
            text = spec.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def _address(buffer: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


@dataclass
class Entry:
    """One registered request slot: its mapping and the commit id of its request."""

    index: int
    memory: mmap.mmap
    view: memoryview
    iovecs: ctypes.Array[ctypes.c_char]
    commit_id: int = 0
    last_command: int = FUSE_IO_URING_CMD_REGISTER
    replied: bool = False
    # The COMMIT_AND_FETCH SQE of this entry, built once: only the commit id changes.
    commit_sqe: bytearray = field(default_factory=lambda: bytearray(SQE_SIZE))
    # The session's reply callable for this entry: (unique, -errno or 0, payload).
    send: Callable[[int, int, bytes], None] = field(default=lambda u, e, p: None)


class Ring:
    """One io_uring instance and the FUSE entries registered through it, used by one
    thread only. Created before INIT is answered (so that a failure here means the
    INIT reply does not ask for io_uring); registered from the serving thread."""

    def __init__(self, device_fd: int, qid: int, depth: int, payload_size: int) -> None:
        self.device_fd = device_fd
        self.qid = qid
        self.depth = depth
        self.payload_size = payload_size
        self.fd = -1
        self._maps: list[mmap.mmap] = []
        self.entries: list[Entry] = []
        raw = bytearray(PARAMS.size)
        # flags; the kernel fills in the rest. COOP_TASKRUN: the kernel need not
        # interrupt this thread to run task work (it only ever waits in
        # io_uring_enter or handles a request it already has).
        flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN
        struct.pack_into("<III", raw, 0, 0, depth * 2, flags)
        params = (ctypes.c_char * len(raw)).from_buffer(raw)
        fd = _syscall(SYS_IO_URING_SETUP, ctypes.c_uint(depth), params)
        if fd < 0:
            err = ctypes.get_errno()
            raise RingError(err, f"io_uring_setup: {os.strerror(err)}")
        self.fd = int(fd)
        try:
            self._map_rings(PARAMS.unpack_from(raw))
            for index in range(depth):
                self.entries.append(self._make_entry(index))
        except BaseException:
            self.close()
            raise

    def _map_rings(self, params: tuple[int, ...]) -> None:
        sq_entries, cq_entries, _flags, _cpu, _idle, features, _wq = params[:7]
        (sq_head, sq_tail, sq_mask, _sq_n, _sq_flags, _dropped, sq_array) = params[7:14]
        (cq_head, cq_tail, cq_mask, _cq_n, _overflow, cqes) = params[16:22]
        if not features & IORING_FEAT_SINGLE_MMAP:
            raise RingError(errno.EOPNOTSUPP, "io_uring without IORING_FEAT_SINGLE_MMAP")
        ring_size = max(sq_array + sq_entries * 4, cqes + cq_entries * CQE.size)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        rings = mmap.mmap(self.fd, ring_size, mmap.MAP_SHARED, prot, offset=IORING_OFF_SQ_RING)
        sqes = mmap.mmap(self.fd, sq_entries * SQE_SIZE, mmap.MAP_SHARED, prot,
                         offset=IORING_OFF_SQES)  # fmt: skip
        self._maps += [rings, sqes]
        self.rings = memoryview(rings)
        self.sqes = memoryview(sqes)
        self.sq_entries = sq_entries
        self.sq_head, self.sq_tail, self.sq_mask = sq_head, sq_tail, sq_mask
        self.cq_head, self.cq_tail, self.cq_mask, self.cqes = cq_head, cq_tail, cq_mask, cqes
        # The SQ index array maps slot i to SQE i once and for all.
        mask = struct.unpack_from("<I", self.rings, sq_mask)[0]
        for slot in range(sq_entries):
            struct.pack_into("<I", self.rings, sq_array + 4 * slot, slot & mask)
        self.sq_mask_value = mask
        self.cq_mask_value = struct.unpack_from("<I", self.rings, cq_mask)[0]
        # We are the only producer: the SQ tail lives here and is published to the ring.
        self._tail = self._u32(sq_tail)
        self._unsubmitted = 0

    def _make_entry(self, index: int) -> Entry:
        memory = mmap.mmap(-1, PAGE + self.payload_size)
        self._maps.append(memory)
        base = _address(memory)
        iovecs = (ctypes.c_char * IOVEC2.size)()
        IOVEC2.pack_into(iovecs, 0, base, HEADER_SIZE, base + PAGE, self.payload_size)
        entry = Entry(index, memory, memoryview(memory), iovecs)
        SQE_HEAD.pack_into(
            entry.commit_sqe, 0, IORING_OP_URING_CMD, 0, 0, self.device_fd,
            FUSE_IO_URING_CMD_COMMIT_AND_FETCH, 0, 0, 0, 0, index,
        )  # fmt: skip
        CMD_REQ.pack_into(entry.commit_sqe, CMD_OFFSET, 0, 0, self.qid)

        def send(unique: int, error: int, payload: bytes) -> None:
            self.reply(entry, unique, error, payload)

        entry.send = send
        return entry

    # --- submission ------------------------------------------------------------------
    def _u32(self, offset: int) -> int:
        value: int = struct.unpack_from("<I", self.rings, offset)[0]
        return value

    def _queue(self, entry: Entry, command: int, payload_size: int | None = None) -> None:
        """Fill the next SQE for `entry` and publish it (tail store last: TSO)."""
        tail = self._tail
        slot = tail & self.sq_mask_value
        offset = slot * SQE_SIZE
        sqe = self.sqes
        sqe[offset : offset + SQE_SIZE] = bytes(SQE_SIZE)
        if command == FUSE_IO_URING_CMD_REGISTER:
            addr, length = ctypes.addressof(entry.iovecs), 2
            if payload_size is not None:  # tests: a registration the kernel refuses
                IOVEC2.pack_into(entry.iovecs, 0, _address(entry.memory), HEADER_SIZE,
                                 _address(entry.memory) + PAGE, payload_size)  # fmt: skip
        else:
            addr, length = 0, 0
        SQE_HEAD.pack_into(
            sqe, offset, IORING_OP_URING_CMD, 0, 0, self.device_fd, command, 0, addr, length,
            0, entry.index,
        )  # fmt: skip
        CMD_REQ.pack_into(sqe, offset + CMD_OFFSET, 0, entry.commit_id, self.qid)
        entry.last_command = command
        self._publish(tail)

    def _publish(self, tail: int) -> None:
        self._tail = (tail + 1) & 0xFFFFFFFF
        self._unsubmitted += 1
        U32.pack_into(self.rings, self.sq_tail, self._tail)

    def register_all(self, payload_size: int | None = None) -> None:
        for entry in self.entries:
            entry.commit_id = 0
            self._queue(entry, FUSE_IO_URING_CMD_REGISTER, payload_size)

    def commit(self, entry: Entry) -> None:
        """Queue the entry's COMMIT_AND_FETCH (the reply is in its buffers)."""
        template = entry.commit_sqe
        COMMIT_ID.pack_into(template, CMD_OFFSET + 8, entry.commit_id)
        tail = self._tail
        offset = (tail & self.sq_mask_value) * SQE_SIZE
        self.sqes[offset : offset + SQE_SIZE] = template
        entry.last_command = FUSE_IO_URING_CMD_COMMIT_AND_FETCH
        self._publish(tail)

    def resubmit(self, entry: Entry) -> None:
        self._queue(entry, entry.last_command)

    def resubmit_register(self, entry: Entry) -> None:
        entry.commit_id = 0
        self._queue(entry, FUSE_IO_URING_CMD_REGISTER, self.payload_size)

    def enter(self, wait: bool) -> None:
        """Submit what is queued; with `wait`, sleep until at least one completion."""
        while True:
            pending = self._unsubmitted
            if not pending and not wait:
                return
            result = _enter(
                SYS_IO_URING_ENTER, self.fd, pending, 1 if wait else 0,
                IORING_ENTER_GETEVENTS if wait else 0, None, 0,
            )  # fmt: skip
            if result >= 0:
                self._unsubmitted = max(0, pending - result)
                return
            err = ctypes.get_errno()
            if err in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                if err != errno.EINTR and not wait:
                    return
                if err == errno.EINTR and self._ready():
                    return
                continue
            raise OSError(err, f"io_uring_enter: {os.strerror(err)}")

    def _ready(self) -> bool:
        return self._u32(self.cq_head) != self._u32(self.cq_tail)

    def completions(self) -> list[tuple[int, int]]:
        """The CQEs the kernel posted, as (entry index, res); frees their slots."""
        head = self._u32(self.cq_head)
        tail = self._u32(self.cq_tail)
        done: list[tuple[int, int]] = []
        while head != tail:
            offset = self.cqes + (head & self.cq_mask_value) * CQE.size
            user_data, res, _flags = CQE.unpack_from(self.rings, offset)
            done.append((user_data, res))
            head = (head + 1) & 0xFFFFFFFF
        struct.pack_into("<I", self.rings, self.cq_head, head)
        return done

    # --- one request -----------------------------------------------------------------
    def request(self, entry: Entry) -> tuple[tuple[int, ...], memoryview]:
        """The request in `entry`: its fuse_in_header fields and its body (the opcode
        header followed by the payload, contiguous)."""
        view = entry.view
        entry.commit_id, payload_size = COMMIT_AND_SIZE.unpack_from(view, HEADER_ENT_IN_OUT)
        header = abi.IN_HEADER.unpack_from(view, HEADER_IN_OUT)
        op_size = max(0, min(OP_IN_SIZE, header[0] - abi.IN_HEADER.size - payload_size))
        start = PAGE - op_size
        if op_size:
            view[start:PAGE] = view[HEADER_OP_IN : HEADER_OP_IN + op_size]
        return header, view[start : PAGE + payload_size]

    def reply(self, entry: Entry, unique: int, error: int, payload: bytes) -> None:
        """Write the answer into the entry's buffers (the commit SQE follows)."""
        entry.replied = True
        out_header = abi.OUT_HEADER
        size = len(payload)
        if size > self.payload_size:
            error, size = -errno.EIO, 0
            log.error("reply of %d bytes exceeds the ring payload buffer", len(payload))
        view = entry.view
        if size:
            view[PAGE : PAGE + size] = payload
        out_header.pack_into(view, HEADER_IN_OUT, out_header.size + size, error, unique)
        struct.pack_into("<I", view, PAYLOAD_SZ_OFFSET, size)

    def close(self) -> None:
        for attr in ("rings", "sqes"):
            if hasattr(self, attr):
                getattr(self, attr).release()
        for entry in self.entries:
            entry.view.release()
        for memory in self._maps:
            try:
                memory.close()
            except BufferError:  # a ctypes view still holds it: freed with the process
                pass
        self._maps.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def create_rings(
    device_fd: int, depth: int, payload_size: int, fail: Callable[[int], None] | None = None
) -> list[Ring]:
    """One ring per possible CPU, or RingError (then none stays open)."""
    rings: list[Ring] = []
    try:
        for qid in possible_cpus():
            if fail is not None:
                fail(qid)
            rings.append(Ring(device_fd, qid, depth, payload_size))
    except BaseException:
        for ring in rings:
            ring.close()
        raise
    return rings
