"""Content-defined chunking, chunk ids and chunk compression for dpmsfs.

A leaf library (no FUSE, trio, LMDB or network): FastCDC-2020 cut points via
pyfastcdc, xxh3-128 chunk ids, zstd chunk frames.  See chunker/README.md for
the measured choice of parameters.

Names are imported on first use, so a reader (restore) does not load pyfastcdc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE = {
    "StreamChunker": "chunker.cdc",
    "chunk_buffer": "chunker.cdc",
    "cut_lengths": "chunker.cdc",
    "iter_chunk_views": "chunker.cdc",
    "iter_chunks": "chunker.cdc",
    "CorruptChunkError": "chunker.compress",
    "compress_chunk": "chunker.compress",
    "compress_frame_parts": "chunker.compress",
    "decompress_chunk": "chunker.compress",
    "frame_info": "chunker.compress",
    "CHUNK_ID_SIZE": "chunker.ids",
    "chunk_id": "chunker.ids",
    "DEFAULT_PARAMS": "chunker.params",
    "ChunkerParams": "chunker.params",
    "GearMismatchError": "chunker.params",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
