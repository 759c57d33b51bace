"""The capture state: the last captured version of every entry, and what is pending.

Entries are keyed by *directory id + name*, never by path: LMDB keys are at most 511
bytes while paths reach 4,096, and with ids a directory rename moves one entry, not
its whole subtree, so its cost does not grow with the tree.

Tables (in the store's LMDB environment; documented in docs/design.md as a contract):

``cap_ns``       key ``>Q parent dir id + name`` -> ``>Q`` dir id. The directory namespace,
    kept current by the journal (before capture), so every changed path has a key.
``cap_dirs``     key ``>Q dir id`` -> ``>Q parent id + name``: the reverse, to rebuild a
    path and to walk up to the root (id 1, parent 0, empty name).
``cap_files``    key ``>Q parent dir id + name`` -> `FileState`: the last captured version.
    Entries of one directory are contiguous and sorted by name: a tree is one prefix
    scan. Invariant: every content id is in the store's ``objects`` table (written in a
    transaction after the store flushed those chunks).
``cap_journal``  key ``>Q parent dir id + name`` -> ``>QBqq`` sequence number of the last
    change, `Pending` flags, UTC ns of the first and the last change not yet captured.
``cap_dirty``    key ``>Q dir id`` -> empty: directories whose tree the next snapshot rebuilds.
``cap_meta``     ``seq``, ``next_dir``, ``files``, ``bytes`` (>Q each).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from typing import NamedTuple

from dpmsfs.store.db import ReadTxn, WriteTxn
from dpmsfs.store.tree import (
    TREE_HEADER_SIZE,
    EntryType,
    TreeEntry,
    decode_tree,
    encode_tree,
)

T_NS = "cap_ns"
T_DIRS = "cap_dirs"
T_FILES = "cap_files"
T_JOURNAL = "cap_journal"
T_DIRTY = "cap_dirty"
T_META = "cap_meta"
ALL_TABLES = (T_NS, T_DIRS, T_FILES, T_JOURNAL, T_DIRTY, T_META)

META_SEQ = b"seq"
META_NEXT_DIR = b"next_dir"
META_FILES = b"files"
META_BYTES = b"bytes"

ROOT_ID = 1
_U64 = struct.Struct(">Q")
_STATE_HEAD = struct.Struct(">qQq")  # ctime_ns, inode, captured at (UTC ns)
_JOURNAL = struct.Struct(">QBqq")


class Pending(enum.IntFlag):
    """Why a journal entry is pending (flags accumulate until captured)."""

    CONTENT = 1  # data may have changed: read it
    META = 2  # attributes or xattrs changed: stat it
    CLOSED = 4  # the last writer closed it: no need to wait for quiet
    MOVED = 8  # arrived by rename: content moved with it, re-read only if it differs
    GONE = 16  # unlinked or removed (it may exist again by the time it is captured)


class FileState(NamedTuple):
    entry: TreeEntry  # what a tree will hold (content ids, or subtree id for a dir)
    ctime_ns: int  # for the reconciliation scan: a differing ctime means "look again"
    ino: int
    captured_ns: int


class JournalEntry(NamedTuple):
    seq: int
    flags: Pending
    first_ns: int
    last_ns: int


def split(path: bytes) -> tuple[bytes, bytes]:
    parent, _, name = path.rpartition(b"/")
    return parent, name


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def entry_key(dir_id: int, name: bytes) -> bytes:
    return _U64.pack(dir_id) + name


def unpack_key(key: bytes) -> tuple[int, bytes]:
    return _U64.unpack_from(key)[0], key[8:]


# --- counters ------------------------------------------------------------------------
def _counter(txn: ReadTxn, key: bytes) -> int:
    raw = txn.get(T_META, key)
    return int(_U64.unpack(raw)[0]) if raw else 0


def _set_counter(txn: WriteTxn, key: bytes, value: int) -> None:
    txn.put(T_META, key, _U64.pack(max(0, value)))


def totals(txn: ReadTxn) -> tuple[int, int]:
    """(files, bytes) of all regular files in the capture state."""
    return _counter(txn, META_FILES), _counter(txn, META_BYTES)


def last_seq(txn: ReadTxn) -> int:
    return _counter(txn, META_SEQ)


def next_seq(txn: WriteTxn) -> int:
    seq = _counter(txn, META_SEQ) + 1
    _set_counter(txn, META_SEQ, seq)
    return seq


def _account(txn: WriteTxn, state: FileState | None, sign: int) -> None:
    if state is not None and state.entry.type == EntryType.FILE:
        _set_counter(txn, META_FILES, _counter(txn, META_FILES) + sign)
        _set_counter(txn, META_BYTES, _counter(txn, META_BYTES) + sign * state.entry.size)


# --- the directory namespace ---------------------------------------------------------
def lookup_dir(txn: ReadTxn, path: bytes) -> int | None:
    """The id of directory `path` (b"" is the root), or None if unknown."""
    dir_id = ROOT_ID
    if not path:
        return dir_id
    for name in path.split(b"/"):
        raw = txn.get(T_NS, entry_key(dir_id, name))
        if raw is None:
            return None
        dir_id = _U64.unpack(raw)[0]
    return dir_id


def ensure_dir(txn: WriteTxn, path: bytes) -> int:
    """The id of directory `path`, creating namespace entries as needed."""
    dir_id = ROOT_ID
    if not path:
        return dir_id
    for name in path.split(b"/"):
        key = entry_key(dir_id, name)
        raw = txn.get(T_NS, key)
        if raw is None:
            child = _counter(txn, META_NEXT_DIR) or ROOT_ID + 1
            _set_counter(txn, META_NEXT_DIR, child + 1)
            txn.put(T_NS, key, _U64.pack(child))
            txn.put(T_DIRS, _U64.pack(child), key)
            dir_id = child
        else:
            dir_id = _U64.unpack(raw)[0]
    return dir_id


def child_dir(txn: ReadTxn, dir_id: int, name: bytes) -> int | None:
    raw = txn.get(T_NS, entry_key(dir_id, name))
    return int(_U64.unpack(raw)[0]) if raw is not None else None


def dir_parent(txn: ReadTxn, dir_id: int) -> tuple[int, bytes] | None:
    raw = txn.get(T_DIRS, _U64.pack(dir_id))
    return unpack_key(raw) if raw is not None else None


def dir_path(txn: ReadTxn, dir_id: int) -> bytes | None:
    """Path of a directory id, or None if it is no longer in the namespace."""
    names = []
    while dir_id != ROOT_ID:
        parent = dir_parent(txn, dir_id)
        if parent is None:
            return None
        dir_id, name = parent
        names.append(name)
    return b"/".join(reversed(names))


def key_path(txn: ReadTxn, key: bytes) -> bytes | None:
    dir_id, name = unpack_key(key)
    base = dir_path(txn, dir_id)
    return None if base is None else join(base, name)


def depth(txn: ReadTxn, dir_id: int) -> int:
    count = 0
    while dir_id != ROOT_ID:
        parent = dir_parent(txn, dir_id)
        if parent is None:
            return -1
        dir_id = parent[0]
        count += 1
    return count


def _prefix_scan(txn: ReadTxn, table: str, dir_id: int) -> Iterator[tuple[bytes, bytes]]:
    prefix = _U64.pack(dir_id)
    return txn.cursor_range(table, prefix, _U64.pack(dir_id + 1))


def _forget_dir(txn: WriteTxn, dir_id: int) -> None:
    """Remove a directory id and everything below it from every table."""
    stack = [dir_id]
    while stack:
        current = stack.pop()
        for key, value in list(_prefix_scan(txn, T_NS, current)):
            stack.append(_U64.unpack(value)[0])
            txn.delete(T_NS, key)
        for key, value in list(_prefix_scan(txn, T_FILES, current)):
            _account(txn, decode_state(value), -1)
            txn.delete(T_FILES, key)
        for key, _ in list(_prefix_scan(txn, T_JOURNAL, current)):
            txn.delete(T_JOURNAL, key)
        txn.delete(T_DIRS, _U64.pack(current))
        txn.delete(T_DIRTY, _U64.pack(current))


# --- file states ---------------------------------------------------------------------
def encode_state(state: FileState) -> bytes:
    head = _STATE_HEAD.pack(state.ctime_ns, state.ino, state.captured_ns)
    return head + encode_tree([state.entry])


def decode_state(value: bytes) -> FileState:
    ctime_ns, ino, captured_ns = _STATE_HEAD.unpack_from(value)
    (entry,) = decode_tree(value[_STATE_HEAD.size :])
    return FileState(entry, ctime_ns, ino, captured_ns)


def get_state(txn: ReadTxn, key: bytes) -> FileState | None:
    raw = txn.get(T_FILES, key)
    return decode_state(raw) if raw is not None else None


def put_state(txn: WriteTxn, key: bytes, state: FileState) -> None:
    dir_id, name = unpack_key(key)
    _account(txn, get_state(txn, key), -1)
    if state.entry.name != name:
        state = state._replace(entry=state.entry._replace(name=name))
    txn.put(T_FILES, key, encode_state(state))
    _account(txn, state, +1)
    mark_dirty(txn, dir_id)
    if state.entry.type == EntryType.DIR:
        mark_dirty(txn, ensure_child_dir(txn, dir_id, name))


def ensure_child_dir(txn: WriteTxn, dir_id: int, name: bytes) -> int:
    existing = child_dir(txn, dir_id, name)
    if existing is not None:
        return existing
    base = dir_path(txn, dir_id)
    assert base is not None
    return ensure_dir(txn, join(base, name))


def raw_children(txn: ReadTxn, dir_id: int) -> Iterator[tuple[bytes, bytes]]:
    """(name, encoded entry as a tree holds it) of directory `dir_id`, by name."""
    skip = _STATE_HEAD.size + TREE_HEADER_SIZE
    for key, value in _prefix_scan(txn, T_FILES, dir_id):
        yield key[8:], value[skip:]


def children(txn: ReadTxn, dir_id: int) -> Iterator[tuple[bytes, FileState]]:
    """(name, state) of the captured entries directly in directory `dir_id`, by name."""
    for key, value in _prefix_scan(txn, T_FILES, dir_id):
        yield key[8:], decode_state(value)


def delete_entry(txn: WriteTxn, key: bytes) -> None:
    """Forget an entry; a directory goes with everything below it."""
    dir_id, name = unpack_key(key)
    old = get_state(txn, key)
    if old is not None:
        _account(txn, old, -1)
        txn.delete(T_FILES, key)
        mark_dirty(txn, dir_id)
    sub = child_dir(txn, dir_id, name)
    if sub is not None:
        txn.delete(T_NS, key)
        _forget_dir(txn, sub)


def move_entry(txn: WriteTxn, old_key: bytes, new_key: bytes) -> None:
    """A rename: the entry (and, for a directory, its id and subtree) moves to `new_key`."""
    if old_key == new_key:
        return
    delete_entry(txn, new_key)
    old_dir, _ = unpack_key(old_key)
    new_dir, new_name = unpack_key(new_key)
    sub = child_dir(txn, old_dir, old_key[8:])
    if sub is not None:
        txn.delete(T_NS, old_key)
        txn.put(T_NS, new_key, _U64.pack(sub))
        txn.put(T_DIRS, _U64.pack(sub), new_key)
    value = txn.get(T_FILES, old_key)
    if value is not None:
        moved = decode_state(value)
        txn.delete(T_FILES, old_key)
        moved = moved._replace(entry=moved.entry._replace(name=new_name))
        txn.put(T_FILES, new_key, encode_state(moved))
        mark_dirty(txn, old_dir)
        mark_dirty(txn, new_dir)
    pending = txn.get(T_JOURNAL, old_key)
    if pending is not None:
        txn.delete(T_JOURNAL, old_key)
        txn.put(T_JOURNAL, new_key, pending)


def exchange_entries(txn: WriteTxn, a: bytes, b: bytes) -> None:
    """RENAME_EXCHANGE: swap two entries with whatever hangs below them."""
    for table in (T_NS, T_FILES, T_JOURNAL):
        va, vb = txn.get(table, a), txn.get(table, b)
        for key, value in ((a, vb), (b, va)):
            if value is None:
                txn.delete(table, key)
            else:
                if table == T_FILES:
                    moved = decode_state(value)
                    entry = moved.entry._replace(name=key[8:])
                    value = encode_state(moved._replace(entry=entry))
                txn.put(table, key, value)
                if table == T_NS:
                    txn.put(T_DIRS, value, key)
    mark_dirty(txn, unpack_key(a)[0])
    mark_dirty(txn, unpack_key(b)[0])


# --- dirty directories ---------------------------------------------------------------
def mark_dirty(txn: WriteTxn, dir_id: int) -> None:
    txn.put(T_DIRTY, _U64.pack(dir_id), b"")


def dirty_dirs(txn: ReadTxn) -> list[int]:
    return [_U64.unpack(k)[0] for k, _ in txn.cursor_range(T_DIRTY)]


# --- journal -------------------------------------------------------------------------
def encode_journal(entry: JournalEntry) -> bytes:
    return _JOURNAL.pack(entry.seq, int(entry.flags), entry.first_ns, entry.last_ns)


def decode_journal(value: bytes) -> JournalEntry:
    seq, flags, first_ns, last_ns = _JOURNAL.unpack(value)
    return JournalEntry(seq, Pending(flags), first_ns, last_ns)


def get_pending(txn: ReadTxn, key: bytes) -> JournalEntry | None:
    raw = txn.get(T_JOURNAL, key)
    return decode_journal(raw) if raw is not None else None


def note_pending(txn: WriteTxn, key: bytes, flags: Pending, now_ns: int) -> None:
    """Merge a change into the journal entry of `key` (with a new sequence number)."""
    old = get_pending(txn, key)
    seq = next_seq(txn)
    if old is None:
        entry = JournalEntry(seq, flags, now_ns, now_ns)
    else:
        merged = old.flags | flags
        if flags & (Pending.CONTENT | Pending.META) and not flags & Pending.CLOSED:
            merged &= ~Pending.CLOSED  # written again after the close: wait again
        entry = JournalEntry(seq, merged, old.first_ns, now_ns)
    txn.put(T_JOURNAL, key, encode_journal(entry))


def note_path(txn: WriteTxn, path: bytes, flags: Pending, now_ns: int) -> bytes:
    """Journal a change of `path`; returns its key."""
    parent, name = split(path)
    key = entry_key(ensure_dir(txn, parent), name)
    note_pending(txn, key, flags, now_ns)
    return key


def pending_count(txn: ReadTxn) -> int:
    return txn.count(T_JOURNAL)


def iter_pending(txn: ReadTxn) -> Iterator[tuple[bytes, JournalEntry]]:
    for key, value in txn.cursor_range(T_JOURNAL):
        yield key, decode_journal(value)
