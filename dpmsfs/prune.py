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

from dpmsfs import budget as local_budget
from dpmsfs.capture import state
from dpmsfs.capture.snapshotter import META_LAST_ROOT
from dpmsfs.errors import NotFoundError
from dpmsfs.store import gc
from dpmsfs.store.db import ReadTxn
from dpmsfs.store.errors import StoreError
from dpmsfs.store.evicted import LocalBudget
from dpmsfs.store.retention import (
    Candidate,
    Decision,
    PathMatcher,
    PathRule,
    Policy,
    path_rules_due,
    select,
)
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType

log = logging.getLogger(__name__)

T_PRUNE = "prune_log"
"""Key ``last``: JSON of the last prune's `PruneResult.summary()` (for `dpmsfs status`)."""
_LAST = b"last"


def captured_ids(txn: ReadTxn) -> list[bytes]:
    """Every content and subtree id the capture state holds (must stay indexed), and the
    last root tree the snapshotter built (a snapshot with nothing changed reuses it)."""
    last_root = txn.get(state.T_META, META_LAST_ROOT)
    ids: list[bytes] = [last_root] if last_root else []
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
    trimmed: dict[str, list[str]] = field(default_factory=dict)  # snapshot -> path rules
    collect: gc.CollectStats = field(default_factory=gc.CollectStats)
    store_bytes_before: int = 0
    store_bytes_after: int = 0
    eviction: local_budget.EvictionResult | None = None
    error: str = ""

    def summary(self) -> dict[str, Any]:
        """What `dpmsfs status` shows of it (small: no per-snapshot list)."""
        ev = self.eviction
        return {
            "evicted_snapshots": len(ev.evicted) if ev else 0,
            "budget_reason": ev.reason if ev else "",
            "budget_blocked": ev.blocked if ev else "",
            "time_ns": self.started_ns,
            "dry_run": self.dry_run,
            "policy": self.policy,
            "removed_snapshots": len(self.forgotten),
            "trimmed_snapshots": len(self.trimmed),
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
            "trimmed": self.trimmed,
            "collect": self.collect.as_dict(),
            "store_bytes_before": self.store_bytes_before,
            "store_bytes_after": self.store_bytes_after,
            "eviction": self.eviction.as_dict() if self.eviction else None,
        }


def plan(store: Store, policy: Policy) -> tuple[list[Decision], dict[str, list[PathRule]]]:
    """Which snapshots to keep, and which path rules to apply to which kept ones."""
    records = list(store.list_snapshots())
    candidates = [Candidate(r.name, r.time_utc_ns, r.label) for r in records]
    decisions = select(candidates, policy, gc.pins(store))
    due = path_rules_due(
        [(c, r.pruned) for c, r in zip(candidates, records, strict=True)], policy, decisions
    )
    return decisions, due


def prune(
    store: Store,
    policy: Policy,
    dry_run: bool = False,
    now_ns: int | None = None,
    budget: LocalBudget | None = None,
    budget_bytes: int | None = None,
    progress: gc.Progress | None = None,
) -> PruneResult:
    """Forget what the policy does not keep, make the oldest confirmed snapshots
    server-only while the store is over its local ``budget`` (budget.py; ``budget_bytes``
    overrides the cap for this run), then reclaim the space in one collection.

    Raises what goes wrong (after recording it for status unless ``dry_run``).
    """
    result = PruneResult(policy.describe(), dry_run, now_ns or time.time_ns())
    result.store_bytes_before = store.stats().stored_bytes
    store.db.declare(*state.ALL_TABLES)
    try:
        result.decisions, due = plan(store, policy)
        doomed = [d.name for d in result.decisions if not d.keep]
        if dry_run:
            result.forgotten = doomed
            result.trimmed = {n: [r.pattern for r in rules] for n, rules in due.items()}
            if budget is not None or budget_bytes is not None:
                result.eviction = local_budget.decide(
                    store, budget or LocalBudget(), result.started_ns, True, budget_bytes, doomed
                )
            result.collect = gc.collect(
                store,
                captured_ids,
                dry_run=True,
                skip_snapshots=doomed,
                evict_snapshots=result.eviction.evicted if result.eviction else (),
                progress=progress,
            )
        else:
            result.forgotten = gc.forget_snapshots(store, doomed)
            for name, rules in due.items():
                if gc.rewrite_without(store, name, [PathMatcher(r.pattern) for r in rules]):
                    result.trimmed[name] = [r.pattern for r in rules]
            if budget is not None or budget_bytes is not None:
                result.eviction = local_budget.decide(
                    store, budget or LocalBudget(), result.started_ns, False, budget_bytes
                )
            result.collect = gc.collect(store, captured_ids, progress=progress)
            if result.eviction is not None:
                result.eviction.used_bytes_after = local_budget.measure(
                    store, budget or LocalBudget()
                ).used_bytes
        result.store_bytes_after = store.stats().stored_bytes
    except Exception as exc:
        result.error = str(exc)
        if not dry_run:
            remember(store, result)
        raise
    if not dry_run:
        remember(store, result)
        kept = sum(1 for d in result.decisions if d.keep)
        log.info("prune of %s (%s): %d snapshots forgotten, %d kept, %d bytes reclaimed",
                 store.path, result.policy, len(result.forgotten), kept,
                 result.collect.reclaimed_bytes)  # fmt: skip
    return result


