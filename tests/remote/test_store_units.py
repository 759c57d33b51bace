"""Unit tests below HTTP: names, record formats, the store's rules, the token table."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from remote import auth, names, objfile
from remote.backend import BAD_FRAME, CREATED, EXISTS, HASH_MISMATCH
from remote.frames import make_record
from remote.hashing import header_value, hexdigest, parse_header
from remote.nsindex import NamespaceIndex
from remote.store import DiskStore


@pytest.mark.parametrize("name", ["a", "tool01", "Tool-01.b_c", "x" * 64, "a.b"])
def test_valid_namespaces(name: str) -> None:
    assert names.is_namespace(name)


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".a", "a.", "-a", "a/b", "a\\b", "x" * 65, "CON", "nul.txt", "a b"]
)
def test_invalid_namespaces(name: str) -> None:
    assert not names.is_namespace(name)


def test_ref_filenames_round_trip_and_keep_case() -> None:
    for name in ("Snap", "snap", "CON", "2024-05-01T12.00.00Z"):
        assert names.ref_name_from_filename(names.ref_filename(name)) == name
    assert names.ref_filename("Snap") != names.ref_filename("snap")
    assert names.ref_name_from_filename("zz.tmp") is None
    assert names.ref_name_from_filename("2e2e") is None  # ".."


def test_hash_header_parsing() -> None:
    h = hexdigest(b"x")
    assert parse_header(header_value(h)) == h
    assert parse_header(header_value(h).upper().replace("XXH3", "xxh3")) == h
    for bad in (None, "", h, f"md5:{h}", f"xxh3-128:{h}0"):
        assert parse_header(bad) is None


def test_record_detects_every_kind_of_damage(tmp_path: Path) -> None:
    tmp = objfile.write_bytes(tmp_path, b"hello world")
    assert objfile.read_verified(tmp) == (b"hello world", hexdigest(b"hello world"))
    assert objfile.verify_file(tmp) is None
    raw = tmp.read_bytes()
    cases = {
        "flip": raw[:-1] + bytes([raw[-1] ^ 1]),
        "truncate": raw[:-1],
        "extend": raw + b"!",
        "magic": b"X" + raw[1:],
        "empty": b"",
    }
    for what, content in cases.items():
        tmp.write_bytes(content)
        assert objfile.verify_file(tmp) is not None, what
        with pytest.raises(objfile.CorruptRecord):
            objfile.read_verified(tmp)


def test_receive_removes_temp_on_mismatch_and_short_body(tmp_path: Path) -> None:
    data = b"abc" * 1000
    pieces = iter([data[:100], data[100:]])
    with pytest.raises(objfile.BodyMismatch):
        objfile.receive(tmp_path, lambda n: next(pieces), len(data), hexdigest(b"other"))
    with pytest.raises(objfile.ShortBody):
        objfile.receive(tmp_path, lambda n: b"", 10, hexdigest(b"x" * 10))
    assert list(tmp_path.iterdir()) == []


def test_first_upload_of_a_content_wins_and_ids_never_remap(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    store.prepare()
    plain = b"original" * 100
    id, digest, frame = make_record(plain)
    first = store.accept("ns", id, digest, frame)
    assert first.status == CREATED and first.row == (id, digest, len(frame))
    store.commit("ns", [first])
    raw = b"\x00" + struct.pack("<I", len(plain)) + plain  # same content, not compressed
    again = store.accept("ns", id, digest, raw)
    assert again.status == EXISTS and again.row is None
    assert store.read_object("ns", id) == (frame, digest)
    other = store.accept("other", id, digest, raw)
    assert other.status == CREATED and other.staged is None  # mapped to the one blob
    store.commit("other", [other])
    assert store.pool.read(digest)[1] == frame
    assert list(store.tmp_dir.iterdir()) == []


def test_accept_checks_frame_and_both_hashes(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    store.prepare()
    id, digest, frame = make_record(b"abc" * 50)
    other_id, other_digest, _ = make_record(b"xyz")
    assert store.accept("ns", other_id, digest, frame).status == HASH_MISMATCH
    assert store.accept("ns", id, other_digest, frame).status == HASH_MISMATCH
    assert store.accept("ns", id, digest, frame[:-1]).status == BAD_FRAME
    assert not any(store.pool.root.rglob("*"))


def test_index_logs_every_mapping_for_replication(tmp_path: Path) -> None:
    index = NamespaceIndex(tmp_path / "i.sqlite")
    index.add_many([("a" * 32, "1" * 64, 10), ("b" * 32, "2" * 64, 20)])
    index.add_many([("c" * 32, "3" * 64, 30)])
    assert index.max_seq() == 3
    assert index.changes(1, 3, 10) == [(2, "b" * 32, "2" * 64), (3, "c" * 32, "3" * 64)]
    assert index.changes(0, 3, 1) == [(1, "a" * 32, "1" * 64)]
    assert index.stats() == (3, 60)
    assert index.list("a" * 32, 1) == (["b" * 32], True)
    index.close()


def test_prepare_drops_crash_leftovers(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    store.prepare()
    (store.tmp_dir / "dead.tmp").write_bytes(b"partial")
    store.prepare()
    assert list(store.tmp_dir.iterdir()) == []


def test_tokens_by_hash_and_scope(tmp_path: Path) -> None:
    import hashlib

    secret = "s" * 24
    path = tmp_path / "t.json"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    doc = {"tokens": {f"sha256:{digest}": {"role": "tool", "namespaces": ["Tool01"]}}}
    path.write_text(json.dumps(doc))
    table = auth.TokenTable(path)
    grant = table.lookup(secret)
    assert grant is not None and not grant.is_admin
    assert grant.reaches("tool01") and grant.reaches("TOOL01") and not grant.reaches("tool02")
    assert table.lookup("sha256:" + hashlib.sha256(secret.encode()).hexdigest()) is None
