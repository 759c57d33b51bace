"""Server-only snapshots: their file data left the local store under the local budget.

A snapshot named here keeps its record and its *trees* locally (a few KiB per directory,
so `.snapshots` listings, `dpmsfs log` and `diff` of names still work offline), while
the chunks only it refers to may have been swept: reads of its files fetch them from the
server (browse/source.py). The collector (gc.py) marks such a snapshot's trees but not
its chunks; verify (verify.py) checks its trees and not its chunks.

Table (docs/design.md, "LMDB schema", a contract):

``local_evicted``  key snapshot name (ASCII) -> JSON ``{"evicted_ns": int, "server": str}``:
    the time the eviction was decided and the server id whose confirmation allowed it.
    Written *before* the collection that sweeps the data (a kill -9 between the two
    leaves a marked snapshot whose data is still local: harmless, the next collection
    sweeps it). Removed with the snapshot's record (`gc.forget_snapshots`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpmsfs.errors import UsageError

if TYPE_CHECKING:
    from dpmsfs.store.db import ReadTxn, WriteTxn
    from dpmsfs.store.store import Store

T_EVICTED = "local_evicted"


@dataclass(frozen=True)
class LocalBudget:
    """How much of the store disk the local store may use ([retention] in the config).

    ``bytes``/``percent``: the cap (the smaller of the two when both are set; 0 = not
    set). ``free_floor_percent``: free space on the store disk below which the store
    gives back space even when under its cap (something else filled the disk).
    Eviction goes down to ``low_water`` of the cap so that it does not run again for
    every new snapshot.
    """

    bytes: int = 0
    percent: float = 70.0
    free_floor_percent: float = 15.0
    low_water: float = 0.9
    check_seconds: float = 60.0  # the daemon's look at the store disk (statvfs: cheap)

    @property
    def enabled(self) -> bool:
        return self.bytes > 0 or self.percent > 0 or self.free_floor_percent > 0

    def cap(self, disk_total: int) -> int | None:
        """The cap in bytes for a store disk of ``disk_total`` bytes (None: no cap)."""
        caps = [self.bytes] if self.bytes > 0 else []
        if self.percent > 0:
            caps.append(int(disk_total * self.percent / 100))
        return min(caps) if caps else None

    def describe(self) -> str:
        parts = []
        if self.bytes > 0:
            parts.append(f"{self.bytes} bytes")
        if self.percent > 0:
            parts.append(f"{self.percent:g} % of the store disk")
        text = " or ".join(parts) if parts else "no cap"
        if self.free_floor_percent > 0:
            text += f", free space floor {self.free_floor_percent:g} %"
        return text

    @staticmethod
    def from_table(table: dict[str, object], where: str) -> LocalBudget:
        """Pops the ``local_*`` keys of a [retention] table (the rest is the policy's)."""
        values: dict[str, float] = {}
        for key, name in (("local_budget_bytes", "bytes"),
                          ("local_budget_percent", "percent"),
                          ("local_free_floor_percent", "free_floor_percent"),
                          ("local_budget_check_seconds", "check_seconds")):  # fmt: skip
            if key not in table:
                continue
            value = table.pop(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise UsageError(f"{where}: {key} must be a number >= 0, not {value!r}")
            if name.endswith("percent") and value > 100:
                raise UsageError(f"{where}: {key} must be at most 100, not {value!r}")
            values[name] = value
        return LocalBudget(
            bytes=int(values.get("bytes", 0)),
            percent=float(values.get("percent", LocalBudget.percent)),
            free_floor_percent=float(
                values.get("free_floor_percent", LocalBudget.free_floor_percent)
            ),
            check_seconds=float(values.get("check_seconds", LocalBudget.check_seconds)),
        )


def parse_size(text: str) -> int:
    """``10G``, ``500M``, ``2T``, ``123`` (bytes; binary units) -> bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    body = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = body[-1:] if body[-1:] in units and body[-1:] else ""
    number = body[: len(body) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"not a size: {text!r} (examples: 500M, 40G, 2T)") from None
    if value < 0:
        raise UsageError(f"not a size: {text!r} (negative)")
    return int(value * units[unit])


def has_table(store: Store) -> bool:
    from dpmsfs.store.errors import StoreError

    try:
        store.db.declare(T_EVICTED)
        with store.db.read() as txn:
            txn.count(T_EVICTED)
    except StoreError:
        return False  # read-only and never created: nothing evicted
    return True


def evicted_names(store: Store) -> set[str]:
    """Names of the server-only snapshots."""
    if not has_table(store):
        return set()
    with store.db.read() as txn:
        return names_in(txn)


def names_in(txn: ReadTxn) -> set[str]:
    return {key.decode() for key, _ in txn.cursor_range(T_EVICTED)}


def mark(txn: WriteTxn, names: Iterable[str], server_id: str, now_ns: int) -> None:
    body = {"server": server_id, "evicted_ns": now_ns}
    for name in names:
        txn.put(T_EVICTED, name.encode(), json.dumps({**body}).encode())


def is_evicted(store: Store, name: str) -> bool:
    if not has_table(store):
        return False
    with store.db.read() as txn:
        return txn.get(T_EVICTED, name.encode()) is not None
