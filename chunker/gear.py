"""Recover pyfastcdc's gear table so the chunker identity can pin it.

pyfastcdc keeps its 256-entry gear table in a Cython ``cdef`` array that Python
cannot read.  The table (XOR-ed with the seed) decides every cut point, so a
library upgrade that changed it would silently change all chunk boundaries and
with them the deduplication of everything already stored.  We therefore read the
table back *through the chunker itself* and hash it into
:attr:`chunker.ChunkerParams.identity`.

How: with ``min_size=64`` the gear hash starts at byte 64.  For an input of 64
zero bytes followed by ``[a, a]`` the FastCDC-2020 two-bytes-per-step loop
computes ``2*G[a]`` and then ``2*G[a] + G[a] = 3*G[a]`` (mod 2**64) and returns
that hash with the chunk.  3 is odd, so ``G[a] = h * 3**-1 mod 2**64``.  The
masks used (``avg=4 MiB``, normalization 3) have 25 bits set, so an early cut
after the first byte (which would hide the top bit) is a ~2**-25 event; if it
ever happens we recover ``G[a]`` from ``[b, a]`` with a known ``b`` instead.
The recovered table is checked against two-byte probes before it is trusted.
"""

from __future__ import annotations

import functools
import struct

import xxhash
from pyfastcdc import FastCDC

_MASK64 = (1 << 64) - 1
_INV3 = pow(3, -1, 1 << 64)
_PREFIX = bytes(64)


def _probe(cdc: FastCDC, a: int, b: int) -> tuple[int, int]:
    """(cut length, gear hash) of 64 zero bytes + [a, b]: the hash covers only a, b."""
    chunk = next(iter(cdc.cut_buf(_PREFIX + bytes((a, b)))))
    return int(chunk.length), int(chunk.gear_hash)


@functools.lru_cache(maxsize=16)
def gear_table(seed: int = 0) -> tuple[int, ...]:
    """The 256 gear values pyfastcdc uses for ``seed`` (read back, see module doc)."""
    cdc = FastCDC(4 << 20, min_size=64, max_size=16 << 20, normalized_chunking=3, seed=seed)
    table: list[int | None] = [None] * 256
    for a in range(256):
        length, h = _probe(cdc, a, a)
        if length > 64:  # the hash went through both bytes: h = 3*G[a]
            table[a] = (h * _INV3) & _MASK64
    known = next((i for i, v in enumerate(table) if v is not None), None)
    if known is None:
        raise RuntimeError("pyfastcdc gear table could not be read back")
    g_known = table[known]
    assert g_known is not None
    for a in range(256):
        if table[a] is None:
            length, h = _probe(cdc, known, a)
            if length <= 64:
                raise RuntimeError(f"pyfastcdc gear table: byte {a} cannot be probed")
            table[a] = (h - 2 * g_known) & _MASK64
    result = tuple(v for v in table if v is not None)
    # Self-check: the recovered table predicts the hash of other two-byte probes.
    for a, b in ((1, 2), (200, 7), (255, 0)):
        length, h = _probe(cdc, a, b)
        if length > 64 and h != (2 * result[a] + result[b]) & _MASK64:
            raise RuntimeError("pyfastcdc gear hash no longer matches FastCDC-2020")
    return result


@functools.lru_cache(maxsize=16)
def gear_fingerprint(seed: int = 0) -> str:
    """8 hex digits of xxh3-64 over the little-endian gear table for ``seed``."""
    packed = struct.pack("<256Q", *gear_table(seed))
    return xxhash.xxh3_64_hexdigest(packed)[:8]
