"""Chunker parameters and their persisted identity.

Everything that moves a cut point is part of :class:`ChunkerParams`, and the
:attr:`ChunkerParams.identity` string names all of it, including a hash of the
gear table actually used by the installed pyfastcdc.  The store persists the
identity with its data; :meth:`ChunkerParams.from_identity` refuses an identity
whose gear hash does not match the installed library, so an upgrade that would
change cut points (and silently stop deduplicating against old data) fails
loudly instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chunker.gear import gear_fingerprint

ALGORITHM = "fastcdc2020"

# Limits of pyfastcdc 0.3 (checked again by its constructor).
_MIN_RANGE = (64, 1 << 20)
_AVG_RANGE = (256, 4 << 20)
_MAX_RANGE = (1024, 16 << 20)
_SEED_LIMIT = 1 << 63  # pyfastcdc computes seed << 1 into a uint64

_IDENTITY_RE = re.compile(
    r"(?P<alg>[a-z0-9]+)-n(?P<nc>\d)-min(?P<min>\d+[km]?)-avg(?P<avg>\d+[km]?)"
    r"-max(?P<max>\d+[km]?)(?:-seed(?P<seed>\d+))?-gear:(?P<gear>[0-9a-f]{8})"
)


class GearMismatchError(ValueError):
    """The identity was made with a gear table other than the installed one."""


def _format_size(n: int) -> str:
    """Shortest exact spelling: 1048576 -> '1m', 262144 -> '256k', 1000 -> '1000'."""
    if n % (1 << 20) == 0:
        return f"{n >> 20}m"
    if n % (1 << 10) == 0:
        return f"{n >> 10}k"
    return str(n)


def _parse_size(text: str) -> int:
    if text.endswith("m"):
        return int(text[:-1]) << 20
    if text.endswith("k"):
        return int(text[:-1]) << 10
    return int(text)


@dataclass(frozen=True)
class ChunkerParams:
    """Parameters of FastCDC-2020 with normalized chunking.

    ``avg_size`` selects the cut masks (rounded to a power of two by pyfastcdc)
    and the point where the strict mask gives way to the loose one; the mean
    chunk length comes out near ``min_size + avg_size`` because FastCDC skips
    the first ``min_size`` bytes.  ``normalization`` is NC from the paper (0-3):
    higher gives a tighter size distribution.  ``seed`` XORs the gear table.
    """

    min_size: int
    avg_size: int
    max_size: int
    algorithm: str = ALGORITHM
    normalization: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm != ALGORITHM:
            raise ValueError(f"unknown chunking algorithm {self.algorithm!r}")
        for name, value, (lo, hi) in (
            ("min_size", self.min_size, _MIN_RANGE),
            ("avg_size", self.avg_size, _AVG_RANGE),
            ("max_size", self.max_size, _MAX_RANGE),
        ):
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name}={value!r} outside [{lo}, {hi}]")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ValueError("need min_size <= avg_size <= max_size")
        if self.min_size % 2:
            # FastCDC-2020 steps two bytes at a time from min_size rounded down,
            # so an odd min_size could yield a chunk one byte below it.
            raise ValueError("min_size must be even")
        if self.normalization not in (0, 1, 2, 3):
            raise ValueError(f"normalization={self.normalization!r} not in 0..3")
        if not isinstance(self.seed, int) or not 0 <= self.seed < _SEED_LIMIT:
            raise ValueError(f"seed={self.seed!r} outside [0, 2**63)")

    @property
    def gear_hash(self) -> str:
        """8 hex digits identifying the gear table the installed library uses."""
        return gear_fingerprint(self.seed)

    @property
    def identity(self) -> str:
        """Canonical text naming every input of the cut points (persist this)."""
        seed = f"-seed{self.seed}" if self.seed else ""
        return (
            f"{self.algorithm}-n{self.normalization}-min{_format_size(self.min_size)}"
            f"-avg{_format_size(self.avg_size)}-max{_format_size(self.max_size)}"
            f"{seed}-gear:{self.gear_hash}"
        )

    @classmethod
    def from_identity(cls, identity: str) -> ChunkerParams:
        """Parse :attr:`identity`; ValueError on bad text, GearMismatchError if the
        installed pyfastcdc would cut differently than the one that made it."""
        if not isinstance(identity, str):
            raise ValueError(f"chunker identity must be str, not {type(identity).__name__}")
        m = _IDENTITY_RE.fullmatch(identity)
        if m is None:
            raise ValueError(f"malformed chunker identity {identity!r}")
        params = cls(
            min_size=_parse_size(m["min"]),
            avg_size=_parse_size(m["avg"]),
            max_size=_parse_size(m["max"]),
            algorithm=m["alg"],
            normalization=int(m["nc"]),
            seed=int(m["seed"]) if m["seed"] is not None else 0,
        )
        if m["gear"] != params.gear_hash:
            raise GearMismatchError(
                f"chunker identity {identity!r} was made with gear table {m['gear']}, "
                f"the installed pyfastcdc uses {params.gear_hash}: cut points would differ"
            )
        if params.identity != identity:
            raise ValueError(f"non-canonical chunker identity {identity!r}")
        return params


# Measured default (see chunker/README.md and docs/benchmarks.md): on the test-cell
# data set 2 MiB chunks store ~2-3 % less than 1 MiB ones (zstd works per chunk)
# while the day-1 delta stays near 8 MiB, half of restic's.
DEFAULT_PARAMS = ChunkerParams(min_size=512 << 10, avg_size=2 << 20, max_size=8 << 20)
