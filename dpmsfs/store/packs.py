"""Pack files: many compressed objects in one file, self-describing.

Layout (all integers big-endian)::

    header   32 bytes  ">8sHH16sI"  magic b"DPMSPACK", format version, 0, pack id, 0
    record   21 bytes  ">B16sI"     object type, object id, payload length
             payload                chunker.compress_chunk blob (flag + raw size + data)
    ...      (more records)
    footer   29 bytes per record ">B16sQI": object type, object id, record offset,
             payload length, in file order
    trailer  28 bytes  ">QIQ8s"     footer offset, record count,
                                    xxh3-64 of header + footer entries, magic b"DPMSPEND"

The footer repeats every record's place so the index can be rebuilt from packs alone and
so `verify` can check index and pack agree without reading the data.  A pack is written
to ``tmp/`` and only renamed into ``packs/<2 hex>/<32 hex>.pack`` once complete and
fsynced: a pack under ``packs/`` is always whole (unless damaged afterwards).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Sequence
from typing import NamedTuple

import xxhash

from dpmsfs.store.errors import StoreError, StoreFullError
from dpmsfs.store.schema import FORMAT_VERSION, PackInfo

log = logging.getLogger(__name__)

PACK_MAGIC = b"DPMSPACK"
TRAILER_MAGIC = b"DPMSPEND"
HEADER = struct.Struct(">8sHH16sI")
RECORD = struct.Struct(">B16sI")
FOOTER_ENTRY = struct.Struct(">B16sQI")
TRAILER = struct.Struct(">QIQ8s")
DEFAULT_PACK_SIZE = 32 << 20


class PackFormatError(StoreError):
    """A pack's header, record header, footer or trailer is not what it should be."""


class FooterEntry(NamedTuple):
    type: int
    object_id: bytes
    offset: int
    length: int


