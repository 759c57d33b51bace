"""The one place that talks to LMDB.

`Database` wraps one LMDB environment holding named tables.  Everything above it sees
tables by name and bytes in, bytes out; the table names and layouts live in `schema.py`
(for the store) or in the module that declares them (the journal).

Choices, and why:

- ``subdir=True``: the environment is a directory (``data.mdb`` + ``lock.mdb``).
- ``writemap=False`` and the default sync: a crash can never scribble on the map through a
  stray pointer, and a committed write transaction is durable.  The commit is *the*
  durability point of every table.
- One writer at a time, serialized by a lock, and a write transaction begins and ends on one
  thread (LMDB requires it).  Readers use MVCC snapshots and never block writers.
- The map grows on demand (doubling, up to ``max_map_size``).  ``set_mapsize`` is only legal
  while this process has no transaction open, so read transactions are counted and a resize
  waits for them to drain (readers arriving meanwhile wait for the resize).
- A read-only process (the snapshot view, a CLI restore) whose writer grew the map gets
  MDB_MAP_RESIZED at its next read; it adopts the new size the same way and retries.
- Disk full (ENOSPC) and a map that cannot grow raise `StoreFullError`: LMDB writes the
  meta page last, so a failed commit leaves the previous state intact.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import lmdb

from dpmsfs.store.errors import StoreError, StoreFullError

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_MAP_SIZE = 1 << 40  # address space only: the file grows as pages are used
_MIN_HEADROOM = 16 << 20


class MapResizedError(StoreError):
    """A write transaction hit the end of the map; the map grew, retry the transaction.

    `Database.transact` does the retry; the bare ``with db.write()`` form lets it escape
    because the body of a ``with`` cannot be re-run.
    """


def _is_enospc(exc: BaseException, path: str | None = None) -> bool:
    """Whether ``exc`` means "the disk is full".

    py-lmdb raises its own classes for system errors, with strerror in the message.  LMDB
    turns a short ``pwrite`` during commit into EIO (measured on a full tmpfs), so an EIO
    is taken as disk-full when the file system of ``path`` is (nearly) out of space.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if "No space left" in text or "Disk quota" in text:
        return True
    if path is not None and "Input/output error" in text:
        return disk_nearly_full(path)
    return False


def disk_nearly_full(path: str) -> bool:
    """Less than 16 MiB or 1% free on the file system holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    free = st.f_bavail * st.f_frsize
    return free < max(16 << 20, st.f_blocks * st.f_frsize // 100)


class ReadTxn:
    """A read-only view of the database at one instant (an LMDB MVCC snapshot)."""

    def __init__(self, db: Database, txn: Any) -> None:
        self._db = db
        self._txn = txn

    def get(self, table: str, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=self._db._handle(table))
        return None if value is None else bytes(value)

    def count(self, table: str) -> int:
        return int(self._txn.stat(self._db._handle(table))["entries"])

    def cursor_range(
        self,
        table: str,
        start: bytes = b"",
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) with ``start <= key < stop`` in key order (or reverse order).

        Streams from an LMDB cursor: memory stays bounded whatever the table size.  The
        iterator is only valid while the transaction is open.
        """
        cursor = self._txn.cursor(db=self._db._handle(table))
        try:
            if not reverse:
                if not cursor.set_range(start):
                    return
                while True:
                    key = cursor.key()
                    if stop is not None and key >= stop:
                        return
                    yield bytes(key), bytes(cursor.value())
                    if not cursor.next():
                        return
            else:
                if stop is None:
                    positioned = cursor.last()
                elif cursor.set_range(stop):
                    positioned = cursor.prev()  # first key >= stop: step back below it
                else:
                    positioned = cursor.last()  # every key is < stop
                while positioned:
                    key = cursor.key()
                    if key < start:
                        return
                    yield bytes(key), bytes(cursor.value())
                    positioned = cursor.prev()
        finally:
            cursor.close()


