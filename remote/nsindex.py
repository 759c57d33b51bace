"""A namespace's map from object id (xxh3-128) to pool digest (SHA-256), in SQLite.

One database file per namespace, `DIR/ns/<namespace>/index.sqlite`, instead of one file per
mapping: a tool holds 10^5-10^6 objects, and 12 tools with a file per mapping would put
millions of tiny files on the server's NTFS volume (slow to create, to back up and to scan),
while SQLite answers `missing` for 1000 ids with one indexed lookup each and commits a
whole upload batch with one WAL fsync. SQLite ships with Python on Windows and Linux.

Schema (contract, docs/remote-api.md):

    CREATE TABLE objects (id TEXT PRIMARY KEY, digest TEXT NOT NULL, frame_size INTEGER
                          NOT NULL) WITHOUT ROWID
    CREATE TABLE log (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL)
    CREATE TABLE touched (id TEXT PRIMARY KEY, at_s INTEGER NOT NULL) WITHOUT ROWID
    CREATE TABLE forgotten (name TEXT PRIMARY KEY, at_s INTEGER NOT NULL) WITHOUT ROWID

`forgotten` holds the refs a prune forgot here (written before the ref files go): the HA
peer's replicator may not put them back (410), and learns from that to forget them too.

`touched` holds, per mapped id, the unix second it was last created or confirmed to a
tool (a `missing` that answered "present"), to within TOUCH_RESOLUTION_S. It is what makes
`dpmsfs-server prune` safe for a tool between its `missing` and its snapshot ref: prune
keeps every mapping touched within its grace period (see remote/prune.py). An id absent
from `touched` (a map from before this table) counts as touched at 0 (long ago).

`log` numbers every mapping as it is created (same transaction), so replication can ask
"what was mapped after sequence number N" instead of comparing whole maps with the peer.

`journal_mode=WAL` and `synchronous=FULL`: a commit is on disk when `add_many` returns, so
the server may answer 200 after it. A row is inserted only after the server verified that
the blob `digest` holds plain content whose xxh3-128 is `id`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

Rows = list[tuple[int, str, str]]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS objects (id TEXT PRIMARY KEY, digest TEXT NOT NULL, "
    "frame_size INTEGER NOT NULL) WITHOUT ROWID"
)
_LOG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL)"
)
_TOUCHED_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS touched (id TEXT PRIMARY KEY, at_s INTEGER NOT NULL) WITHOUT ROWID"
)
_FORGOTTEN_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS forgotten (name TEXT PRIMARY KEY, at_s INTEGER NOT NULL) "
    "WITHOUT ROWID"
)
# A confirmation rewrites `touched` only if the stored time is older than this: a tool's
# repeated `missing` calls cost no write (and no fsync) within the hour, and prune's grace
# period (a day by default) is far longer than the error this allows.
TOUCH_RESOLUTION_S = 3600
_BATCH = 500  # SQLite's default limit of host parameters is 999 (older) / 32766 (newer)


class NamespaceIndex:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self.touch_resolution_s = TOUCH_RESOLUTION_S
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._db.execute(_LOG_SCHEMA)
        self._db.execute(_TOUCHED_SCHEMA)
        self._db.execute(_FORGOTTEN_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def lookup(self, ids: Sequence[str]) -> dict[str, str]:
        """{id: digest} for those of `ids` that are mapped."""
        out: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(ids), _BATCH):
                part = list(ids[start : start + _BATCH])
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT id, digest FROM objects WHERE id IN ({marks})", part
                )
                out.update(rows)
        return out

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One durable write transaction (the caller holds `_lock`)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, id: str) -> str | None:
        return self.lookup([id]).get(id)

    def add_many(self, rows: Iterable[tuple[str, str, int]], now_s: int | None = None) -> None:
        """Insert or replace (id, digest, frame_size) rows in one durable transaction."""
        rows = list(rows)
        if not rows:
            return
        at = int(time.time()) if now_s is None else now_s
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO objects (id, digest, frame_size) VALUES (?, ?, ?)",
                rows,
            )
            self._db.executemany("INSERT INTO log (id) VALUES (?)", [(r[0],) for r in rows])
            self._db.executemany(
                "INSERT OR REPLACE INTO touched (id, at_s) VALUES (?, ?)",
                [(r[0], at) for r in rows],
            )

    def touch(self, ids: Sequence[str], now_s: int | None = None) -> None:
        """Record that `ids` were confirmed to a tool now; durable before returning (the
        tool may rely on them from its next request on). Writes only stale entries."""
        if not ids:
            return
        at = int(time.time()) if now_s is None else now_s
        with self._lock:
            stale: list[str] = []
            for start in range(0, len(ids), _BATCH):
                part = list(ids[start : start + _BATCH])
                marks = ",".join("?" * len(part))
                fresh = {
                    row[0]
                    for row in self._db.execute(
                        f"SELECT id FROM touched WHERE at_s >= ? AND id IN ({marks})",
                        [at - self.touch_resolution_s, *part],
                    )
                }
                stale += [i for i in part if i not in fresh]
            if not stale:
                return
            with self._transaction():
                self._db.executemany(
                    "INSERT OR REPLACE INTO touched (id, at_s) VALUES (?, ?)",
                    [(i, at) for i in stale],
                )

    def delete_unreached(self, keep: set[str], touched_before_s: int) -> tuple[int, int]:
        """Delete every mapping not in `keep` and not touched at or after
        `touched_before_s`, in one transaction; (mappings, frame bytes) removed."""
        with self._lock:
            doomed = self._unreached(keep, touched_before_s)
            if not doomed:
                return 0, 0
            with self._transaction():
                for start in range(0, len(doomed), _BATCH):
                    part = [i for i, _ in doomed[start : start + _BATCH]]
                    marks = ",".join("?" * len(part))
                    self._db.execute(f"DELETE FROM objects WHERE id IN ({marks})", part)
                    self._db.execute(f"DELETE FROM touched WHERE id IN ({marks})", part)
        return len(doomed), sum(size for _, size in doomed)

    def unreached(self, keep: set[str], touched_before_s: int) -> tuple[int, int]:
        """What `delete_unreached` would remove, without removing it (a dry run)."""
        with self._lock:
            doomed = self._unreached(keep, touched_before_s)
        return len(doomed), sum(size for _, size in doomed)

    def _unreached(self, keep: set[str], touched_before_s: int) -> list[tuple[str, int]]:
        """(id, frame size) of every mapping not in `keep` and not touched at or after
        `touched_before_s` (the caller holds `_lock`)."""
        recent = {
            row[0]
            for row in self._db.execute(
                "SELECT id FROM touched WHERE at_s >= ?", (touched_before_s,)
            )
        }
        return [
            (id, int(size))
            for id, size in self._db.execute("SELECT id, frame_size FROM objects")
            if id not in keep and id not in recent
        ]

    def forget(self, names: Sequence[str], now_s: int | None = None) -> None:
        """Record that a prune forgot the refs `names` (durable before returning)."""
        if not names:
            return
        at = int(time.time()) if now_s is None else now_s
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO forgotten (name, at_s) VALUES (?, ?)",
                [(n, at) for n in names],
            )

    def is_forgotten(self, name: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM forgotten WHERE name = ?", (name,)).fetchone()
        return row is not None

    def forgotten_among(self, names: Sequence[str]) -> list[str]:
        """Those of `names` a prune forgot here, in the order given."""
        if not names:
            return []
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(names), 500):  # under SQLite's variable limit
                part = list(names[start : start + 500])
                marks = ",".join("?" * len(part))
                rows = self._db.execute(f"SELECT name FROM forgotten WHERE name IN ({marks})", part)
                found.update(row[0] for row in rows)
        return [n for n in names if n in found]

    def digests(self) -> set[bytes]:
        """Every digest this namespace maps, as 32 raw bytes (for the blob sweep: a set of
        millions of digests takes half the memory of their hex strings)."""
        with self._lock:
            return {bytes.fromhex(row[0]) for row in self._db.execute("SELECT digest FROM objects")}

    def ids_of_digests(self, digests: Iterable[str]) -> list[str]:
        """The ids this namespace maps to any of `digests`, sorted (a full scan of the
        map: asked only when blobs were quarantined, which is rare)."""
        wanted = set(digests)
        if not wanted:
            return []
        with self._lock:
            rows = self._db.execute("SELECT id, digest FROM objects").fetchall()
        return sorted(id for id, digest in rows if digest in wanted)

    def delete(self, id: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM objects WHERE id = ?", (id,))
            return cur.rowcount > 0

    def list(self, after: str, limit: int) -> tuple[list[str], bool]:
        """Ids greater than `after` in order, at most `limit`; and whether more follow."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM objects WHERE id > ? ORDER BY id LIMIT ?", (after, limit + 1)
            ).fetchall()
        ids = [r[0] for r in rows]
        return ids[:limit], len(ids) > limit

    def stats(self) -> tuple[int, int]:
        """(mapped objects, their frame bytes)."""
        with self._lock:
            count, total = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(frame_size), 0) FROM objects"
            ).fetchone()
        return int(count), int(total)

    def iter_rows(self, page: int = 10_000) -> Iterable[tuple[str, str]]:
        """Every (id, digest), in id order, paged so the lock is never held for long."""
        after = ""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, digest FROM objects WHERE id > ? ORDER BY id LIMIT ?",
                    (after, page),
                ).fetchall()
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1][0]

    def max_seq(self) -> int:
        with self._lock:
            (seq,) = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM log").fetchone()
        return int(seq)

    def changes(self, after_seq: int, up_to: int, limit: int) -> Rows:
        """(seq, id, digest) of mappings logged in (after_seq, up_to], still mapped."""
        with self._lock:
            rows = self._db.execute(
                "SELECT log.seq, log.id, objects.digest FROM log JOIN objects USING (id) "
                "WHERE log.seq > ? AND log.seq <= ? ORDER BY log.seq LIMIT ?",
                (after_seq, up_to, limit),
            ).fetchall()
        return [(int(a), str(b), str(c)) for a, b, c in rows]
