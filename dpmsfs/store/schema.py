"""Every LMDB table of the local store, its key and value layout: the index contract.

This module and the "LMDB schema" section of docs/design.md describe the same thing; change
both or neither.  All integers are big-endian (keys then sort numerically, and the layout
does not depend on the host).

Tables
------
``meta``
    Key: ASCII name.  Value: see each ``META_*`` constant.  Written once by `Store.create`
    (before the store marker file, so a half-created directory is not a store).

``objects``  (the index)
    Key: 16-byte object id (xxh3-128 of the object's raw bytes).
    Value: `ObjectLocation` packed as ``>16sQIIB`` (45 bytes): pack id, offset of the
    record header in the pack, stored length (the compressed payload), raw length
    (decompressed), object type.
    Invariant: the pack is in ``packs`` and its file was fsynced and renamed into place
    *before* the transaction adding this entry committed.

``packs``
    Key: 16-byte pack id.  Value: `PackInfo` packed as ``>QIq`` (20 bytes): file size,
    record count, sealed time (UTC ns).
    Invariant: the pack file exists at ``packs/<2 hex>/<32 hex>.pack`` with this size.

``snapshots``
    Key: the snapshot name, ASCII (``YYYY-MM-DDTHHMMSSZ[-n]``, see `snapshots.py`), which
    sorts chronologically.  Value: JSON of `SnapshotRecord` (small, rare, and meant to be
    read by people debugging a store).
    Invariant: the root tree is in ``objects`` before the record is written.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import NamedTuple

FORMAT_VERSION = 1
"""Version of the store layout (pack format, table layouts).  Opening refuses others."""

T_META = "meta"
T_OBJECTS = "objects"
T_PACKS = "packs"
T_SNAPSHOTS = "snapshots"
ALL_TABLES = (T_META, T_OBJECTS, T_PACKS, T_SNAPSHOTS)

META_FORMAT_VERSION = b"format_version"  # value: >I
META_STORE_ID = b"store_id"  # value: ASCII (32 hex digits unless given at creation)
META_CHUNKER_IDENTITY = b"chunker_identity"  # value: UTF-8, ChunkerParams.identity
META_CREATED_NS = b"created_ns"  # value: >q, UTC ns
META_TOTALS = b"totals"  # value: >QQQ object count, stored bytes, raw bytes (see Totals)

ID_SIZE = 16
PACK_ID_SIZE = 16


class ObjectType(IntEnum):
    """Kind of an object, stored in the pack record and in the index."""

    CHUNK = 1  # a piece of file content
    TREE = 2  # an encoded directory (tree.py)


_OBJECT = struct.Struct(">16sQIIB")
_PACK = struct.Struct(">QIq")
_TOTALS = struct.Struct(">QQQ")


class ObjectLocation(NamedTuple):
    """Where an object lives: value of the ``objects`` table."""

    pack_id: bytes
    offset: int  # of the record header inside the pack file
    stored_length: int  # payload bytes (compressed blob)
    raw_length: int  # bytes after decompression
    type: int

    def encode(self) -> bytes:
        return _OBJECT.pack(*self)

    @classmethod
    def decode(cls, value: bytes) -> ObjectLocation:
        return cls._make(_OBJECT.unpack(value))


class PackInfo(NamedTuple):
    """Value of the ``packs`` table."""

    size: int
    records: int
    sealed_ns: int

    def encode(self) -> bytes:
        return _PACK.pack(*self)

    @classmethod
    def decode(cls, value: bytes) -> PackInfo:
        return cls._make(_PACK.unpack(value))


class Totals(NamedTuple):
    """Running totals over ``objects``, updated in the same transaction as the entries.

    Kept so that `Store.stats` is O(1) on a million-object index; `verify` recomputes them.
    """

    objects: int = 0
    stored_bytes: int = 0
    raw_bytes: int = 0

    def encode(self) -> bytes:
        return _TOTALS.pack(*self)

    @classmethod
    def decode(cls, value: bytes | None) -> Totals:
        return cls() if value is None else cls._make(_TOTALS.unpack(value))


def encode_u32(value: int) -> bytes:
    return struct.pack(">I", value)


def decode_u32(value: bytes) -> int:
    return int(struct.unpack(">I", value)[0])


def encode_i64(value: int) -> bytes:
    return struct.pack(">q", value)


def decode_i64(value: bytes) -> int:
    return int(struct.unpack(">q", value)[0])