class WriteTxn(ReadTxn):
    """A read-write transaction; committed when its ``with`` block ends without error."""

    def put(self, table: str, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        """Store ``value`` under ``key``; with ``overwrite=False`` return False if present."""
        return bool(self._txn.put(key, value, overwrite=overwrite, db=self._db._handle(table)))

    def delete(self, table: str, key: bytes) -> bool:
        """Remove ``key``; return whether it existed."""
        return bool(self._txn.delete(key, db=self._db._handle(table)))

    def drop(self, table: str) -> None:
        """Remove every entry of ``table`` (the table itself stays declared)."""
        self._txn.drop(self._db._handle(table), delete=False)


class _Env:
    """One LMDB environment and its locks, shared by every `Database` on the same path.

    LMDB forbids opening one environment twice in a process (its fcntl locks would be
    released by the second close), so a read-only `Store` beside the daemon's writer
    shares the writer's environment.
    """

    def __init__(
        self, path: str, map_size: int, max_map_size: int, max_dbs: int, readonly: bool
    ) -> None:
        self.readonly = readonly
        self.refs = 0
        self._max_map_size = max_map_size
        self._write_lock = threading.Lock()
        self._readers = threading.Condition()
        self._active_readers = 0
        self._resizing = False
        try:
            self._env = lmdb.open(
                path,
                map_size=map_size,
                subdir=True,
                max_dbs=max_dbs,
                writemap=False,
                readonly=readonly,
                create=not readonly,
                lock=True,
            )
        except lmdb.Error as exc:
            if _is_enospc(exc):
                raise StoreFullError(f"no space left to open the index at {path}") from exc
            raise StoreError(f"cannot open the index at {path}: {exc}") from exc
        # Never shrink below what an earlier run grew the map to (LMDB keeps the larger).
        self._map_size = int(self._env.info()["map_size"])
        self._handles: dict[str, Any] = {}


_registry: dict[str, _Env] = {}
_registry_lock = threading.Lock()


class Database:
    """One LMDB environment with named tables.

    ``tables`` are created if missing.  Another module may add its own later with
    `declare`, which is how the journal shares the environment with the store index.
    """

    def __init__(
        self,
        path: str,
        tables: Iterable[str] = (),
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        max_dbs: int = 32,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self._closed = False
        key = os.path.realpath(path)
        with _registry_lock:
            shared = _registry.get(key)
            if shared is None:
                shared = _registry[key] = _Env(path, map_size, max_map_size, max_dbs, readonly)
            elif shared.readonly and not readonly:
                raise StoreError(f"the index at {path} is already open read-only in this process")
            shared.refs += 1
        self._key = key
        self._s = shared
        self.declare(*tables)

    # -- tables -----------------------------------------------------------------------

    def declare(self, *tables: str) -> None:
        """Open (creating if needed) the named tables."""
        for name in tables:
            if name in self._s._handles:
                continue
            if self.readonly:
                try:
                    self._s._handles[name] = self._s._env.open_db(name.encode(), create=False)
                except lmdb.NotFoundError:
                    self._s._handles[name] = None  # absent: reads see an empty table
                continue
            with self._s._write_lock:
                try:
                    self._s._handles[name] = self._s._env.open_db(name.encode(), create=True)
                except lmdb.Error as exc:
                    if _is_enospc(exc):
                        raise StoreFullError(f"no space left to create table {name}") from exc
                    raise

    def _handle(self, table: str) -> Any:
        try:
            handle = self._s._handles[table]
        except KeyError:
            raise StoreError(f"table {table!r} was not declared") from None
        if handle is None:
            raise StoreError(f"table {table!r} does not exist in this (read-only) index")
        return handle

    # -- transactions -----------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[ReadTxn]:
        txn = self._begin_read()
        try:
            yield ReadTxn(self, txn)
        finally:
            txn.abort()
            self._reader_done()

    def _begin_read(self) -> Any:
        """A read transaction, counted (see the module docstring); adopts a map another
        process grew (the snapshot view and the CLI read while the daemon writes)."""
        while True:
            with self._s._readers:
                while self._s._resizing:
                    self._s._readers.wait()
                self._s._active_readers += 1
            try:
                return self._s._env.begin(write=False, buffers=False)
            except lmdb.MapResizedError:
                self._reader_done()
                self._adopt_grown_map()
            except BaseException:
                self._reader_done()
                raise

    def _reader_done(self) -> None:
        with self._s._readers:
            self._s._active_readers -= 1
            self._s._readers.notify_all()

    def _adopt_grown_map(self) -> None:
        """Map the size the writer's process grew the map to. Like a resize, legal only
        while this process has no transaction open: readers drain first."""
        with self._s._readers:
            if self._s._resizing:  # another thread is adopting it: wait for that
                while self._s._resizing:
                    self._s._readers.wait()
                return
            self._s._resizing = True
            try:
                while self._s._active_readers:
                    self._s._readers.wait()
                self._s._env.set_mapsize(0)  # 0: take the size recorded in the file
                self._s._map_size = int(self._s._env.info()["map_size"])
            finally:
                self._s._resizing = False
                self._s._readers.notify_all()
        log.info("index map at %s grown by its writer to %d bytes", self.path, self._s._map_size)

    @contextmanager
    def write(self) -> Iterator[WriteTxn]:
        """A write transaction, committed at the end of the block (the durability point).

        Raises `MapResizedError` if the map had to grow mid-transaction (use `transact`
        for automatic retry) and `StoreFullError` if the disk is full.
        """
        if self.readonly:
            raise StoreError(f"the index at {self.path} is open read-only")
        with self._s._write_lock:
            self._ensure_headroom()
            txn = self._s._env.begin(write=True, buffers=False)
            try:
                yield WriteTxn(self, txn)
            except lmdb.MapFullError as exc:
                txn.abort()
                self._grow(self._s._map_size * 2)
                raise MapResizedError("the index map was full and has grown: retry") from exc
            except BaseException as exc:
                txn.abort()
                if isinstance(exc, lmdb.Error | OSError) and _is_enospc(exc, self.path):
                    raise StoreFullError(f"no space left on the disk of {self.path}") from exc
                raise
            try:
                txn.commit()
            except lmdb.MapFullError as exc:
                self._grow(self._s._map_size * 2)
                raise MapResizedError("the index map was full and has grown: retry") from exc
            except lmdb.Error as exc:
                if _is_enospc(exc, self.path):
                    raise StoreFullError(
                        f"no space left on the disk of {self.path}: index not updated"
                    ) from exc
                raise

    def transact(self, body: Callable[[WriteTxn], T], attempts: int = 4) -> T:
        """Run ``body`` in a write transaction, retrying it if the map had to grow."""
        for attempt in range(attempts):
            try:
                with self.write() as txn:
                    return body(txn)
            except MapResizedError:
                log.info("index map grew to %d bytes (attempt %d)", self._s._map_size, attempt + 1)
        raise StoreFullError(
            f"a single transaction does not fit in the index map at {self.path} "
            f"({self._s._map_size} bytes)"
        )

    # -- map size -----------------------------------------------------------------------

    def _ensure_headroom(self) -> None:
        """Grow the map before a write if less than a quarter of it is free.

        Called with the write lock held.  Growing ahead means the in-transaction
        `MapResizedError` path is rare.
        """
        info = self._s._env.info()
        stat = self._s._env.stat()
        used = (int(info["last_pgno"]) + 1) * int(stat["psize"])
        free = self._s._map_size - used
        if free < max(self._s._map_size // 4, _MIN_HEADROOM):
            self._grow(max(self._s._map_size * 2, used + 4 * _MIN_HEADROOM))

    def _grow(self, new_size: int) -> None:
        """Resize the map; the caller holds the write lock and no write txn is open."""
        new_size = min(new_size, self._s._max_map_size)
        if new_size <= self._s._map_size:
            raise StoreFullError(
                f"the index at {self.path} reached its maximum size ({self._s._max_map_size} bytes)"
            )
        with self._s._readers:
            self._s._resizing = True
            try:
                while self._s._active_readers:
                    self._s._readers.wait()
                self._s._env.set_mapsize(new_size)
            finally:
                self._s._resizing = False
                self._s._readers.notify_all()
        old = self._s._map_size
        log.info("index map at %s grown from %d to %d bytes", self.path, old, new_size)
        self._s._map_size = new_size

    @property
    def map_size(self) -> int:
        return self._s._map_size

    def file_size(self) -> int:
        return os.path.getsize(os.path.join(self.path, "data.mdb"))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _registry_lock:
            self._s.refs -= 1
            if self._s.refs == 0:
                del _registry[self._key]
                self._s._env.close()
