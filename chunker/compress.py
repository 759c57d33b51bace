"""Self-describing compressed chunk frames.

Frame layout::

    flag   1 byte   0x00 = raw payload, 0x01 = zstd frame
    size   4 bytes  plaintext length, unsigned little-endian
    payload

A chunk is stored raw when zstd does not make it smaller (already-compressed
files), so reading it back costs a memcpy instead of a zstd call.  zstd frames
carry zstd's own content checksum (xxh64, 4 bytes, computed while compressing),
so a bit flip in a compressed payload is detected here; raw payloads have no
checksum of their own - pass ``expected_id`` to :func:`decompress_chunk` (the
store knows it) to verify them too.  The declared size is checked before any
allocation, so a corrupt header cannot make us allocate gigabytes, and the
result is either the complete plaintext or :class:`CorruptChunkError`.

``level`` is zstd's level, with one measured adjustment: at levels 3 and 4
the minimum match length for chunks over 256 KiB is raised from 5 to 6
(``_MIN_MATCH``).  On the
test-cell data (STDF, ELF, CSV, C++ text) that stores 1-2 % fewer bytes *and*
compresses ~5 % faster than stock level 3 (docs/benchmarks.md).  Decompression
does not depend on it.  zstd picks its tables by input size class; we do the
same (one parameter set per level and size class).

zstd objects are not thread-safe; each thread gets its own (compression and
decompression release the GIL, so threads compress on separate cores).
"""

from __future__ import annotations

import struct
import threading

import zstandard

from chunker.ids import chunk_id

FLAG_RAW = 0x00
FLAG_ZSTD = 0x01
HEADER = struct.Struct("<BI")
HEADER_SIZE = HEADER.size
MAX_CHUNK_SIZE = (1 << 32) - 1
DEFAULT_LEVEL = 3

# level -> minimum match length used instead of zstd's (measured, see module doc)
_MIN_MATCH: dict[int, int] = {3: 6, 4: 6}
# zstd's parameter tables change at these source sizes (lib/compress/clevels.h)
_SIZE_CLASSES = (16 << 10, 128 << 10, 256 << 10)


class CorruptChunkError(ValueError):
    """A stored chunk frame is truncated, corrupt, or of an unknown kind."""


class _Local(threading.local):
    def __init__(self) -> None:
        self.compressors: dict[tuple[int, int], zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()


_local = _Local()


def _size_class(size: int) -> int:
    """Upper bound of zstd's table class for ``size`` (0: larger than 256 KiB)."""
    for bound in _SIZE_CLASSES:
        if size <= bound:
            return bound
    return 0


def _compressor(level: int, size: int) -> zstandard.ZstdCompressor:
    key = (level, _size_class(size))
    comp = _local.compressors.get(key)
    if comp is None:
        # Only the large class (chunks > 256 KiB: most bytes) was measured.
        min_match = _MIN_MATCH.get(level) if key[1] == 0 else None
        if min_match is None:
            comp = zstandard.ZstdCompressor(
                level=level, write_checksum=True, write_content_size=True
            )
        else:
            base = zstandard.ZstdCompressionParameters.from_level(level)
            params = zstandard.ZstdCompressionParameters(
                window_log=base.window_log,
                chain_log=base.chain_log,
                hash_log=base.hash_log,
                search_log=base.search_log,
                min_match=max(base.min_match, min_match),
                target_length=base.target_length,
                strategy=base.strategy,
                write_content_size=1,
                write_checksum=1,
            )
            comp = zstandard.ZstdCompressor(compression_params=params)
        _local.compressors[key] = comp
    return comp


def compress_chunk(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """Frame ``data``: zstd at ``level`` if that shrinks it, raw otherwise."""
    return b"".join(compress_frame_parts(data, level))


def compress_frame_parts(
    data: bytes | memoryview, level: int = DEFAULT_LEVEL
) -> tuple[bytes, bytes | memoryview]:
    """(frame header, payload) of :func:`compress_chunk`'s frame, not joined.

    A writer hands both to ``pwritev`` and saves copying every chunk once more; a raw
    payload is ``data`` itself, so it must be written before ``data``'s buffer is reused.
    """
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else data
    size = len(view)
    if size > MAX_CHUNK_SIZE:
        raise ValueError(f"chunk of {size} bytes is too large for a frame")
    if size:
        packed = _compressor(level, size).compress(view)
        if len(packed) < size:
            return HEADER.pack(FLAG_ZSTD, size), packed
    return HEADER.pack(FLAG_RAW, size), view


def frame_info(blob: bytes | memoryview) -> tuple[int, int]:
    """(flag, declared plaintext size) of a frame, without decompressing it."""
    if len(blob) < HEADER_SIZE:
        raise CorruptChunkError(f"chunk frame of {len(blob)} bytes has no header")
    flag, size = HEADER.unpack_from(blob)
    if flag not in (FLAG_RAW, FLAG_ZSTD):
        raise CorruptChunkError(f"unknown chunk frame flag 0x{flag:02x}")
    return flag, size


def decompress_chunk(blob: bytes | memoryview, expected_id: bytes | None = None) -> bytes:
    """Plaintext of a frame made by :func:`compress_chunk`.

    Raises :class:`CorruptChunkError` if the frame is truncated, has trailing
    bytes, an unknown flag, a size other than declared, fails zstd's checksum,
    or (when ``expected_id`` is given) does not hash to ``expected_id``.
    """
    view = memoryview(blob).cast("B")
    flag, size = frame_info(view)
    payload = view[HEADER_SIZE:]
    if flag == FLAG_RAW:
        if len(payload) != size:
            raise CorruptChunkError(f"raw chunk declares {size} bytes, holds {len(payload)}")
        out = bytes(payload)
    else:
        out = _unzstd(payload, size)
    if expected_id is not None and chunk_id(out) != expected_id:
        raise CorruptChunkError("chunk content does not match its id")
    return out


def _unzstd(payload: memoryview, size: int) -> bytes:
    try:
        framed = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise CorruptChunkError(f"bad zstd frame header: {exc}") from exc
    if framed != size:
        raise CorruptChunkError(f"zstd frame holds {framed} bytes, header declares {size}")
    # One call that decodes into one allocation of the known size: 20 % faster than a
    # decompressobj (measured on a restore's 2,736 frames), and one GIL hand-back per
    # chunk instead of several. A truncated frame or one with stray bytes after it fails.
    try:
        out = _local.decompressor.decompress(payload, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise CorruptChunkError(f"corrupt zstd chunk: {exc}") from exc
    if len(out) != size:
        raise CorruptChunkError(f"zstd chunk gave {len(out)} bytes, header declares {size}")
    return out
