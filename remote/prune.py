"""Server-side retention: forget snapshot refs by policy, then reclaim what nothing reaches.

`dpmsfs-server prune --data` runs on the data directory while no server serves it (both
take DIR/lock; see dirlock); `POST /v2/<ns>/prune` (`prune --server`) runs the same steps
inside the serving process, beside uploads: the argument for that is in docs/design.md,
"Online prune" (grace on `touched`, BlobUses in the sweep). Per namespace:

1. read every `snapshot.<name>` ref (the tool's SnapshotRecord JSON) and every
   `pin.<name>` ref and the newest `pins.<time>` set (dpmsfs/sync/pins.py), and choose
   with the tool's policy code
   (remote/retention.py: restic's rules counted in snapshots that exist; pinned names,
   `pre-restore` and `--pin-label` labels and the newest snapshot are always kept);
2. mark: walk the trees of every kept snapshot (remote/treewalk.py) and collect the ids
   they reach; anything unreadable (a record, a missing or malformed tree) stops the prune
   of that namespace before anything is deleted;
3. record the forgotten refs in nsindex `forgotten` (the HA peer may not put them back),
   then delete them;
4. delete, in one SQLite transaction, the mappings no kept snapshot reaches *and* no tool
   was given or confirmed within the grace period (nsindex `touched`): a tool that was told
   "present" by `missing`, or uploaded, shortly before the server stopped may still send
   the snapshot ref that reaches it after the restart;
5. then, over the whole pool, delete blobs no namespace maps and older than the grace.

The order makes a kill -9 at any point harmless: refs go before the mappings they reach,
mappings before blobs, and a blob is deleted only when no mapping names it, so `verify`
finds nothing dangling, and the next prune finishes the work.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chunker import CorruptChunkError, decompress_chunk
from remote import names, objfile, treewalk
from remote.retention import Candidate, Decision, Policy, select
from remote.store import DiskStore

log = logging.getLogger(__name__)

SNAPSHOT_PREFIX = "snapshot."
PIN_PREFIX = "pin."
PINS_PREFIX = "pins."
DEFAULT_GRACE_S = 86400


class PruneError(Exception):
    """Prune cannot decide safely (unreadable record, missing tree); nothing was deleted."""


@dataclass(frozen=True)
class ServerSnapshot:
    name: str  # the snapshot name (the ref without `snapshot.`)
    time_utc_ns: int
    label: str
    root_tree_id: str  # 32 hex


@dataclass
class NamespaceResult:
    namespace: str
    decisions: list[Decision] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    reachable: int = 0
    mappings_removed: int = 0
    bytes_removed: int = 0


@dataclass
class SweepResult:
    blobs_removed: int = 0
    bytes_removed: int = 0


def read_snapshots(store: DiskStore, namespace: str) -> list[ServerSnapshot]:
    out = []
    for ref in store.list_refs(namespace):
        if not ref.startswith(SNAPSHOT_PREFIX):
            continue
        found = store.read_ref(namespace, ref)
        if found is None:
            raise PruneError(f"{namespace}: ref {ref} is unreadable (quarantined if corrupt)")
        try:
            doc = json.loads(found[0])
            snap = ServerSnapshot(
                name=ref[len(SNAPSHOT_PREFIX) :],
                time_utc_ns=int(doc["time_utc_ns"]),
                label=str(doc.get("label", "")),
                root_tree_id=str(doc["root_tree_id"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise PruneError(f"{namespace}: ref {ref} is not a snapshot record: {exc}") from None
        if not names.is_key(snap.root_tree_id):
            raise PruneError(f"{namespace}: ref {ref} has an invalid root_tree_id")
        out.append(snap)
    return out


def pinned_names(store: DiskStore, namespace: str) -> set[str]:
    """`pin.<name>` refs, and the set in the newest `pins.<time>` record the tool's sync
    uploads (dpmsfs/sync/pins.py: a whole set per change, so an unpin can be expressed in
    append-only refs). A newest record that does not parse stops the prune (PruneError)."""
    refs = store.list_refs(namespace)
    pinned = {r[len(PIN_PREFIX) :] for r in refs if r.startswith(PIN_PREFIX)}
    sets = sorted(r for r in refs if r.startswith(PINS_PREFIX))
    if sets:
        found = store.read_ref(namespace, sets[-1])
        try:
            doc = json.loads(found[0]) if found is not None else None
        except ValueError:
            doc = None
        pins = doc.get("pins") if isinstance(doc, dict) else None
        if not isinstance(pins, dict):
            raise PruneError(f"{namespace}: pin record {sets[-1]} is unreadable")
        pinned |= {str(name) for name in pins}
    return pinned


def reachable_ids(store: DiskStore, namespace: str, roots: Iterable[str]) -> set[str]:
    """Every id the trees `roots` reach (themselves included); PruneError if one is
    missing or is not a tree. Each tree is read once, however many snapshots share it."""
    seen: set[str] = set()
    pending = [r for r in roots]
    while pending:
        tree_id = pending.pop()
        if tree_id in seen:
            continue
        seen.add(tree_id)
        found = store.read_object(namespace, tree_id)
        if found is None:
            raise PruneError(f"{namespace}: tree {tree_id} of a kept snapshot is missing")
        try:
            plain = decompress_chunk(found[0])
            for is_subtree, raw in treewalk.references(plain):
                ref = raw.hex()
                if is_subtree:
                    if ref not in seen:
                        pending.append(ref)
                else:
                    seen.add(ref)
        except (CorruptChunkError, treewalk.TreeDecodeError) as exc:
            raise PruneError(f"{namespace}: object {tree_id} is not a valid tree: {exc}") from None
    return seen


def prune_namespace(
    store: DiskStore,
    namespace: str,
    policy: Policy,
    *,
    now_s: int,
    grace_s: int = DEFAULT_GRACE_S,
    dry_run: bool = False,
) -> NamespaceResult:
    result = NamespaceResult(names.namespace_dir(namespace))
    snapshots = read_snapshots(store, namespace)
    candidates = [Candidate(s.name, s.time_utc_ns, s.label) for s in snapshots]
    result.decisions = select(candidates, policy, pinned_names(store, namespace))
    keep = {d.name for d in result.decisions if d.keep}
    result.forgotten = [d.name for d in result.decisions if not d.keep]
    roots = [s.root_tree_id for s in snapshots if s.name in keep]
    reached = reachable_ids(store, namespace, roots)
    result.reachable = len(reached)
    index = store.index(namespace)
    cutoff = now_s - grace_s
    if dry_run:
        result.mappings_removed, result.bytes_removed = index.unreached(reached, cutoff)
        return result
    # tombstones first: the HA peer's replicator must not put these refs back (410)
    index.forget([SNAPSHOT_PREFIX + name for name in result.forgotten], now_s)
    for name in result.forgotten:
        store.delete_ref(namespace, SNAPSHOT_PREFIX + name)
        log.info("%s: forgot snapshot %s", namespace, name)
    if result.forgotten:
        objfile.fsync_dir(store.ref_path(namespace, "x").parent)
    result.mappings_removed, result.bytes_removed = index.delete_unreached(reached, cutoff)
    return result


def sweep_blobs(
    store: DiskStore, *, now_s: int, grace_s: int = DEFAULT_GRACE_S, dry_run: bool = False
) -> SweepResult:
    """Delete blobs that no namespace maps and that are older than the grace period.

    Safe beside a serving server in the same process: the store's BlobUses is opened
    before the mapped digests are read, and each blob is deleted under its lock only if
    no request began to claim or upload it since (docs/design.md, "Online prune")."""
    store.uses.open_sweep()
    try:
        mapped: set[bytes] = set()
        for ns in store.namespaces():
            mapped |= store.index(ns).digests()
        result = SweepResult()
        cutoff = now_s - grace_s
        for digest in store.pool.iter_digests():
            if bytes.fromhex(digest) in mapped:
                continue
            path = store.pool.path(digest)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if st.st_mtime >= cutoff:
                continue
            if dry_run or store.uses.delete_if_unused(digest, functools.partial(_unlink, path)):
                result.blobs_removed += 1
                result.bytes_removed += st.st_size
        return result
    finally:
        store.uses.close_sweep()


def _unlink(path: os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def run(
    store: DiskStore,
    namespace: str,
    policy: Policy,
    *,
    now_s: int,
    grace_s: int = DEFAULT_GRACE_S,
    dry_run: bool = False,
) -> dict[str, Any]:
    """One whole prune (namespace, then the pool) as the JSON answer of the online
    endpoint and the lines the CLI prints: docs/remote-api.md, `POST /v2/<ns>/prune`."""
    result = prune_namespace(
        store, namespace, policy, now_s=now_s, grace_s=grace_s, dry_run=dry_run
    )
    sweep = sweep_blobs(store, now_s=now_s, grace_s=grace_s, dry_run=dry_run)
    return {
        "namespace": result.namespace,
        "dry_run": dry_run,
        "policy": policy.describe(),
        "decisions": [
            {"name": d.name, "keep": d.keep, "reasons": list(d.reasons)} for d in result.decisions
        ],
        "forgotten": result.forgotten,
        "reachable": result.reachable,
        "mappings_removed": result.mappings_removed,
        "mapping_bytes_removed": result.bytes_removed,
        "blobs_removed": sweep.blobs_removed,
        "blob_bytes_removed": sweep.bytes_removed,
    }


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """What `dpmsfs-server prune` prints, offline or online, from `run`'s answer."""
    lines = []
    for d in doc["decisions"]:
        why = f" ({', '.join(d['reasons'])})" if d["reasons"] else ""
        lines.append(f"{'keep  ' if d['keep'] else 'forget'} {d['name']}{why}")
    dry = bool(doc["dry_run"])
    verb = "would remove" if dry else "removed"
    lines.append(
        f"{doc['namespace']}: policy {doc['policy']}; "
        f"{'would forget' if dry else 'forgot'} {len(doc['forgotten'])} of "
        f"{len(doc['decisions'])} snapshots; {doc['reachable']} objects reachable; "
        f"{verb} {doc['mappings_removed']} mappings ({doc['mapping_bytes_removed']} frame "
        f"bytes) and {doc['blobs_removed']} unmapped blobs ({doc['blob_bytes_removed']} bytes)"
    )
    return lines
