"""Content-defined chunking, chunk ids and chunk compression for dpmsfs.

A leaf library (no FUSE, trio, LMDB or network): FastCDC-2020 cut points via
pyfastcdc, xxh3-128 chunk ids, zstd chunk frames.  See chunker/README.md for
the measured choice of parameters.
"""

from chunker.cdc import StreamChunker, chunk_buffer, cut_lengths, iter_chunk_views, iter_chunks
from chunker.compress import (
    CorruptChunkError,
    compress_chunk,
    compress_frame_parts,
    decompress_chunk,
    frame_info,
)
from chunker.ids import CHUNK_ID_SIZE, chunk_id
from chunker.params import DEFAULT_PARAMS, ChunkerParams, GearMismatchError

__all__ = [
    "CHUNK_ID_SIZE",
    "DEFAULT_PARAMS",
    "ChunkerParams",
    "CorruptChunkError",
    "GearMismatchError",
    "StreamChunker",
    "chunk_buffer",
    "chunk_id",
    "compress_chunk",
    "compress_frame_parts",
    "cut_lengths",
    "decompress_chunk",
    "frame_info",
    "iter_chunk_views",
    "iter_chunks",
]
