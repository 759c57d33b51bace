"""Choosing the zstd level per kind of file, by measuring what each level buys.

On test-cell data a strong level pays only for some kinds of files.  Measured on the
mkdataset tree (docs/benchmarks.md, "Adaptive compression"): shared libraries store
18 % fewer bytes at level 3 than at level 1, while STDF datalogs and CSV store the
same or *more* at level 3 and compress 1.3-2.4x slower.  Files already compressed
(archives, images) gain nothing at any level and only cost CPU.  A first import of
300 GB is bound by compression, so paying for level 3 where it buys nothing is the
single largest waste in it.

The kind of a file is its name's extension (``.stdf``, ``.so``, no extension...).
Each kind starts by probing: its chunk is compressed at both the fast and the strong
level, and the smaller frame is stored.  After ``PROBE_FIRST`` probes, a kind uses one
mode, re-probed every ``PROBE_EVERY``-th chunk so that a kind whose content changes is
followed:

- ``strong`` once the strong level saves ``MIN_SAVING`` of the fast level's output,
  for as long as it saves ``KEEP_SAVING``; else ``fast``;
- ``raw`` (no compression call at all) while neither level shrinks the data by
  ``MIN_SHRINK``.

The evidence is weighted by bytes and decays (``DECAY`` per probe), so the last few
dozen probes decide.  Whatever the mode, frames stay ordinary zstd or raw frames:
reading never needs to know how a chunk was compressed.

How hard to compress also depends on how much there is to do. A trickle of changes (a
few edited programs, a day's datalogs) is compressed at ``DENSE_LEVEL`` when the caller
says so (``dense``): measured on a day of changes of the test tree, level 7 stores 8 %
fewer bytes than level 3 (17.5 vs 19.1 MiB) at 60-90 MB/s on one core, so 70 MB of
new data costs about a second of background CPU. An import stays on the fast path.

Thread-safe: the statistics are updated under a lock, compression runs outside it.
The number of kinds remembered is bounded (``MAX_KINDS``; the least recently seen is
forgotten), so a tree of oddly named files cannot grow memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from chunker.compress import FLAG_RAW, HEADER, compress_frame_parts

FAST_LEVEL = 1
STRONG_LEVEL = 3
DENSE_LEVEL = 7  # for a trickle of changes: CPU is cheap then, the server keeps it for years
PROBE_FIRST = 8
PROBE_EVERY = 32
MIN_SAVING = 0.05  # strong must save 5 % of fast's output to be chosen...
KEEP_SAVING = 0.03  # ...and keeps being used while it saves 3 % (no flip-flopping)
MIN_SHRINK = 0.03  # fast must save 3 % of the input, else store raw
DECAY = 0.9
MAX_KINDS = 4096
MAX_EXTENSION = 16

Frame = tuple[bytes, bytes | memoryview]


def kind_of(name: bytes) -> bytes:
    """The kind a file name belongs to: its lower-cased extension, or b"" if none.

    Long "extensions" (no dot near the end) and dot-files count as having none.
    """
    dot = name.rfind(b".")
    if dot <= 0 or len(name) - dot - 1 > MAX_EXTENSION:
        return b""
    return name[dot + 1 :].lower()


@dataclass
class _KindStats:
    chunks: int = 0
    raw: float = 0.0  # decayed input bytes of the probes
    fast: float = 0.0  # decayed fast-level output bytes
    strong: float = 0.0  # decayed strong-level output bytes
    mode: str = "probe"


@dataclass(frozen=True)
class KindReport:
    kind: str
    mode: str
    chunks: int
    fast_ratio: float  # fast output / input over the probes
    strong_saving: float  # 1 - strong output / fast output


class AdaptiveCompressor:
    """Compresses chunks, choosing raw / fast / strong per kind of file (see module doc)."""

    def __init__(
        self,
        fast_level: int = FAST_LEVEL,
        strong_level: int = STRONG_LEVEL,
        dense_level: int = DENSE_LEVEL,
    ) -> None:
        if not fast_level <= strong_level <= dense_level:
            raise ValueError("compression levels must be ordered: fast <= strong <= dense")
        self.fast_level = fast_level
        self.strong_level = strong_level
        self.dense_level = dense_level
        self._lock = threading.Lock()
        self._kinds: OrderedDict[bytes, _KindStats] = OrderedDict()

    def compress(self, kind: bytes, data: bytes | memoryview, dense: bool = False) -> Frame:
        """The frame (header, payload) for one chunk of a file of ``kind``.

        ``dense``: the caller has time to spare (a few changed files, not an import):
        compress at ``dense_level`` unless the kind is known not to compress at all.
        """
        with self._lock:
            stats = self._kinds.get(kind)
            if stats is None:
                stats = self._kinds[kind] = _KindStats()
                if len(self._kinds) > MAX_KINDS:
                    self._kinds.popitem(last=False)
            else:
                self._kinds.move_to_end(kind)
            stats.chunks += 1
            probe = stats.mode == "probe" or stats.chunks % PROBE_EVERY == 0
            mode = stats.mode
        if dense and mode != "raw":
            return compress_frame_parts(data, self.dense_level)
        if not probe:
            if mode == "raw":
                view = memoryview(data).cast("B") if isinstance(data, memoryview) else data
                return HEADER.pack(FLAG_RAW, len(view)), view
            level = self.strong_level if mode == "strong" else self.fast_level
            return compress_frame_parts(data, level)
        fast = compress_frame_parts(data, self.fast_level)
        strong = (
            compress_frame_parts(data, self.strong_level)
            if self.strong_level != self.fast_level
            else fast
        )
        self._learn(stats, len(data), _size(fast), _size(strong))
        return strong if _size(strong) < _size(fast) else fast

    def _learn(self, stats: _KindStats, raw: int, fast: int, strong: int) -> None:
        with self._lock:
            stats.raw = stats.raw * DECAY + raw
            stats.fast = stats.fast * DECAY + fast
            stats.strong = stats.strong * DECAY + strong
            if stats.mode == "probe" and stats.chunks < PROBE_FIRST:
                return
            if min(stats.fast, stats.strong) > stats.raw * (1 - MIN_SHRINK):
                stats.mode = "raw"
            elif stats.strong <= stats.fast * (
                1 - (KEEP_SAVING if stats.mode == "strong" else MIN_SAVING)
            ):
                stats.mode = "strong"
            else:
                stats.mode = "fast"

    def report(self) -> list[KindReport]:
        """What was learnt, most recently seen kinds first (for status and tests)."""
        with self._lock:
            items = list(self._kinds.items())
        out = []
        for kind, s in reversed(items):
            out.append(
                KindReport(
                    kind=kind.decode("utf-8", "replace"),
                    mode=s.mode,
                    chunks=s.chunks,
                    fast_ratio=s.fast / s.raw if s.raw else 1.0,
                    strong_saving=1 - s.strong / s.fast if s.fast else 0.0,
                )
            )
        return out


def _size(frame: Frame) -> int:
    return len(frame[0]) + len(frame[1])
