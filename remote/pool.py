"""The shared blob pool: one file per distinct plain content, named by its SHA-256.

Layout (contract in docs/remote-api.md): `DIR/pool/<d[0:2]>/<d[2:4]>/<digest>`. Two levels
of 256-way fan-out keep every directory small (a few million blobs for 12 tools leave ~50
entries per leaf directory), which NTFS and ext4 both list and look up quickly.

A blob file is a 64-byte header, then the chunk frame exactly as the first uploader sent it:

    magic `DPMSBLB2` (8) | SHA-256 of plain (32) | xxh3-128 of plain (16) | frame length u64

all big-endian. The server computed both digests itself from the decoded frame before the
file got its final name, so the header is a verified statement, and re-checking a blob
means decoding its frame again and comparing both digests (`check`).

Writing: temp file in DIR/tmp, fsync, `os.replace` into place, fsync of the leaf directory
(the store runs the fsyncs of one upload batch in parallel; `publish` returns the directory
to sync). A crash leaves either no file or a complete one under the final name; temp
leftovers are removed at start-up.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from remote import objfile
from remote.frames import BadFrameError, check_frame_header, inspect_frame, is_digest

log = logging.getLogger(__name__)

MAGIC = b"DPMSBLB2"
_HEADER = struct.Struct(">8s32s16sQ")
HEADER_SIZE = _HEADER.size


class CorruptBlob(Exception):
    """A blob file does not decode or does not hash to what its name and header say."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: str
    xxh3: str
    frame_size: int


def pack_header(digest: str, xxh3: str, frame_size: int) -> bytes:
    return _HEADER.pack(MAGIC, bytes.fromhex(digest), bytes.fromhex(xxh3), frame_size)


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _read_up_to(fd: int, n: int) -> bytes:
    """Up to `n` bytes from `fd`, fewer only at the end of the file (one read may return
    less than asked before that)."""
    data = os.read(fd, n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.read(fd, n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class BlobPool:
    def __init__(self, root: Path, tmp_dir: Path, quarantine_dir: Path) -> None:
        self.root = root
        self._root = str(root)
        self.tmp_dir = tmp_dir
        self.quarantine_dir = quarantine_dir

    def path(self, digest: str) -> Path:
        return self.root / digest[0:2] / digest[2:4] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    def write_temp(
        self, digest: str, xxh3: str, frame: bytes | memoryview, sync: bool = True
    ) -> Path:
        """A complete temp blob (not yet visible), fsynced unless `sync=False` (the caller
        then fsyncs it with `sync_file` before publishing). Removed again on any error."""
        tmp = self.tmp_dir / f"{secrets.token_hex(8)}.blob.tmp"
        try:
            with open(tmp, "xb") as f:
                f.write(pack_header(digest, xxh3, len(frame)))
                f.write(frame)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            objfile.unlink_quietly(tmp)
            raise
        return tmp

    def publish(self, tmp: Path, digest: str) -> Path:
        """Give a (synced) temp blob its final name; return the directory to fsync.

        The caller holds the digest's lock and has checked that no sound blob of this
        digest exists (first upload wins), so this only ever replaces a damaged one.
        """
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, final)
        except BaseException:
            objfile.unlink_quietly(tmp)
            raise
        return final.parent

    def read(self, digest: str) -> tuple[BlobInfo, bytes]:
        """(header, frame) of blob `digest`, header-checked only; FileNotFoundError if absent.

        A plain descriptor and os.read (Windows too): every chunk of a restore passes here
        (10 000 for a 2.2 GB tree), and a buffered file object plus pathlib cost more
        than the reads."""
        fd = os.open(f"{self._root}/{digest[0:2]}/{digest[2:4]}/{digest}", _READ_FLAGS)
        try:
            raw = _read_up_to(fd, HEADER_SIZE)
            if len(raw) != HEADER_SIZE:
                raise CorruptBlob("short header")
            magic, sha, xxh3, size = _HEADER.unpack(raw)
            if magic != MAGIC:
                raise CorruptBlob("bad magic")
            if sha.hex() != digest:
                raise CorruptBlob("header digest differs from the file name")
            frame = _read_up_to(fd, size + 1)
        finally:
            os.close(fd)
        if len(frame) != size:
            raise CorruptBlob(f"frame is {len(frame)} bytes, header says {size}")
        return BlobInfo(digest, xxh3.hex(), size), frame

    def read_for_sending(self, digest: str) -> tuple[BlobInfo, bytes]:
        """(header, frame) of blob `digest` with the cheap checks only: the 64-byte header
        (magic, digest = file name, frame length as recorded) and the frame's own header.

        What a download needs from the server (docs/design.md, "What the server checks
        when it sends"): the client decodes the frame and checks its xxh3-128 against the
        id it asked for, so a blob whose payload rotted is never taken for good data, and
        `dpmsfs-server verify` finds and quarantines it. Re-hashing here as well would
        double the work of every restore. FileNotFoundError if absent, CorruptBlob if a
        cheap check fails (the caller quarantines).
        """
        info, frame = self.read(digest)
        try:
            check_frame_header(frame)
        except BadFrameError as exc:
            raise CorruptBlob(f"frame header: {exc}") from exc
        return info, frame

    def check(self, digest: str) -> tuple[BlobInfo, bytes]:
        """Read and fully verify blob `digest`: decode, SHA-256 and xxh3-128 as recorded.

        Raises FileNotFoundError if absent, CorruptBlob if damaged (the caller quarantines).
        """
        info, frame = self.read(digest)
        try:
            found = inspect_frame(frame)
        except BadFrameError as exc:
            raise CorruptBlob(f"frame does not decode: {exc}") from exc
        if found.sha256 != digest:
            raise CorruptBlob(f"plain content hashes to sha256 {found.sha256}")
        if found.id != info.xxh3:
            raise CorruptBlob(f"plain content hashes to xxh3 {found.id}, header {info.xxh3}")
        return info, frame

    def quarantine(self, digest: str, why: str) -> Path | None:
        """Move a corrupt blob aside so `missing` reports it and an upload heals it."""
        target_dir = self.quarantine_dir / "pool"
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{digest}.{time.time_ns()}"
        try:
            os.replace(self.path(digest), target)
        except FileNotFoundError:
            return None
        log.warning("quarantined corrupt blob %s (%s) to %s", digest, why, target)
        return target

    def iter_digests(self) -> Iterator[str]:
        """Every blob digest in the pool, in ascending order (for the scrubber)."""
        if not self.root.is_dir():
            return
        for top in sorted(os.listdir(self.root)):
            top_dir = self.root / top
            if not top_dir.is_dir():
                continue
            for sub in sorted(os.listdir(top_dir)):
                leaf = top_dir / sub
                if leaf.is_dir():
                    yield from sorted(n for n in os.listdir(leaf) if is_digest(n))


def sync_file(path: Path) -> None:
    """fsync a closed file (opened for writing: Windows flushes only writable handles)."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
