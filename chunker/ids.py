"""Chunk ids: xxh3-128 of the plaintext.

xxh3-128 runs at several GB/s, far above the chunker and zstd, and 128 bits
keep accidental collisions negligible at any realistic store size (the ids are
not meant to resist a deliberate attacker: the store holds one site's data).

Which python-xxhash calls release the GIL depends on its version: up to 4.0
the one-shot ``xxh3_128_digest`` always holds it and the hasher's ``update``
always releases it; from 4.1 both release it for inputs over 64 KiB (checked
by the GIL probe in scripts/bench_chunker.py).  pyproject allows xxhash>=3.4,
so chunks of 64 KiB and more go through the hasher (same digest), which hashes
on another core with either version; smaller ones use the one-shot call, which
has less overhead and would not gain from releasing the GIL.
"""

from __future__ import annotations

import xxhash

CHUNK_ID_SIZE = 16
_GIL_FREE_FROM = 64 << 10  # below this the call overhead outweighs the parallelism


def chunk_id(data: bytes | memoryview) -> bytes:
    """16-byte xxh3-128 digest (canonical big-endian) of ``data``."""
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size >= _GIL_FREE_FROM:
        return bytes(xxhash.xxh3_128(data).digest())
    return bytes(xxhash.xxh3_128_digest(data))
