"""Apply a retention policy to one store: choose, forget, reclaim, remember the result.

Shared by `dpmsfs prune` (offline: the CLI holds the store) and the daemon (its control
handler and its schedule run it on a worker thread). The pieces: the policy
(store/retention.py), forgetting and space reclaim (store/gc.py), and the capture state's
content ids as extra live roots (capture/state.py), which is why this module sits above
both `store` and `capture`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from dpmsfs.capture import state
from dpmsfs.store import gc
from dpmsfs.store.db import ReadTxn
from dpmsfs.store.retention import Candidate, Decision, Policy, select
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType

log = logging.getLogger(__name__)

T_PRUNE = "prune_log"
"""Key ``last``: JSON of the last prune's `PruneResult.summary()` (for `dpmsfs status`)."""
_LAST = b"last"


def captured_ids(txn: ReadTxn) -> list[bytes]:
    """Every content and subtree id the capture state holds (must stay indexed)."""
    ids: list[bytes] = []
    for _, value in txn.cursor_range(state.T_FILES):
        entry = state.decode_state(value).entry
        if entry.type in (EntryType.FILE, EntryType.DIR):
            ids.extend(entry.content)
    return ids


@dataclass
class PruneResult:
    policy: str
    dry_run: bool
    started_ns: int
    decisions: list[Decision] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    collect: gc.CollectStats = field(default_factory=gc.CollectStats)
    store_bytes_before: int = 0
    store_bytes_after: int = 0
    error: str = ""

    def summary(self) -> dict[str, Any]:
        """What `dpmsfs status` shows of it (small: no per-snapshot list)."""
        return {
            "time_ns": self.started_ns,
            "dry_run": self.dry_run,
            "policy": self.policy,
            "removed_snapshots": len(self.forgotten),
            "kept_snapshots": sum(1 for d in self.decisions if d.keep),
            "reclaimed_bytes": self.collect.reclaimed_bytes,
            "seconds": self.collect.seconds,
            "error": self.error,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "kept": [{"name": d.name, "reasons": d.reasons} for d in self.decisions if d.keep],
            "removed": [d.name for d in self.decisions if not d.keep],
            "forgotten": self.forgotten,
            "collect": self.collect.as_dict(),
            "store_bytes_before": self.store_bytes_before,
            "store_bytes_after": self.store_bytes_after,
        }


def plan(store: Store, policy: Policy) -> list[Decision]:
    candidates = [Candidate(r.name, r.time_utc_ns, r.label) for r in store.list_snapshots()]
    return select(candidates, policy, gc.pins(store))


def prune(store: Store, policy: Policy, dry_run: bool = False, now_ns: int | None = None) -> PruneResult:
    """Forget what the policy does not keep, then reclaim the space.

    Raises what goes wrong (after recording it for status unless ``dry_run``).
    """
    result = PruneResult(policy.describe(), dry_run, now_ns or time.time_ns())
    result.store_bytes_before = store.stats().stored_bytes
    store.db.declare(*state.ALL_TABLES)
    try:
        result.decisions = plan(store, policy)
        doomed = [d.name for d in result.decisions if not d.keep]
        if dry_run:
            result.forgotten = doomed
            result.collect = gc.collect(store, captured_ids, dry_run=True, skip_snapshots=doomed)
        else:
            result.forgotten = gc.forget_snapshots(store, doomed)
            result.collect = gc.collect(store, captured_ids)
        result.store_bytes_after = store.stats().stored_bytes
    except Exception as exc:
        result.error = str(exc)
        if not dry_run:
            remember(store, result)
        raise
    if not dry_run:
        remember(store, result)
    return result


def remember(store: Store, result: PruneResult) -> None:
    store.db.declare(T_PRUNE)
    body = json.dumps(result.summary()).encode()
    store.db.transact(lambda txn: txn.put(T_PRUNE, _LAST, body))


def last_result(store: Store) -> dict[str, Any] | None:
    """The last recorded prune (None if never, or in a read-only store without the table)."""
    try:
        store.db.declare(T_PRUNE)
        with store.db.read() as txn:
            value = txn.get(T_PRUNE, _LAST)
    except Exception:  # read-only and the table was never created
        return None
    if value is None:
        return None
    doc: dict[str, Any] = json.loads(value)
    return doc
