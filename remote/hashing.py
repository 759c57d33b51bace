"""The one hash of the remote protocol: xxh3-128 over the bytes as stored.

Kept in one module so the client, the server and the scrubber can never disagree about the
algorithm name, the header syntax or the hex spelling.
"""

from __future__ import annotations

import re

import xxhash

ALGORITHM = "xxh3-128"
HEADER = "X-Content-Hash"
DIGEST_SIZE = 16
_HEADER_RE = re.compile(r"^xxh3-128:([0-9a-f]{32})$")


def new_hasher() -> xxhash.xxh3_128:
    """A streaming hasher, for bodies read in pieces."""
    return xxhash.xxh3_128()


def hexdigest(data: bytes) -> str:
    """Lower-case 32-hex-digit xxh3-128 of `data`."""
    return str(xxhash.xxh3_128_hexdigest(data))


def header_value(hex_hash: str) -> str:
    """The `X-Content-Hash` value for a hex digest: `xxh3-128:<hex>`."""
    return f"{ALGORITHM}:{hex_hash}"


def parse_header(value: str | None) -> str | None:
    """Return the hex digest of a well-formed `X-Content-Hash` value, else None."""
    if value is None:
        return None
    match = _HEADER_RE.match(value.strip().lower())
    return match.group(1) if match else None
