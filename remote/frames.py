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
