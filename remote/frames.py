"""Chunk frames as the v2 protocol carries them, and the two digests of their plain content.

A frame is exactly what `chunker.compress_chunk` makes (flag byte, plain size LE u32, raw or
zstd payload). The server never trusts the ids a client announces: it decodes the frame
itself and computes xxh3-128 (the tool's object id) and SHA-256 (the pool key, which no tool
can choose colliding contents for) from the plain bytes. Client, server and the in-memory
fake all go through `inspect_frame`, so they can never disagree about what "verified" means.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import xxhash

from chunker import CorruptChunkError, compress_chunk, decompress_chunk
from chunker.compress import FLAG_RAW, HEADER_SIZE, frame_info

DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_FRAME_SIZE = 64 << 20  # the server's default max object size (frame bytes)


class BadFrameError(ValueError):
    """The bytes are not a well-formed chunk frame (truncated, bad flag, bad zstd...)."""


@dataclass(frozen=True, slots=True)
class FrameDigests:
    """What a frame's plain content hashes to: the tool's id and the pool digest."""

    id: str  # xxh3-128, 32 lower-case hex
    sha256: str  # SHA-256, 64 lower-case hex
    plain_size: int


def is_digest(value: str) -> bool:
    """A pool digest is exactly 64 lower-case hex digits (SHA-256)."""
    return bool(DIGEST_RE.match(value))


def digests_of_plain(plain: bytes | memoryview) -> FrameDigests:
    """The id and pool digest of plain content (what a tool computes before uploading)."""
    return FrameDigests(
        id=str(xxhash.xxh3_128_hexdigest(plain)),
        sha256=hashlib.sha256(plain).hexdigest(),
        plain_size=len(plain),
    )


def inspect_frame(frame: bytes | memoryview) -> FrameDigests:
    """Decode `frame` and hash its plain content; `BadFrameError` if it does not decode."""
    try:
        plain = decompress_chunk(frame)
    except CorruptChunkError as exc:
        raise BadFrameError(str(exc)) from exc
    return digests_of_plain(plain)


def make_record(plain: bytes) -> tuple[str, str, bytes]:
    """(id, sha256, frame) of plain content: one upload record, for callers and tests."""
    digests = digests_of_plain(plain)
    return digests.id, digests.sha256, compress_chunk(plain)


def plain_of_verified(id: str, frame: bytes | memoryview) -> bytes:
    """The plain content of `frame`, decoded once and checked against `id` (xxh3-128).

    The download check: the tool's id names the content its snapshot needs, so a frame
    whose plain bytes hash to `id` is exactly what the tool stored, whatever happened to it
    on the server or on the wire. No SHA-256 here: that is the server's cross-tool dedup
    key, checked at upload and by the scrubber, and it adds nothing to this check.
    Raises `BadFrameError` if the frame does not decode or its content is not `id`.
    """
    try:
        plain = decompress_chunk(frame)
    except CorruptChunkError as exc:
        raise BadFrameError(str(exc)) from exc
    found = str(xxhash.xxh3_128_hexdigest(plain))
    if found != id:
        raise BadFrameError(f"content does not match its id (it hashes to {found})")
    return plain


def check_frame_header(frame: bytes | memoryview) -> None:
    """The cheap check of a frame the server is about to send: a known flag and, for a
    raw frame, exactly the declared length (a zstd frame's length is checked by decoding,
    which is the client's job). `BadFrameError` otherwise."""
    try:
        flag, size = frame_info(frame)
    except CorruptChunkError as exc:
        raise BadFrameError(str(exc)) from exc
    if flag == FLAG_RAW and len(frame) - HEADER_SIZE != size:
        raise BadFrameError(f"raw frame declares {size} bytes, holds {len(frame) - HEADER_SIZE}")
