"""The local budget: what the server holds leaves the local store first.

The store disk of a tool must never fill (capture would stop). Besides the retention
policy, a cap (``local_budget_bytes`` / ``local_budget_percent`` of the store disk) and a
free-space floor say how much the local store may use; when it uses more, the *data* of
the oldest snapshots the server confirmed leaves the local store: those snapshots become
server-only (store/evicted.py), their trees stay (listing `.snapshots`, `dpmsfs log`
work offline) and reads of their files fetch from the server (browse/source.py).

Never evicted: the newest snapshot, anything the capture state references (the current
files: their chunks are roots of every collection), a snapshot a lease holds (a reader at
work), and any snapshot the server in use has not confirmed (its ref in ``sync_snaps``
*and* its root tree in ``sync_objects`` for the current server, with no audit pending):
only a confirmation by that server counts, never a guess.

How much to evict is planned exactly, in one walk: the objects of everything that stays
are marked first (gc's mark); then the candidates are walked newest to oldest, each chunk
owned by the newest candidate naming it. Evicting the oldest ``k`` candidates frees
exactly the chunks owned by them (a chunk shared with a newer candidate is owned by that
one, which stays). The space itself is reclaimed by gc.collect, the one collector: the
server-only snapshots are roots of their trees only there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from dpmsfs.store import evicted, gc, schema
from dpmsfs.store.evicted import LocalBudget
from dpmsfs.store.packs import RECORD
from dpmsfs.store.schema import PackInfo
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType
from dpmsfs.sync.state import T_SNAPS, SyncState, server_key

log = logging.getLogger(__name__)


@dataclass
class Usage:
    """The store's footprint and its disk, measured now."""

    used_bytes: int  # pack files (what fills the disk)
    disk_total: int
    disk_free: int
    cap_bytes: int | None
    target_bytes: int | None  # go down to this when over (None: not over)
    reason: str  # why over ("" when not)


def measure(store: Store, budget: LocalBudget) -> Usage:
    """Cheap: one read transaction over the ``packs`` table and one statvfs."""
    with store.db.read() as txn:
        used = sum(PackInfo.decode(v).size for _, v in txn.cursor_range(schema.T_PACKS))
    st = os.statvfs(store.path)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    cap = budget.cap(total)
    limits: list[tuple[int, str]] = []
    if cap is not None and used > cap:
        limits.append((cap, f"store uses {used} bytes, over its budget of {cap}"))
    floor = int(total * budget.free_floor_percent / 100)
    if budget.free_floor_percent > 0 and free < floor:
        why = f"store disk has {free} bytes free, below its floor of {floor}"
        limits.append((used - (floor - free), why))
    if not limits:
        return Usage(used, total, free, cap, None, "")
    limit, reason = min(limits)
    return Usage(used, total, free, cap, max(0, int(limit * budget.low_water)), reason)


@dataclass
class EvictionPlan:
    server: str = ""
    candidates: list[str] = field(default_factory=list)  # oldest first
    evict: list[str] = field(default_factory=list)
    projected_bytes: int = 0  # live bytes after evicting ``evict``
    blocked: str = ""  # why nothing (or not enough) can leave


@dataclass
class EvictionResult:
    budget: str
    dry_run: bool
    used_bytes_before: int = 0
    used_bytes_after: int = 0
    cap_bytes: int | None = None
    target_bytes: int | None = None
    reason: str = ""
    server: str = ""
    evicted: list[str] = field(default_factory=list)
    server_only_snapshots: int = 0
    blocked: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def confirmed_candidates(store: Store, skip: Collection[str] = ()) -> tuple[str, list[str], str]:
    """(server id, evictable snapshot names oldest first, why none if so); ``skip``: the
    snapshots a dry run's policy would forget first (as if already gone)."""
    sync = SyncState(store.db)
    server = sync.current_server()
    if not server:
        return "", [], "no server has confirmed any snapshot (sync never answered)"
    key = server_key(server)
    if sync.needs_audit(key):
        return server, [], f"confirmations of server {server} are being re-checked"
    store.db.declare(evicted.T_EVICTED)
    leased = set(gc.leased_roots(store))
    records = [r for r in store.list_snapshots() if r.name not in skip]
    gone = evicted.evicted_names(store)
    names = []
    with store.db.read() as txn:
        for record in records[:-1]:  # never the newest
            if record.name in gone or record.root_tree_id in leased:
                continue
            if not SyncState.snapshot_confirmed(txn, key, record.name):
                continue
            if not SyncState.is_confirmed(txn, key, record.root_tree_id):
                continue
            names.append(record.name)
    if not names and len(records) > 1:
        return server, [], f"no older snapshot is confirmed on server {server} yet"
    return server, names, ""


