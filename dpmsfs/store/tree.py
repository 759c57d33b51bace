"""Trees: the deterministic, versioned encoding of one directory.

A tree is stored as an object of type TREE whose id is ``chunk_id(encoded bytes)``; equal
directories therefore encode to equal bytes and deduplicate, and a snapshot is a Merkle
tree rooted at one tree id.

Encoding, version 1 (integers big-endian)::

    header    ">4sBI"  b"DTRE", version 1, entry count
    entry     ">HBIIIQqQQIHI" name length, type, mode, uid, gid, size, mtime_ns, rdev,
              hard-link key, symlink target length, xattr count, content id count
              name bytes, target bytes,
              per xattr ">HI" name length, value length, then name, value,
              content ids (16 bytes each)

Entries are sorted by name (raw bytes) and names are unique.  Names are bytes because
Linux names are arbitrary bytes except ``/`` and NUL.  Not stored: atime (changes on every
read, would make every tree new) and ctime (cannot be restored).  ``link_key`` is non-zero
for files with more than one hard link (the original inode number), so that a restore
can recreate the links; ``content`` is the list of chunk ids of a file, or the one subtree
id of a directory, and empty for everything else.

`decode_tree` validates everything it reads: a damaged or crafted tree raises
`TreeFormatError` and can never yield a name with ``/`` or NUL, or ``.``/``..``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from enum import IntEnum
from typing import NamedTuple

from dpmsfs.store.errors import TreeFormatError

TREE_MAGIC = b"DTRE"
TREE_VERSION = 1
_HEADER = struct.Struct(">4sBI")
_ENTRY = struct.Struct(">HBIIIQqQQIHI")
_XATTR = struct.Struct(">HI")
_ID = 16
_MAX_NAME = 255 * 4  # NAME_MAX is 255 bytes on Linux; leave room, refuse absurd values


class EntryType(IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3
    FIFO = 4
    CHARDEV = 5
    BLOCKDEV = 6
    SOCKET = 7


_TYPES = {int(t): t for t in EntryType}


class TreeEntry(NamedTuple):
    """One directory entry (a NamedTuple: 10,000 of them are built per large directory)."""

    name: bytes
    type: EntryType
    mode: int  # st_mode permission and special bits (the type is in ``type``)
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int = 0
    link_key: int = 0
    target: bytes = b""
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    content: tuple[bytes, ...] = ()


def check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise TreeFormatError(f"invalid entry name {name!r}")
    if len(name) > _MAX_NAME:
        raise TreeFormatError(f"entry name of {len(name)} bytes is too long")


def _check_entry(e: TreeEntry) -> None:
    check_name(e.name)
    if e.type not in _TYPES:
        raise TreeFormatError(f"{e.name!r}: unknown entry type {e.type}")
    if e.type == EntryType.DIR:
        if len(e.content) != 1:
            raise TreeFormatError(f"{e.name!r}: a directory needs exactly one subtree id")
    elif e.type != EntryType.FILE and e.content:
        raise TreeFormatError(f"{e.name!r}: only files and directories have content")
    for cid in e.content:
        if len(cid) != _ID:
            raise TreeFormatError(f"{e.name!r}: content id of {len(cid)} bytes")
    if e.type == EntryType.SYMLINK:
        if not e.target or b"\0" in e.target:
            raise TreeFormatError(f"{e.name!r}: invalid symlink target")
    elif e.target:
        raise TreeFormatError(f"{e.name!r}: only symlinks have a target")
    previous = None
    for xname, _ in e.xattrs:
        if not xname or b"\0" in xname or (previous is not None and xname <= previous):
            raise TreeFormatError(f"{e.name!r}: xattr names must be non-empty, sorted, unique")
        previous = xname


def encode_tree(entries: Iterable[TreeEntry]) -> bytes:
    """Encode a directory; entries may come in any order, names must be unique."""
    ordered = sorted(entries, key=lambda e: e.name)
    parts: list[bytes] = [_HEADER.pack(TREE_MAGIC, TREE_VERSION, len(ordered))]
    append = parts.append
    pack_entry = _ENTRY.pack
    previous: bytes | None = None
    for e in ordered:
        if e.name == previous:
            raise TreeFormatError(f"duplicate entry name {e.name!r}")
        previous = e.name
        _check_entry(e)
        try:
            append(
                pack_entry(
                    len(e.name),
                    e.type,
                    e.mode,
                    e.uid,
                    e.gid,
                    e.size,
                    e.mtime_ns,
                    e.rdev,
                    e.link_key,
                    len(e.target),
                    len(e.xattrs),
                    len(e.content),
                )
            )
        except struct.error as exc:
            raise TreeFormatError(f"{e.name!r}: field out of range: {exc}") from None
        append(e.name)
        if e.target:
            append(e.target)
        for xname, xvalue in e.xattrs:
            append(_XATTR.pack(len(xname), len(xvalue)))
            append(xname)
            append(xvalue)
        if e.content:
            append(b"".join(e.content))
    return b"".join(parts)


TREE_HEADER_SIZE = _HEADER.size
ENTRY_TYPE_OFFSET = 2  # in an encoded entry: after the name length (>H)


def tree_from_encoded(encoded_entries: Sequence[bytes]) -> bytes:
    """A tree from entries encoded one by one (``encode_tree([e])[TREE_HEADER_SIZE:]``),
    already in name order: the same bytes `encode_tree` gives, without re-encoding."""
    return _HEADER.pack(TREE_MAGIC, TREE_VERSION, len(encoded_entries)) + b"".join(encoded_entries)


def decode_tree(data: bytes) -> list[TreeEntry]:
    """Decode and validate an encoded tree; raise `TreeFormatError` on anything wrong."""
    size = len(data)
    if size < _HEADER.size:
        raise TreeFormatError("tree shorter than its header")
    magic, version, count = _HEADER.unpack_from(data)
    if magic != TREE_MAGIC:
        raise TreeFormatError("not a tree (bad magic)")
    if version != TREE_VERSION:
        raise TreeFormatError(f"tree version {version} is not supported")
    # Each entry takes at least _ENTRY.size + 1 bytes: refuse counts the data cannot hold
    # before allocating anything for them.
    if count * (_ENTRY.size + 1) > size - _HEADER.size:
        raise TreeFormatError(f"tree claims {count} entries but has {size} bytes")
    entries: list[TreeEntry] = []
    append = entries.append
    unpack_entry = _ENTRY.unpack_from
    entry_size = _ENTRY.size
    types = _TYPES
    pos = _HEADER.size
    previous = b""
    new_entry = TreeEntry._make
    try:
        for _ in range(count):
            (nlen, etype, mode, uid, gid, esize, mtime, rdev, lkey, tlen, xcount, ccount) = (
                unpack_entry(data, pos)
            )
            pos += entry_size
            end = pos + nlen
            name = data[pos:end]
            pos = end
            if tlen:
                end = pos + tlen
                target = data[pos:end]
                pos = end
            else:
                target = b""
            xattrs: tuple[tuple[bytes, bytes], ...] = ()
            if xcount:
                xl = []
                for _x in range(xcount):
                    xn, xv = _XATTR.unpack_from(data, pos)
                    pos += _XATTR.size
                    xname = data[pos : pos + xn]
                    pos += xn
                    xl.append((xname, data[pos : pos + xv]))
                    pos += xv
                xattrs = tuple(xl)
            if ccount:
                end = pos + ccount * _ID
                blob = data[pos:end]
                content = tuple(blob[i : i + _ID] for i in range(0, len(blob), _ID))
                pos = end
            else:
                content = ()
            if pos > size:
                raise TreeFormatError("tree entry runs past the end of the data")
            if name <= previous:
                raise TreeFormatError(f"entry {name!r} out of order or duplicated")
            previous = name
            etype_enum = types.get(etype)
            if etype_enum is None:
                raise TreeFormatError(f"{name!r}: unknown entry type {etype}")
            entry = new_entry(
                (name, etype_enum, mode, uid, gid, esize, mtime, rdev, lkey, target, xattrs,
                 content)
            )  # fmt: skip
            _check_entry(entry)
            append(entry)
    except struct.error:
        raise TreeFormatError("tree entry runs past the end of the data") from None
    if pos != size:
        raise TreeFormatError(f"{size - pos} trailing bytes after the last tree entry")
    return entries


def find(entries: Sequence[TreeEntry], name: bytes) -> TreeEntry | None:
    """Binary search a decoded (hence sorted) tree by name."""
    lo, hi = 0, len(entries)
    while lo < hi:
        mid = (lo + hi) // 2
        if entries[mid].name < name:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(entries) and entries[lo].name == name:
        return entries[lo]
    return None