def pack_path(packs_dir: str, pack_id: bytes) -> str:
    name = pack_id.hex()
    return os.path.join(packs_dir, name[:2], name + ".pack")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _full(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFullError(f"no space left on the store disk while {what}")
    return exc


class PackWriter:
    """Appends records to a new pack in ``tmp_dir``; `seal` moves it under ``packs_dir``.

    Not thread-safe: the store serializes `append` under its lock.  `read` (pread) is safe
    from any thread.  A failed write is rolled back with ftruncate, so the file always ends
    on a record boundary and the writer stays usable once space returns.
    """

    def __init__(self, tmp_dir: str, packs_dir: str, pack_id: bytes) -> None:
        self.pack_id = pack_id
        self._packs_dir = packs_dir
        self._tmp_path = os.path.join(tmp_dir, pack_id.hex() + ".pack.tmp")
        self.path = self._tmp_path
        self.entries: list[FooterEntry] = []
        self.raw_lengths: list[int] = []  # per entry, for the index (not in the footer)
        self.info: PackInfo | None = None  # set by seal
        self.sealed = False
        self._header = HEADER.pack(PACK_MAGIC, FORMAT_VERSION, 0, pack_id, 0)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self._fd = os.open(self._tmp_path, flags, 0o644)
        except OSError as exc:
            raise _full(exc, "creating a pack") from exc
        self.size = 0
        try:
            self._write_all(self._header)
        except BaseException:
            self.close()
            os.unlink(self._tmp_path)
            raise

    def _write_all(self, *parts: bytes | memoryview) -> None:
        start = self.size
        views = [memoryview(part).cast("B") for part in parts if len(part)]
        try:
            while views:
                written = os.pwritev(self._fd, views, self.size)
                self.size += written
                while views and written >= len(views[0]):  # drop what was written
                    written -= len(views[0])
                    views.pop(0)
                if written:
                    views[0] = views[0][written:]
        except OSError as exc:
            self.size = start
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                log.warning("cannot truncate %s back to %d after a failed write", self.path, start)
            raise _full(exc, "writing a pack") from exc

    def append(
        self,
        obj_type: int,
        object_id: bytes,
        payload: bytes | memoryview | Sequence[bytes | memoryview],
        raw_length: int,
    ) -> int:
        """Append one record; return its offset (of the record header).

        ``payload`` may be given in parts (a frame header and its data): they are
        written with one ``pwritev``, without joining them first.
        """
        if self.sealed:
            raise StoreError("append to a sealed pack")
        parts = [payload] if isinstance(payload, (bytes, memoryview)) else list(payload)
        length = sum(len(part) for part in parts)
        offset = self.size
        self._write_all(RECORD.pack(obj_type, object_id, length), *parts)
        self.entries.append(FooterEntry(obj_type, object_id, offset, length))
        self.raw_lengths.append(raw_length)
        return offset

    def read(self, offset: int, length: int, object_id: bytes) -> tuple[int, memoryview]:
        return read_record(self._fd, offset, length, object_id, self.path)

    def seal(self, now_ns: int) -> PackInfo:
        """Footer, fsync, rename into place, fsync the directory: the pack is durable.

        On failure (e.g. ENOSPC) the footer is cut off again and the pack stays open, so
        sealing can be retried.
        """
        if self.sealed:
            raise StoreError("pack already sealed")
        data_end = self.size
        footer = b"".join(FOOTER_ENTRY.pack(*e) for e in self.entries)
        checksum = xxhash.xxh3_64_intdigest(self._header + footer)
        trailer = TRAILER.pack(data_end, len(self.entries), checksum, TRAILER_MAGIC)
        self._write_all(footer + trailer)
        try:
            os.fsync(self._fd)
            final = pack_path(self._packs_dir, self.pack_id)
            subdir = os.path.dirname(final)
            created = False
            if not os.path.isdir(subdir):
                os.makedirs(subdir, exist_ok=True)
                created = True
            os.rename(self._tmp_path, final)
            fsync_dir(subdir)
            if created:
                fsync_dir(self._packs_dir)
        except OSError as exc:
            self.size = data_end
            try:
                os.ftruncate(self._fd, data_end)
            except OSError:
                log.warning("cannot cut the footer off %s after a failed seal", self._tmp_path)
            raise _full(exc, "sealing a pack") from exc
        self.path = final
        self.sealed = True
        log.debug("sealed pack %s: %d records, %d bytes", final, len(self.entries), self.size)
        self.info = PackInfo(self.size, len(self.entries), now_ns)
        return self.info

    def discard(self) -> None:
        """Close and delete an unsealed pack (nothing in it was indexed)."""
        self.close()
        if not self.sealed:
            try:
                os.unlink(self._tmp_path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_record(
    fd: int, offset: int, length: int, object_id: bytes, path: str
) -> tuple[int, memoryview]:
    """Read one record with a single pread; return (object type, payload).

    The payload is a view of the bytes read (no second copy of a multi-MiB record).

    The record header must name ``object_id`` and ``length``: this catches an index entry
    that points at the wrong place before anything is decompressed.
    """
    want = RECORD.size + length
    data = os.pread(fd, want, offset)
    if len(data) != want:
        raise PackFormatError(
            f"record at {offset} in {path} is cut short ({len(data)} of {want} bytes)"
        )
    obj_type, rec_id, rec_len = RECORD.unpack_from(data)
    if rec_id != object_id or rec_len != length:
        raise PackFormatError(
            f"record at {offset} in {path} is {rec_id.hex()} ({rec_len} bytes), "
            f"expected {object_id.hex()} ({length} bytes)"
        )
    return obj_type, memoryview(data)[RECORD.size :]


def read_header(fd: int, path: str) -> tuple[int, bytes]:
    """Return (format version, pack id) from the header."""
    data = os.pread(fd, HEADER.size, 0)
    if len(data) != HEADER.size:
        raise PackFormatError(f"{path}: shorter than a pack header")
    magic, version, _, pack_id, _ = HEADER.unpack(data)
    if magic != PACK_MAGIC:
        raise PackFormatError(f"{path}: not a pack (bad magic)")
    if version != FORMAT_VERSION:
        raise PackFormatError(f"{path}: pack format version {version} is not supported")
    return int(version), bytes(pack_id)


def read_footer(fd: int, file_size: int, path: str) -> list[FooterEntry]:
    """Parse and check the footer (bounded by the file size, checksummed)."""
    if file_size < HEADER.size + TRAILER.size:
        raise PackFormatError(f"{path}: too short to hold a footer ({file_size} bytes)")
    trailer = os.pread(fd, TRAILER.size, file_size - TRAILER.size)
    footer_offset, count, checksum, magic = TRAILER.unpack(trailer)
    if magic != TRAILER_MAGIC:
        raise PackFormatError(f"{path}: no pack trailer (truncated or not sealed)")
    footer_len = count * FOOTER_ENTRY.size
    if footer_offset < HEADER.size or footer_offset + footer_len != file_size - TRAILER.size:
        raise PackFormatError(f"{path}: trailer does not match the file size")
    footer = os.pread(fd, footer_len, footer_offset)
    header = os.pread(fd, HEADER.size, 0)
    if len(footer) != footer_len or xxhash.xxh3_64_intdigest(header + footer) != checksum:
        raise PackFormatError(f"{path}: footer checksum mismatch")
    entries = [FooterEntry._make(e) for e in FOOTER_ENTRY.iter_unpack(footer)]
    expected = HEADER.size
    for entry in entries:
        if entry.offset != expected:
            raise PackFormatError(f"{path}: footer entry at {entry.offset} is out of sequence")
        expected = entry.offset + RECORD.size + entry.length
    if expected != footer_offset:
        raise PackFormatError(f"{path}: footer records do not end where the footer starts")
    return entries
