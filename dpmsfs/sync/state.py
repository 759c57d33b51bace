"""The sync queue and what the tool knows about the server, in the store's LMDB environment.

The queue is not a list of its own: it is *the local snapshots not yet confirmed on the
server that answers now*. Deriving it from the store's ``snapshots`` table means a snapshot
taken while sync runs joins it by itself, and one removed locally (retention) leaves it by
itself. What is kept is what the server confirmed, per server (the two servers of the HA
pair are different servers: a confirmation by one says nothing about the other).

Tables (documented in docs/design.md, "LMDB schema", as a contract):

``sync_sha256``  key object id (16 bytes) -> SHA-256 of its plain content (32 bytes).
    A cache: content-addressed, so never stale; hashing happens once per object.
``sync_objects`` key server key (8 bytes) + object id -> empty. The server confirmed the
    object (it answered "present" to `missing`, or accepted its upload). For a tree it also
    means every object below it is confirmed on that server, so a later pass skips the
    whole subtree: a tree is only confirmed after everything it references.
``sync_snaps``   key server key + snapshot name -> ``>q`` UTC ns of the confirmation: the
    snapshot's ref is on that server (and, by the HA invariant, all its objects).
``sync_gone``    key server key + snapshot name -> ``>q`` UTC ns when the tool learned it:
    that server's prune forgot the snapshot (it answered `refs:forgotten`, or 410 to the
    ref's PUT). Not a confirmation: the server does not hold it, so the local budget
    never evicts it; but it leaves the queue, and sync never sends it again there.
``sync_meta``    ``current`` -> server id of the server that answered last;
    ``audit:<server key hex>`` -> empty: do not trust refs of that server, re-check
    every object (after a failover noticed mid-snapshot, or `dpmsfs sync --recheck`);
    ``server:<server key hex>`` -> that server's id (for status).

A server key is the first 8 bytes of BLAKE2b of the server id (ids are the servers' own
uuids; 64 bits keep two servers apart with certainty for any real fleet).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator

from dpmsfs.store.db import Database, ReadTxn, WriteTxn

T_SHA256 = "sync_sha256"
T_OBJECTS = "sync_objects"
T_SNAPS = "sync_snaps"
T_META = "sync_meta"
T_GONE = "sync_gone"
ALL_TABLES = (T_SHA256, T_OBJECTS, T_SNAPS, T_META, T_GONE)

META_CURRENT = b"current"
_I64 = struct.Struct(">q")


def server_key(server_id: str) -> bytes:
    return hashlib.blake2b(server_id.encode(), digest_size=8).digest()


class SyncState:
    """Reads and writes of the sync tables; every write is one LMDB transaction (durable)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.declare(*ALL_TABLES)

    # -- hashes -------------------------------------------------------------------------
    def sha256_of(self, txn: ReadTxn, oid: bytes) -> bytes | None:
        return txn.get(T_SHA256, oid)

    # -- confirmations ------------------------------------------------------------------
    @staticmethod
    def is_confirmed(txn: ReadTxn, key: bytes, oid: bytes) -> bool:
        return txn.get(T_OBJECTS, key + oid) is not None

    def record_batch(
        self, key: bytes, hashes: Iterable[tuple[bytes, bytes]], confirmed: Iterable[bytes]
    ) -> None:
        """Remember new hashes and the objects the server confirmed, in one transaction."""
        hashes = list(hashes)
        confirmed = list(confirmed)

        def body(txn: WriteTxn) -> None:
            for oid, digest in hashes:
                txn.put(T_SHA256, oid, digest)
            for oid in confirmed:
                txn.put(T_OBJECTS, key + oid, b"")

        if hashes or confirmed:
            self.db.transact(body)

    def confirm_snapshot(self, key: bytes, name: str, now_ns: int) -> None:
        self.db.transact(lambda txn: txn.put(T_SNAPS, key + name.encode(), _I64.pack(now_ns)))

    def confirm_snapshots(self, key: bytes, names: Iterable[str], now_ns: int) -> None:
        self._stamp(T_SNAPS, key, names, now_ns)

    def _stamp(self, table: str, key: bytes, names: Iterable[str], now_ns: int) -> None:
        """One transaction: server key + each name -> the time, in `table`."""
        names = list(names)

        def body(txn: WriteTxn) -> None:
            for name in names:
                txn.put(table, key + name.encode(), _I64.pack(now_ns))

        if names:
            self.db.transact(body)

    @staticmethod
    def snapshot_confirmed(txn: ReadTxn, key: bytes, name: str) -> bool:
        return txn.get(T_SNAPS, key + name.encode()) is not None

    def confirmed_snapshots(self, key: bytes) -> set[str]:
        with self.db.read() as txn:
            return {k[len(key) :].decode() for k, _ in _prefix(txn, T_SNAPS, key)}

    # -- snapshots the server's prune forgot ----------------------------------------------
    def mark_forgotten(self, key: bytes, names: Iterable[str], now_ns: int) -> None:
        self._stamp(T_GONE, key, names, now_ns)

    def forgotten_snapshots(self, key: bytes) -> set[str]:
        with self.db.read() as txn:
            return {k[len(key) :].decode() for k, _ in _prefix(txn, T_GONE, key)}

    def settled_snapshots(self, key: bytes) -> set[str]:
        """The snapshots sync has nothing more to do for on this server: confirmed there,
        or forgotten there by a prune."""
        with self.db.read() as txn:
            return {
                k[len(key) :].decode()
                for table in (T_SNAPS, T_GONE)
                for k, _ in _prefix(txn, table, key)
            }

    def forget_server(self, key: bytes) -> int:
        """Drop every confirmation by one server (a recheck): returns how many. What it
        forgot is asked again (`refs:forgotten`) by the next pass."""

        def body(txn: WriteTxn) -> int:
            dropped = 0
            for table in (T_OBJECTS, T_SNAPS, T_GONE):
                doomed = [k for k, _ in _prefix(txn, table, key)]
                for k in doomed:
                    txn.delete(table, k)
                dropped += len(doomed)
            return dropped

        return self.db.transact(body)

    # -- meta ---------------------------------------------------------------------------
    def current_server(self) -> str:
        with self.db.read() as txn:
            return (txn.get(T_META, META_CURRENT) or b"").decode()

    def set_current_server(self, server_id: str) -> None:
        key = server_key(server_id)

        def body(txn: WriteTxn) -> None:
            txn.put(T_META, META_CURRENT, server_id.encode())
            txn.put(T_META, b"server:" + key.hex().encode(), server_id.encode())

        self.db.transact(body)

    def damaged_cursor(self, key: bytes) -> int:
        """Where the last `Backend.damaged` answer of this server left off (0: never asked)."""
        with self.db.read() as txn:
            raw = txn.get(T_META, b"damaged:" + key.hex().encode())
        return int(raw.decode()) if raw else 0

    def set_damaged_cursor(self, key: bytes, cursor: int) -> None:
        name = b"damaged:" + key.hex().encode()
        self.db.transact(lambda txn: txn.put(T_META, name, str(cursor).encode()))

    def needs_audit(self, key: bytes) -> bool:
        with self.db.read() as txn:
            return txn.get(T_META, b"audit:" + key.hex().encode()) is not None

    def set_audit(self, key: bytes, wanted: bool) -> None:
        name = b"audit:" + key.hex().encode()
        if wanted:
            self.db.transact(lambda txn: txn.put(T_META, name, b""))
        else:
            self.db.transact(lambda txn: txn.delete(T_META, name))


def _prefix(txn: ReadTxn, table: str, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    stop = (int.from_bytes(prefix, "big") + 1).to_bytes(len(prefix), "big") if prefix else None
    if prefix and prefix == b"\xff" * len(prefix):
        stop = None
    return txn.cursor_range(table, start=prefix, stop=stop)