def set_pin(store: Store, snapshot: str, pinned: bool, reason: str = "") -> str:
    """Pin or unpin a snapshot (``latest`` allowed); returns its name. Unpinning one that
    is not pinned is an error: a typo should not look like success."""
    name = snapshot
    if snapshot == "latest":
        last = store.latest_snapshot()
        if last is None:
            raise NotFoundError("there are no snapshots yet")
        name = last.name
    if store.get_snapshot(name) is None:
        raise NotFoundError(f"no snapshot named {name}")
    if pinned:
        gc.pin(store, name, reason)
    elif not gc.unpin(store, name):
        raise NotFoundError(f"snapshot {name} is not pinned")
    return name


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
    except StoreError:  # read-only and the table was never created
        return None
    if value is None:
        return None
    doc: dict[str, Any] = json.loads(value)
    return doc


class PruneService:
    """The daemon's side: the schedule, the control requests, and the status section.

    One prune at a time (a second request while one runs is refused with a clear
    error); the work runs on a worker thread at background priority.
    """

    def __init__(
        self,
        store: Store,
        policy: Policy,
        interval_hours: float,
        clock: Any,
        budget: LocalBudget | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.budget = budget or LocalBudget()
        self.interval_s = interval_hours * 3600
        self.clock = clock
        self.running = False
        self.last: dict[str, Any] | None = None
        self.last_error = ""
        self.next_due: float | None = None

    def run_now(
        self, policy: Policy | None = None, dry_run: bool = False, budget_bytes: int | None = None
    ) -> PruneResult:
        """Blocking: call on a worker thread."""
        from dpmsfs.capture import priority
        from dpmsfs.errors import BusyError

        if self.running:
            raise BusyError("a prune is already running")
        self.running = True
        try:
            with priority.background():
                result = prune(self.store, policy or self.policy, dry_run, self.clock.now_ns(),
                               self.budget, budget_bytes)  # fmt: skip
            if not dry_run:
                self.last, self.last_error = result.summary(), ""
            return result
        except Exception as exc:
            if not dry_run:
                self.last_error = str(exc)
                self.last = last_result(self.store)
            raise
        finally:
            self.running = False

    async def run(self) -> None:
        """The schedule: every ``interval``, measured from the last prune (so a daemon
        restarted every hour still prunes daily); off when the interval is 0."""
        import trio

        if self.interval_s <= 0:
            return
        self.last = await trio.to_thread.run_sync(last_result, self.store)
        retry: float | None = None
        while True:
            done_ns = (self.last or {}).get("time_ns", 0)
            if retry is not None:
                wait = retry
            elif done_ns:
                wait = self.interval_s - (self.clock.now_ns() - done_ns) / 1e9
            else:  # never pruned: soon after start, not a whole interval later
                wait = min(60.0, self.interval_s)
            self.next_due = self.clock.monotonic() + max(0.0, wait)
            await trio.sleep(max(1.0, wait))
            try:
                await trio.to_thread.run_sync(self.run_now)
                retry = None
            except Exception as exc:  # recorded for status; the schedule goes on
                log.warning("scheduled prune failed: %s", exc)
                retry = min(3600.0, self.interval_s)  # again in an hour, not an interval

    async def watch_space(self) -> None:
        """Apply the budget as soon as the store passes it or the store disk's free space
        falls below the floor, not only on the schedule: a `statvfs` and one read of the
        ``packs`` table every ``check_seconds`` on a worker thread, off the I/O path. After
        a run, at least five checks pass before the next (a budget nothing can meet, with
        the server down, is not retried in a loop; status says why).

        The run is the whole prune, policy first, on purpose: what the policy forgets at
        this moment is what the next scheduled prune would forget too, and reclaiming it
        first means fewer snapshots need to become server-only to get under the budget
        (the eviction is planned after the policy's removals)."""
        import trio

        if not self.budget.enabled or self.budget.check_seconds <= 0:
            return
        quiet_until = 0.0
        while True:
            await trio.sleep(self.budget.check_seconds)
            if self.running or self.clock.monotonic() < quiet_until:
                continue
            try:
                usage = await trio.to_thread.run_sync(local_budget.measure, self.store,
                                                      self.budget)  # fmt: skip
                if usage.target_bytes is None:
                    continue
                log.info("local budget: %s; pruning now", usage.reason)
                quiet_until = self.clock.monotonic() + 5 * self.budget.check_seconds
                await trio.to_thread.run_sync(self.run_now)
            except Exception as exc:  # recorded for status by run_now; the watch goes on
                log.warning("budget prune failed: %s", exc)

    def status(self) -> dict[str, Any]:
        last = self.last or {}
        try:
            budget = local_budget.status(self.store, self.budget)
        except (OSError, StoreError) as exc:
            budget = {"budget": self.budget.describe(), "error": str(exc)}
        budget["last_evicted_snapshots"] = last.get("evicted_snapshots", 0)
        budget["blocked"] = last.get("budget_blocked", "")
        budget["last_reason"] = last.get("budget_reason", "")
        return {
            "local_budget": budget,
            "policy": self.policy.describe(),
            "interval_hours": self.interval_s / 3600,
            "running": self.running,
            "last_time_ns": last.get("time_ns", 0),
            "last_removed_snapshots": last.get("removed_snapshots", 0),
            "last_reclaimed_bytes": last.get("reclaimed_bytes", 0),
            "last_error": self.last_error or last.get("error", ""),
        }
