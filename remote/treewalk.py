"""What a tree object refers to, read from the tool's tree encoding (docs/design.md,
"Tree encoding", version 1) without importing dpmsfs.

The server's prune must know which objects a snapshot reaches. It decodes trees itself
(rather than an admin client walking them over HTTP) because the walk reads every tree of
every kept snapshot: on the server that is a local file read per tree, over HTTP a round
trip each, and the server has the only consistent view while it holds the directory lock.
Only what reachability needs is decoded: per entry its type and content ids (a file's
chunks, a directory's one subtree). Anything malformed raises `TreeDecodeError`, and prune
then deletes nothing: an unreadable tree must never make its objects look unreachable.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

TREE_MAGIC = b"DTRE"
TREE_VERSION = 1
_HEADER = struct.Struct(">4sBI")
# name length, type, mode, uid, gid, size, mtime_ns, rdev, link key, target length,
# xattr count, content id count
_ENTRY = struct.Struct(">HBIIIQqQQIHI")
_XATTR = struct.Struct(">HI")
_ID = 16
TYPE_DIR = 2


class TreeDecodeError(ValueError):
    """Bytes that are not a version-1 tree encoding."""


def references(data: bytes) -> Iterator[tuple[bool, bytes]]:
    """(is_subtree, 16-byte id) for every content id of the tree `data`."""
    size = len(data)
    if size < _HEADER.size:
        raise TreeDecodeError("tree shorter than its header")
    magic, version, count = _HEADER.unpack_from(data)
    if magic != TREE_MAGIC:
        raise TreeDecodeError("not a tree (bad magic)")
    if version != TREE_VERSION:
        raise TreeDecodeError(f"tree version {version} is not supported")
    if count * (_ENTRY.size + 1) > size - _HEADER.size:
        raise TreeDecodeError(f"tree claims {count} entries but has {size} bytes")
    pos = _HEADER.size
    try:
        for _ in range(count):
            fields = _ENTRY.unpack_from(data, pos)
            name_len, etype, target_len, xattr_count, id_count = (
                fields[0], fields[1], fields[9], fields[10], fields[11],
            )  # fmt: skip
            pos += _ENTRY.size + name_len + target_len
            for _x in range(xattr_count):
                xname, xvalue = _XATTR.unpack_from(data, pos)
                pos += _XATTR.size + xname + xvalue
            end = pos + id_count * _ID
            if end > size:
                raise TreeDecodeError("tree entry runs past the end of the data")
            if etype == TYPE_DIR and id_count != 1:
                raise TreeDecodeError("a directory entry needs exactly one subtree id")
            for at in range(pos, end, _ID):
                yield etype == TYPE_DIR, data[at : at + _ID]
            pos = end
    except struct.error:
        raise TreeDecodeError("tree entry runs past the end of the data") from None
    if pos != size:
        raise TreeDecodeError(f"{size - pos} bytes after the last tree entry")
