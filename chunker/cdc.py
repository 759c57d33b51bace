"""Content-defined chunking: a push-style streaming front end to pyfastcdc.

pyfastcdc's Cython loop runs each cut search ``with nogil``, so chunking
threads use separate cores.  Its cut search for a chunk starting at ``p`` reads
at most ``max_size`` bytes, and depends on how many bytes follow ``p`` only when
fewer than ``max_size`` do (the end of the input).  :class:`StreamChunker`
therefore cuts only while at least ``max_size`` bytes are buffered and leaves
the tail to :meth:`StreamChunker.finish`, which makes streaming cut points
identical to chunking the whole input at once, whatever the buffer sizes fed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal, cast

from pyfastcdc import FastCDC

from chunker.params import DEFAULT_PARAMS, ChunkerParams


def _make_cdc(params: ChunkerParams) -> FastCDC:
    return FastCDC(
        params.avg_size,
        min_size=params.min_size,
        max_size=params.max_size,
        normalized_chunking=cast(Literal[0, 1, 2, 3], params.normalization),
        seed=params.seed,
    )


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        view = view.cast("B")
    return view


def cut_lengths(data: bytes | memoryview, params: ChunkerParams = DEFAULT_PARAMS) -> list[int]:
    """Chunk lengths of ``data`` taken as a whole input (no copies)."""
    return [int(c.length) for c in _make_cdc(params).cut_buf(_byte_view(data))]


def chunk_buffer(data: bytes | memoryview, params: ChunkerParams = DEFAULT_PARAMS) -> list[bytes]:
    """Chunks of ``data`` taken as a whole input."""
    return [bytes(c.data) for c in _make_cdc(params).cut_buf(_byte_view(data))]


class StreamChunker:
    """Feed bytes in any pieces; get back the chunks that are complete.

    Not thread-safe: use one per stream (several streams may run in parallel
    threads; the cut search releases the GIL).
    """

    def __init__(self, params: ChunkerParams = DEFAULT_PARAMS) -> None:
        self.params = params
        self._cdc = _make_cdc(params)
        self._max = params.max_size
        self._pending = b""  # < max_size bytes not yet cut
        self._finished = False

    def _cut(self, view: memoryview, final: bool) -> list[bytes]:
        out: list[bytes] = []
        total = len(view)
        pos = 0
        it = iter(self._cdc.cut_buf(view))
        while total - pos >= self._max or (final and pos < total):
            chunk = next(it)
            out.append(bytes(chunk.data))
            pos += int(chunk.length)
        self._pending = bytes(view[pos:])
        return out

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Add ``data``; return the chunks that no later input can change."""
        if self._finished:
            raise RuntimeError("StreamChunker.feed() after finish()")
        new = _byte_view(data)
        if not len(new):
            return []
        if self._pending:
            if len(self._pending) + len(new) < self._max:
                self._pending += new
                return []
            view = memoryview(self._pending + new)  # one copy of pending + new
        else:
            view = new  # cut straight from the caller's buffer
        return self._cut(view, final=False)

    def finish(self) -> list[bytes]:
        """End of input: return the remaining chunks (none for empty input)."""
        if self._finished:
            return []
        self._finished = True
        return self._cut(memoryview(self._pending), final=True)


def iter_chunks(
    read: Callable[[int], bytes],
    params: ChunkerParams = DEFAULT_PARAMS,
    read_size: int = 4 << 20,
) -> Iterator[bytes]:
    """Chunks of a stream read with ``read(n)`` (e.g. ``f.read``) until it returns b"".

    Memory stays below ``max_size + read_size`` plus the chunks not yet consumed.
    """
    if read_size <= 0:
        raise ValueError("read_size must be positive")
    sc = StreamChunker(params)
    while True:
        data = read(read_size)
        if not data:
            break
        yield from sc.feed(data)
    yield from sc.finish()
