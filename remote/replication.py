"""Replication to the HA peer: push what the peer lacks, objects before the refs they reach.

`dpmsfs-server serve --peer URL --peer-token-file F` runs one `Replicator` thread. Each pass,
for every namespace:

1. list the local refs (before anything else: every object a ref reaches was mapped here
   before the ref was created, so it is in the mapping log up to the point read in step 2);
2. read the namespace's mapping log from the last sequence number the peer confirmed up to
   the current end, in batches; ask the peer `objects:missing` *with digests* (so content
   the peer's pool already holds is claimed there without moving bytes), upload the rest
   from the local pool, and advance the watermark once a batch is confirmed;
3. only if every object batch succeeded: put the refs the peer lacks.

That order keeps the HA invariant on the peer: a snapshot ref exists there only once every
object reachable from it is mapped there. Watermarks are kept per peer server id in
DIR/replication.json, so a peer whose data directory was replaced starts again from zero
(and its `missing` answers keep a restart from re-sending what it already has). Deletions
(admin) are not replicated, but a ref the peer pruned is forgotten here when the peer
refuses it (410, its `forgotten` tombstone), so a pair replicating both ways converges.
Status (`status()`): last success, pending objects and refs, lag.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from remote.errors import ForgottenError, RemoteError
from remote.http_backend import HttpBackend
from remote.retry import NO_RETRY, Retrier
from remote.store import DiskStore

log = logging.getLogger(__name__)

BATCH = 1000


class Replicator:
    def __init__(
        self,
        store: DiskStore,
        peer_urls: Sequence[str],
        token: str,
        interval: float = 2.0,
        *,
        tls_verify: bool | str = True,
    ) -> None:
        self.store = store
        self.peer_urls = list(peer_urls)
        self.token = token
        self.interval = interval
        self.tls_verify = tls_verify
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._state_path = store.root / "replication.json"
        self._last_success: float | None = None
        self._in_sync_at: float | None = None
        self._synced = False
        self._last_peer_id: str | None = None
        self._started = time.time()
        self._last_error: str | None = None
        self._pending_objects = 0
        self._pending_refs = 0
        self._passes = 0
        self._objects_sent = 0
        self._objects_claimed = 0
        self._refs_sent = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="replicator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_pass()
            except Exception as exc:  # a pass must never kill the thread
                log.warning("replication pass failed: %s", exc)
                with self._lock:
                    self._last_error = str(exc)
            self._stop.wait(self.interval)

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The `peer` section of /v2/health: lag is 0 while in sync, else the seconds since
        the peer was last known to hold everything (or since start-up)."""
        now = time.time()
        with self._lock:
            lag = 0.0 if self._synced else now - (self._in_sync_at or self._started)
            return {
                "url": self.peer_urls[0],
                "in_sync": self._synced,
                "last_success": self._last_success,
                "last_error": self._last_error,
                "pending_objects": self._pending_objects,
                "pending_refs": self._pending_refs,
                "lag_seconds": round(lag, 3),
                "passes": self._passes,
                "objects_sent": self._objects_sent,
                "objects_claimed": self._objects_claimed,
                "refs_sent": self._refs_sent,
            }

    # -- one pass ------------------------------------------------------------------------

    def run_pass(self) -> None:
        """Bring the peer up to date once; raises RemoteError if that failed anywhere."""
        state = self._load_state()
        try:
            probe = self._peer("probe")
            try:
                peer_id = probe.server_id()
            finally:
                probe.close()
        except RemoteError as exc:
            self._record(state.get(self._last_peer_id or "", {}), str(exc), 0)
            raise
        self._last_peer_id = peer_id
        marks: dict[str, int] = state.setdefault(peer_id, {})
        errors: list[str] = []
        pending_refs = 0
        for ns in self.store.namespaces():
            try:
                pending_refs += self._namespace(ns, marks)
            except RemoteError as exc:
                errors.append(f"{ns}: {exc}")
            finally:
                self._save_state(state)
        self._record(marks, "; ".join(errors)[:500] or None, pending_refs)
        if errors:
            raise RemoteError("; ".join(errors))

    def _record(self, marks: dict[str, int], error: str | None, pending_refs: int) -> None:
        pending_objects = sum(
            max(0, self.store.index(ns).max_seq() - marks.get(ns, 0))
            for ns in self.store.namespaces()
        )
        now = time.time()
        with self._lock:
            self._passes += 1
            self._pending_objects = pending_objects
            self._pending_refs = pending_refs
            self._last_error = error
            was_synced = self._synced
            self._synced = error is None and pending_objects == 0 and pending_refs == 0
            if error is None:
                self._last_success = now
            if self._synced:
                self._in_sync_at = now
            elif was_synced:
                self._in_sync_at = self._in_sync_at or now

    def _namespace(self, ns: str, marks: dict[str, int]) -> int:
        """Replicate one namespace; returns the refs still pending (created meanwhile)."""
        local_refs = self.store.list_refs(ns)  # first: see the module docstring
        index = self.store.index(ns)
        end = index.max_seq()
        peer = self._peer(ns)
        try:
            mark = marks.get(ns, 0)
            while mark < end:
                rows = index.changes(mark, end, BATCH)
                if not rows:
                    mark = end
                    break
                self._push_objects(peer, ns, [(id, digest) for _, id, digest in rows])
                mark = rows[-1][0]
                marks[ns] = mark
            marks[ns] = end
            have = set(peer.list_refs())
            lacking = [name for name in local_refs if name not in have]
            for name in lacking:
                found = self.store.read_ref(ns, name)
                if found is None:
                    continue
                try:
                    peer.put_ref(name, found[0])
                except ForgottenError:
                    # the peer pruned it: forget it here too, so the pair converges and
                    # a prune here reclaims its objects (docs/operations.md, HA and prune)
                    self.store.index(ns).forget([name])
                    self.store.delete_ref(ns, name)
                    log.info("%s: peer pruned ref %s; forgot it here too", ns, name)
                    continue
                with self._lock:
                    self._refs_sent += 1
            return len(set(self.store.list_refs(ns)) - set(local_refs))
        finally:
            peer.close()

    def _push_objects(self, peer: HttpBackend, ns: str, rows: list[tuple[str, str]]) -> None:
        asked = peer.missing([(id, digest) for id, digest in rows])
        with self._lock:
            self._objects_claimed += len(rows) - len(asked)
        digest_of = dict(rows)
        records: list[tuple[str, str, bytes]] = []
        for id in asked:
            found = self.store.read_object(ns, id)
            if found is None:
                raise RemoteError(f"local object {ns}/{id} is missing or corrupt")
            records.append((id, digest_of[id], found[0]))
            if sum(len(r[2]) for r in records) >= 16 << 20:
                self._upload(peer, records)
                records = []
        if records:
            self._upload(peer, records)

    def _upload(self, peer: HttpBackend, records: list[tuple[str, str, bytes]]) -> None:
        results = peer.upload(records)
        bad = {id: st for id, st in results.items() if st not in ("created", "exists")}
        if bad:
            raise RemoteError(f"peer refused {len(bad)} objects: {sorted(bad.items())[:3]}")
        with self._lock:
            self._objects_sent += len(records)

    # -- helpers -------------------------------------------------------------------------

    def _peer(self, ns: str) -> HttpBackend:
        return HttpBackend(
            self.peer_urls,
            ns,
            self.token,
            timeout=(5.0, 120.0),
            retrier=Retrier(NO_RETRY),
            tls_verify=self.tls_verify,
        )

    def _load_state(self) -> dict[str, dict[str, int]]:
        try:
            doc = json.loads(self._state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _save_state(self, state: dict[str, dict[str, int]]) -> None:
        tmp = self._state_path.with_name(self._state_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path)
