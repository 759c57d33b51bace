"""The on-disk record of one stored object or ref: a 32-byte header, then the body.

Header (big-endian): magic `DPMSOBJ1` (8 bytes) | xxh3-128 digest of the body (16 bytes) |
body length (8 bytes). A record therefore verifies itself: no sidecar can drift out of step
with it, and one `os.replace` publishes header and body together. The header also allows a
cheap check (read 32 bytes + size of the file) that catches truncation without re-hashing.

Records are written to a temp file in the same file system, fsynced, then renamed into
place by the store, so a crash never leaves a partial record under a final name.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path

from remote import hashing

log = logging.getLogger(__name__)

MAGIC = b"DPMSOBJ1"
_HEADER = struct.Struct(">8s16sQ")
HEADER_SIZE = _HEADER.size
_PIECE = 1 << 20


class CorruptRecord(Exception):
    """The record on disk does not match its own header (or has no valid header)."""


class BodyMismatch(Exception):
    """The body received does not hash to the hash the client announced."""


class ShortBody(Exception):
    """The client sent fewer bytes than its Content-Length promised."""


def pack_header(hex_hash: str, length: int) -> bytes:
    """The 32-byte header for a body of `length` bytes hashing to `hex_hash`."""
    return _HEADER.pack(MAGIC, bytes.fromhex(hex_hash), length)


def unpack_header(raw: bytes) -> tuple[str, int]:
    """Return (hex hash, body length); raise CorruptRecord on a short or foreign header."""
    if len(raw) != HEADER_SIZE:
        raise CorruptRecord("short header")
    magic, digest, length = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise CorruptRecord("bad magic")
    return digest.hex(), length


def receive(
    tmp_dir: Path, read: Callable[[int], bytes], length: int, claimed_hash: str
) -> tuple[Path, str]:
    """Stream `length` bytes from `read` into a new temp record; return (temp path, hash).

    The temp file is fsynced before returning. On any failure (short body, hash mismatch,
    OSError such as ENOSPC) the temp file is removed and the exception propagates, so nothing
    is left behind.
    """
    tmp = tmp_dir / f"{secrets.token_hex(8)}.tmp"
    hasher = hashing.new_hasher()
    try:
        with open(tmp, "xb") as f:
            f.write(pack_header(claimed_hash, length))
            remaining = length
            while remaining > 0:
                piece = read(min(_PIECE, remaining))
                if not piece:
                    raise ShortBody(f"body ended {remaining} bytes early")
                hasher.update(piece)
                f.write(piece)
                remaining -= len(piece)
            actual = hasher.hexdigest()
            if actual != claimed_hash:
                raise BodyMismatch(f"body hashes to {actual}, header says {claimed_hash}")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        unlink_quietly(tmp)
        raise
    return tmp, actual


def write_bytes(tmp_dir: Path, data: bytes) -> Path:
    """A complete fsynced temp record holding `data` (for tests and tools, not the server)."""
    view = memoryview(data)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        piece = bytes(view[pos : pos + n])
        pos += len(piece)
        return piece

    path, _ = receive(tmp_dir, read, len(data), hashing.hexdigest(data))
    return path


def read_header(path: Path) -> tuple[str, int]:
    """Cheap check: header is valid and the file size matches it. Returns (hash, length)."""
    with open(path, "rb") as f:
        hex_hash, length = unpack_header(f.read(HEADER_SIZE))
        size = os.fstat(f.fileno()).st_size
    if size != HEADER_SIZE + length:
        raise CorruptRecord(f"file is {size} bytes, header says {HEADER_SIZE + length}")
    return hex_hash, length


def read_verified(path: Path) -> tuple[bytes, str]:
    """Read the body and check it against the header. Returns (body, hex hash)."""
    with open(path, "rb") as f:
        hex_hash, length = unpack_header(f.read(HEADER_SIZE))
        body = f.read(length + 1)
    if len(body) != length:
        raise CorruptRecord(f"body is {len(body)} bytes, header says {length}")
    actual = hashing.hexdigest(body)
    if actual != hex_hash:
        raise CorruptRecord(f"body hashes to {actual}, header says {hex_hash}")
    return body, hex_hash


def verify_file(path: Path) -> str | None:
    """Full re-hash without holding the body in memory. Returns None if sound, else why."""
    try:
        with open(path, "rb") as f:
            hex_hash, length = unpack_header(f.read(HEADER_SIZE))
            hasher = hashing.new_hasher()
            seen = 0
            while piece := f.read(_PIECE):
                hasher.update(piece)
                seen += len(piece)
    except CorruptRecord as exc:
        return str(exc)
    if seen != length:
        return f"body is {seen} bytes, header says {length}"
    if hasher.hexdigest() != hex_hash:
        return f"body hashes to {hasher.hexdigest()}, header says {hex_hash}"
    return None


def fsync_dir(path: Path) -> None:
    """Make a rename durable on POSIX; Windows has no directory handles to fsync."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    """Remove a temp file; a file already gone is fine, another failure is only logged."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - e.g. Windows sharing violation
        log.warning("could not remove temp file %s: %s", path, exc)
