"""Unit tests below HTTP: names, record format, token table, and a full disk (in-process)."""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from remote import auth, names, objfile
from remote.hashing import header_value, hexdigest, parse_header
from remote.server import ApiServer, make_server
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


def test_existing_sound_object_is_never_overwritten(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    store.prepare()
    key = hexdigest(b"original")
    assert store.commit_object("ns", key, objfile.write_bytes(store.tmp_dir, b"original"))
    assert not store.commit_object("ns", key, objfile.write_bytes(store.tmp_dir, b"garbage"))
    assert store.read_object("ns", key) == (b"original", key)
    assert list(store.tmp_dir.iterdir()) == []


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


@pytest.fixture
def inprocess(tmp_path: Path) -> Iterator[tuple[ApiServer, str]]:
    token = "t" * 20
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": {token: {"role": "tool", "namespaces": "*"}}}))
    store = DiskStore(tmp_path / "data")
    store.prepare()
    httpd = make_server(("127.0.0.1", 0), store, auth.TokenTable(tokens))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield httpd, token
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_disk_full_gives_507_and_no_partial_file(
    inprocess: tuple[ApiServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    httpd, token = inprocess

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(objfile.os, "fsync", full)
    data = b"x" * 5000
    key = hexdigest(data)
    with requests.Session() as s:
        r = s.put(
            f"{httpd.url}/v1/ns1/objects/{key}",
            data=data,
            headers={"Authorization": f"Bearer {token}", "X-Content-Hash": header_value(key)},
            timeout=10,
        )
        assert r.status_code == 507
        assert r.json()["error"] == "insufficient_storage"
        monkeypatch.undo()
        assert s.get(f"{httpd.url}/v1/health", timeout=10).status_code == 200
    store = httpd.config.store
    assert list(store.tmp_dir.iterdir()) == []
    assert not store.object_path("ns1", key).exists()