def plan(store: Store, target_bytes: int, skip: Collection[str] = ()) -> EvictionPlan:
    """The fewest oldest confirmed snapshots whose eviction brings live bytes to target.

    ``skip``: snapshots to plan as already forgotten (a dry run of a prune whose policy
    removes them first; the real run has forgotten them before it plans)."""
    from dpmsfs.capture import state
    from dpmsfs.prune import captured_ids

    store.db.declare(*state.ALL_TABLES)
    result = EvictionPlan()
    result.server, result.candidates, result.blocked = confirmed_candidates(store, skip)
    chosen = set(result.candidates)
    gone = evicted.evicted_names(store)
    kept_roots: list[bytes] = []
    candidate_roots: list[tuple[str, bytes]] = []
    with store.db.read() as txn:
        kept_roots.extend(oid for oid in captured_ids(txn) if oid != bytes(16))
    for record in store.list_snapshots():
        if record.name in skip:
            continue
        if record.name in chosen:
            candidate_roots.append((record.name, record.root_tree_id))
        elif record.name not in gone:
            kept_roots.append(record.root_tree_id)
    kept_roots.extend(gc.leased_roots(store))
    live = gc.mark_live(store, kept_roots)
    projected = _bytes_of(store, live)
    owned: dict[str, int] = {}
    seen_trees: set[bytes] = set()
    seen_chunks: set[bytes] = set()
    for name, root in reversed(candidate_roots):  # newest first: the newest holder owns
        owned[name] = _walk_owned(store, root, live, seen_trees, seen_chunks)
        projected += owned[name]
    for name, _ in candidate_roots:  # oldest first
        if projected <= target_bytes:
            break
        result.evict.append(name)
        projected -= owned[name]
    result.projected_bytes = projected
    if projected > target_bytes and not result.blocked:
        result.blocked = (
            f"{projected} bytes stay local after evicting every confirmed older snapshot "
            "(the current files, the newest and unconfirmed snapshots, leases)"
        )
    return result


def _bytes_of(store: Store, ids: set[bytes]) -> int:
    total = 0
    with store.db.read() as txn:
        for oid in ids:
            loc = store.locate(oid, txn)
            if loc is not None:
                total += RECORD.size + loc.stored_length
    return total


def _walk_owned(
    store: Store, root: bytes, live: set[bytes], seen_trees: set[bytes], seen_chunks: set[bytes]
) -> int:
    """Bytes of the chunks under ``root`` that neither ``live`` nor an earlier walk has."""
    total = 0
    stack = [root]
    while stack:
        tree_id = stack.pop()
        if tree_id in seen_trees or tree_id in live:
            continue
        seen_trees.add(tree_id)
        fresh: list[bytes] = []
        for entry in store.read_tree(tree_id):
            if entry.type == EntryType.DIR:
                stack.append(entry.content[0])
            elif entry.type == EntryType.FILE:
                for cid in entry.content:
                    if cid not in live and cid not in seen_chunks:
                        seen_chunks.add(cid)
                        fresh.append(cid)
        with store.db.read() as txn:
            for cid in fresh:
                loc = store.locate(cid, txn)
                if loc is not None:
                    total += RECORD.size + loc.stored_length
    return total


def mark_server_only(store: Store, names: list[str], server: str, now_ns: int) -> list[str]:
    """Record the eviction, re-checking in the same transaction that each snapshot still
    exists, is not the newest and is still confirmed by ``server``."""
    from dpmsfs.store.db import WriteTxn

    key = server_key(server)
    store.db.declare(evicted.T_EVICTED, T_SNAPS)

    def body(txn: WriteTxn) -> list[str]:
        newest = next((k for k, _ in txn.cursor_range(schema.T_SNAPSHOTS, reverse=True)), None)
        ok = [
            name
            for name in names
            if name.encode() != newest
            and txn.get(schema.T_SNAPSHOTS, name.encode()) is not None
            and txn.get(T_SNAPS, key + name.encode()) is not None
        ]
        evicted.mark(txn, ok, server, now_ns)
        return ok

    done: list[str] = store.db.transact(body)
    if done:
        log.info("local budget: %d snapshots now server-only (confirmed by %s): %s",
                 len(done), server, ", ".join(done))  # fmt: skip
    return done


def decide(
    store: Store,
    budget: LocalBudget,
    now_ns: int,
    dry_run: bool,
    override_bytes: int | None,
    skip: Collection[str] = (),
) -> EvictionResult:
    """Measure, plan and (unless ``dry_run``) mark; the caller's collection reclaims.
    ``skip``: what a dry run's policy would forget before (see `plan`)."""
    if override_bytes is not None:
        budget = LocalBudget(bytes=override_bytes, percent=0, free_floor_percent=0,
                             low_water=budget.low_water)  # fmt: skip
    usage = measure(store, budget)
    result = EvictionResult(budget.describe(), dry_run, usage.used_bytes, usage.used_bytes,
                            usage.cap_bytes, usage.target_bytes, usage.reason)  # fmt: skip
    if usage.target_bytes is not None:
        chosen = plan(store, usage.target_bytes, skip)
        result.server, result.blocked = chosen.server, chosen.blocked
        if dry_run:
            result.evicted = chosen.evict
        elif chosen.evict:
            result.evicted = mark_server_only(store, chosen.evict, chosen.server, now_ns)
        if result.blocked:
            log.warning("local budget: %s; %s", usage.reason, result.blocked)
    result.server_only_snapshots = len(evicted.evicted_names(store)) + (
        len(result.evicted) if dry_run else 0
    )
    return result


def status(store: Store, budget: LocalBudget) -> dict[str, Any]:
    """For `dpmsfs status`: the budget, bytes used, server-only snapshots."""
    usage = measure(store, budget)
    return {
        "budget": budget.describe(),
        "cap_bytes": usage.cap_bytes,
        "used_bytes": usage.used_bytes,
        "disk_free_bytes": usage.disk_free,
        "over": usage.reason,
        "server_only_snapshots": len(evicted.evicted_names(store)),
    }
