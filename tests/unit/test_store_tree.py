"""Tree encoding: round trip (hypothesis), determinism, rejection of malformed input."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpmsfs.store.errors import TreeFormatError
from dpmsfs.store.tree import EntryType, TreeEntry, decode_tree, encode_tree, find

names = st.binary(min_size=1, max_size=40).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
ids = st.binary(min_size=16, max_size=16)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
xattr_names = st.binary(min_size=1, max_size=20).filter(lambda n: b"\0" not in n)


@st.composite
def entries(draw: st.DrawFn) -> TreeEntry:
    etype = draw(st.sampled_from(list(EntryType)))
    content: tuple[bytes, ...] = ()
    if etype == EntryType.FILE:
        content = tuple(draw(st.lists(ids, max_size=5)))
    elif etype == EntryType.DIR:
        content = (draw(ids),)
    target = b""
    if etype == EntryType.SYMLINK:
        target = draw(st.binary(min_size=1, max_size=60).filter(lambda t: b"\0" not in t))
    xattrs = tuple(
        sorted(draw(st.dictionaries(xattr_names, st.binary(max_size=30), max_size=3)).items())
    )
    return TreeEntry(
        name=draw(names),
        type=etype,
        mode=draw(st.integers(0, 0o7777)),
        uid=draw(u32),
        gid=draw(u32),
        size=draw(u64),
        mtime_ns=draw(st.integers(-(2**63), 2**63 - 1)),
        rdev=draw(u64) if etype in (EntryType.CHARDEV, EntryType.BLOCKDEV) else 0,
        link_key=draw(u64) if etype == EntryType.FILE else 0,
        target=target,
        xattrs=xattrs,
        content=content,
    )


trees = st.lists(entries(), max_size=20, unique_by=lambda e: e.name)


@settings(max_examples=200, deadline=None)
@given(trees)
def test_round_trip_and_determinism(tree: list[TreeEntry]) -> None:
    encoded = encode_tree(tree)
    decoded = decode_tree(encoded)
    assert decoded == sorted(tree, key=lambda e: e.name)
    assert encode_tree(list(reversed(tree))) == encoded  # input order does not matter
    for e in tree:
        assert find(decoded, e.name) == e


@settings(max_examples=300, deadline=None)
@given(trees, st.data())
def test_damaged_trees_raise_only_tree_format_error(
    tree: list[TreeEntry], data: st.DataObject
) -> None:
    encoded = bytearray(encode_tree(tree))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if how == "flip" and encoded:
        pos = data.draw(st.integers(0, len(encoded) - 1))
        encoded[pos] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del encoded[data.draw(st.integers(0, max(0, len(encoded) - 1))) :]
    else:
        encoded += data.draw(st.binary(min_size=1, max_size=10))
    try:
        decoded = decode_tree(bytes(encoded))
    except TreeFormatError:
        return
    for e in decoded:  # whatever survives is still well-formed
        assert e.name not in (b".", b"..") and b"/" not in e.name and b"\0" not in e.name


def _raw_entry(name: bytes) -> bytes:
    head = struct.pack(">HBIIIQqQQIHI", len(name), 1, 0o644, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return head + name


@pytest.mark.parametrize("bad", [b"a/b", b"a\0b", b".", b"..", b""])
def test_crafted_bad_names_are_rejected(bad: bytes) -> None:
    crafted = struct.pack(">4sBI", b"DTRE", 1, 1) + _raw_entry(bad)
    with pytest.raises(TreeFormatError):
        decode_tree(crafted)
    with pytest.raises(TreeFormatError):
        encode_tree([TreeEntry(bad, EntryType.FILE, 0, 0, 0, 0, 0)])


def test_rejects_unsorted_duplicate_and_absurd_counts() -> None:
    header = struct.pack(">4sBI", b"DTRE", 1, 2)
    with pytest.raises(TreeFormatError, match="out of order"):
        decode_tree(header + _raw_entry(b"b") + _raw_entry(b"a"))
    with pytest.raises(TreeFormatError, match="out of order"):
        decode_tree(header + _raw_entry(b"a") + _raw_entry(b"a"))
    with pytest.raises(TreeFormatError, match="claims"):
        decode_tree(struct.pack(">4sBI", b"DTRE", 1, 2**32 - 1))
    with pytest.raises(TreeFormatError, match="version"):
        decode_tree(struct.pack(">4sBI", b"DTRE", 9, 0))
    with pytest.raises(TreeFormatError, match="magic"):
        decode_tree(b"XXXX" + bytes(5))
    with pytest.raises(TreeFormatError, match="duplicate"):
        encode_tree([TreeEntry(b"a", EntryType.FIFO, 0, 0, 0, 0, 0)] * 2)
    with pytest.raises(TreeFormatError, match="subtree"):
        encode_tree([TreeEntry(b"d", EntryType.DIR, 0, 0, 0, 0, 0)])


def test_large_directory_round_trip() -> None:
    rng = random.Random(0)
    tree = [
        TreeEntry(f"file_{i:06d}.dat".encode(), EntryType.FILE, 0o644, 1000, 1000,
                  rng.getrandbits(32), 1_700_000_000 * 10**9 + i,
                  content=(rng.randbytes(16), rng.randbytes(16)))
        for i in range(10_000)
    ]  # fmt: skip
    assert decode_tree(encode_tree(tree)) == tree
