"""Snapshot records and snapshot names.

A name is the snapshot's UTC time, ``YYYY-MM-DDTHHMMSSZ`` (no colons: snapshots are
copied to Windows and shown in ``.snapshots/``), and it is the key of the ``snapshots``
table, so listing the table lists snapshots chronologically.

Two snapshots in the same second get a suffix that keeps the order::

    2024-05-01T120000Z  <  ...Z-2  < ... <  ...Z-9  <  ...Z-A10  < ... <  ...Z-A99  <  ...Z-B100

Plain ``-2`` .. ``-9`` would break at ``-10`` (``"-10" < "-9"``), so from 10 on the digits
get a letter giving their count (``A`` = 2 digits, ``B`` = 3, ...): letters sort after
digits, and a longer number always has a later letter.  Time is passed in (from the clock
module) so that tests can fake it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from dpmsfs.store.errors import StoreError

_RECORD_VERSION = 1


@dataclass(frozen=True)
class SnapshotStats:
    files: int = 0
    bytes: int = 0  # logical bytes of all files in the snapshot
    new_bytes: int = 0  # bytes of content not already in the store


@dataclass(frozen=True)
class SnapshotRecord:
    name: str
    time_utc_ns: int
    root_tree_id: bytes
    label: str = ""
    tool_id: str = ""
    stats: SnapshotStats = SnapshotStats()
    # path rules a prune applied (its trees were rewritten without those paths); encoded
    # only when set, so records of untouched snapshots keep their bytes
    pruned: tuple[str, ...] = ()

    def encode(self) -> bytes:
        doc = {
            "v": _RECORD_VERSION,
            "name": self.name,
            "time_utc_ns": self.time_utc_ns,
            "root_tree_id": self.root_tree_id.hex(),
            "label": self.label,
            "tool_id": self.tool_id,
            "stats": asdict(self.stats),
        }
        if self.pruned:
            doc["pruned"] = list(self.pruned)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> SnapshotRecord:
        try:
            doc = json.loads(value)
            if doc["v"] != _RECORD_VERSION:
                raise StoreError(f"snapshot record version {doc['v']} is not supported")
            root = bytes.fromhex(doc["root_tree_id"])
            if len(root) != 16:
                raise ValueError("root tree id is not 16 bytes")
            return cls(
                name=str(doc["name"]),
                time_utc_ns=int(doc["time_utc_ns"]),
                root_tree_id=root,
                label=str(doc["label"]),
                tool_id=str(doc["tool_id"]),
                stats=SnapshotStats(**{k: int(v) for k, v in doc["stats"].items()}),
                pruned=tuple(str(p) for p in doc.get("pruned", ())),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"malformed snapshot record: {exc}") from None


def base_name(time_utc_ns: int) -> str:
    """``YYYY-MM-DDTHHMMSSZ`` for a UTC time in nanoseconds."""
    return time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime(time_utc_ns // 1_000_000_000))


def suffix(n: int) -> str:
    """Suffix of the n-th snapshot within one second (n >= 2), sorting numerically."""
    if n < 2:
        raise ValueError("the first snapshot of a second has no suffix")
    digits = str(n)
    if len(digits) == 1:
        return "-" + digits
    return "-" + chr(ord("A") + len(digits) - 2) + digits


def snapshot_name(time_utc_ns: int, taken: Callable[[str], bool]) -> str:
    """The first name for ``time_utc_ns`` for which ``taken(name)`` is false."""
    base = base_name(time_utc_ns)
    if not taken(base):
        return base
    n = 2
    while taken(base + suffix(n)):
        n += 1
    return base + suffix(n)
