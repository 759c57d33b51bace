"""Content-defined chunking: streaming front ends to pyfastcdc.

pyfastcdc's Cython loop runs each cut search ``with nogil``, so chunking
threads use separate cores.  Its cut search for a chunk starting at ``p`` reads
at most ``max_size`` bytes, and depends on how many bytes follow ``p`` only when
fewer than ``max_size`` do (the end of the input).  Both streaming front ends
therefore cut only while at least ``max_size`` bytes are available and leave the
tail for the end of input, which makes streaming cut points identical to
chunking the whole input at once, whatever the buffer sizes.

Copies matter at these speeds (the cut loop runs at ~4 GB/s):
:func:`iter_chunk_views` reads with ``readinto`` into one reused buffer and hands out
views of it (no copy at all; ingest uses it), :func:`iter_chunks` does the same when
the reader offers ``readinto`` and copies each chunk into ``bytes``, and
:meth:`StreamChunker.feed` cuts straight from the caller's buffer, copying only the
bytes that straddle two calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Iterator
from typing import Literal, cast

from pyfastcdc import FastCDC

from chunker.params import DEFAULT_PARAMS, ChunkerParams


@functools.lru_cache(maxsize=32)
def _make_cdc(params: ChunkerParams) -> FastCDC:
    """A FastCDC holds only read-only tables; one instance serves every thread."""
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


def _cut(cdc: FastCDC, view: memoryview, stop: int, avail: int, max_size: int) -> list[int]:
    """Lengths of the chunks cut from the start of ``view``.

    Cuts while the next chunk starts before ``stop`` and at least ``max_size`` of
    the ``avail`` bytes that follow the start of ``view`` (some of them possibly
    beyond ``view``) remain, or all of them if ``avail <= len(view)`` and the
    caller is at end of input (pass ``max_size=1``).  ``view`` must extend at
    least ``max_size`` past every chunk start it is asked to cut.
    """
    lengths: list[int] = []
    pos = 0
    it = cdc.cut_buf(view)
    while pos < stop and avail - pos >= max_size:
        length = int(next(it).length)
        lengths.append(length)
        pos += length
    return lengths


def _copies(view: memoryview, lengths: list[int], out: list[bytes]) -> int:
    """Append ``bytes`` of consecutive chunks of ``view``; return bytes consumed."""
    pos = 0
    for length in lengths:
        out.append(bytes(view[pos : pos + length]))
        pos += length
    return pos


class StreamChunker:
    """Feed bytes in any pieces; get back the chunks that are complete.

    Not thread-safe: use one per stream (several streams may run in parallel
    threads; the cut search releases the GIL).
    """

    def __init__(self, params: ChunkerParams = DEFAULT_PARAMS) -> None:
        self.params = params
        self._cdc = _make_cdc(params)
        self._max = params.max_size
        self._pending = bytearray()  # < max_size bytes not yet cut
        self._finished = False

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Add ``data``; return the chunks that no later input can change."""
        if self._finished:
            raise RuntimeError("StreamChunker.feed() after finish()")
        new = _byte_view(data)
        out: list[bytes] = []
        pending = self._pending
        start = 0  # first byte of ``new`` not yet in a chunk or in pending
        if pending:
            held = len(pending)
            avail = held + len(new)
            if avail < self._max:
                pending += new
                return out
            # Chunks starting in ``pending`` end within max_size of it: append just
            # enough of ``new`` to cut them, then continue in ``new`` itself.
            pending += new[: self._max]
            with memoryview(pending) as view:
                pos = _copies(view, _cut(self._cdc, view, held, avail, self._max), out)
            if pos < held:  # not enough data yet; pending held all of new
                del pending[:pos]
                return out
            start = pos - held
            pending.clear()
        rest = new[start:]
        pos = _copies(rest, _cut(self._cdc, rest, len(rest), len(rest), self._max), out)
        pending += rest[pos:]
        return out

    def finish(self) -> list[bytes]:
        """End of input: return the remaining chunks (none for empty input)."""
        out: list[bytes] = []
        if self._finished:
            return out
        self._finished = True
        with memoryview(self._pending) as view:
            _copies(view, _cut(self._cdc, view, len(view), len(view), 1), out)
        self._pending = bytearray()
        return out


# Reused read buffers: a fresh multi-MiB bytearray per file would cost more
# (zeroing, page faults) than chunking a small file.  list.append/pop are atomic.
_BUFFER_POOL: dict[int, list[bytearray]] = {}
_POOL_DEPTH = 4


def iter_chunk_views(
    readinto: Callable[[memoryview], int | None],
    params: ChunkerParams = DEFAULT_PARAMS,
    read_size: int = 4 << 20,
) -> Iterator[memoryview]:
    """Chunks of a stream read with ``readinto`` into one reused buffer, as views of it.

    No copy per chunk: each view is valid only until the next one is asked for (the
    buffer is refilled, then reused by later streams), so a consumer must hash, compress
    or copy it before moving on and must not keep it.  This is the ingest path: at
    several hundred MB/s, a fresh multi-MiB ``bytes`` per read and per chunk costs more
    kernel time (page faults, zeroing) than reading the file.

    The buffer holds ``max_size`` plus at least two more ``max_size`` of new data,
    so moving the uncut tail (< max_size) to the front costs a fraction of a copy.
    """
    if read_size <= 0:
        raise ValueError("read_size must be positive")
    cdc = _make_cdc(params)
    max_size = params.max_size
    cap = max_size + max(read_size, 2 * max_size)
    pool = _BUFFER_POOL.setdefault(cap, [])
    try:
        buf = pool.pop()
    except IndexError:
        buf = bytearray(cap)
    view = memoryview(buf)
    try:
        filled = 0
        eof = False
        while True:
            while filled < cap and not eof:
                n = readinto(view[filled : min(cap, filled + read_size)])
                if not n:
                    eof = True
                else:
                    filled += n
            limit = 1 if eof else max_size
            pos = 0
            for length in _cut(cdc, view[:filled], filled, filled, limit):
                yield view[pos : pos + length]
                pos += length
            if eof:
                return
            tail = filled - pos
            view[:tail] = view[pos:filled]
            filled = tail
    finally:
        view.release()
        if len(pool) < _POOL_DEPTH:
            pool.append(buf)


def iter_chunks(
    read: Callable[[int], bytes],
    params: ChunkerParams = DEFAULT_PARAMS,
    read_size: int = 4 << 20,
) -> Generator[bytes, None, None]:
    """Chunks of a stream read with ``read(n)`` (e.g. ``f.read``) until it returns b"".

    If ``read`` is the bound ``read`` method of an object that also has
    ``readinto`` (files, BytesIO, sockets' makefile), the stream is read with
    ``readinto`` into one reused buffer instead, which saves an allocation and
    a copy per read.  Memory stays below ``3 * max_size + read_size`` plus the
    chunks not yet consumed.
    """
    if read_size <= 0:
        raise ValueError("read_size must be positive")
    owner = getattr(read, "__self__", None)
    readinto = getattr(owner, "readinto", None)
    if readinto is not None and getattr(read, "__name__", "") == "read":
        for view in iter_chunk_views(readinto, params, read_size):
            yield bytes(view)
        return
    sc = StreamChunker(params)
    while True:
        data = read(read_size)
        if not data:
            break
        yield from sc.feed(data)
    yield from sc.finish()
