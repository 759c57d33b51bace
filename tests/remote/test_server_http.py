"""The HTTP contract of dpmsfs-server /v2, spoken raw against a real server process."""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from remote.frames import inspect_frame, make_record
from remote.hashing import header_value
from tests.remote.rawhttp import connect, request, send
from tests.remote.serverproc import (
    ADMIN,
    NS_A,
    NS_B,
    REPLICATE,
    TOOL_A,
    TOOL_B,
    ServerProcess,
    key_of,
)

RECORD = struct.Struct(">16s32sI")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def put_headers(token: str, body: bytes) -> dict[str, str]:
    return {**auth(token), "X-Content-Hash": header_value(key_of(body))}


def record() -> tuple[str, str, bytes]:
    return make_record(secrets.token_bytes(300) * 2)


def upload_body(*records: tuple[str, str, bytes]) -> bytes:
    return b"".join(
        RECORD.pack(bytes.fromhex(i), bytes.fromhex(d), len(f)) + f for i, d, f in records
    )


def upload(url: str, ns: str, token: str, *records: tuple[str, str, bytes]) -> list[str]:
    a = request(url, "POST", f"/v2/{ns}/objects:upload", auth(token), upload_body(*records))
    assert a.status == 200, a.body
    return [r["status"] for r in a.json()["results"]]


def missing(url: str, ns: str, token: str, objects: list[tuple[str, str | None]]) -> list[str]:
    body = json.dumps({"objects": [{"id": i, "sha256": d} for i, d in objects]}).encode()
    a = request(url, "POST", f"/v2/{ns}/objects:missing", auth(token), body)
    assert a.status == 200, a.body
    result: list[str] = a.json()["missing"]
    return result


def assert_json_error(answer_body: bytes, code: str | None = None) -> None:
    doc = json.loads(answer_body)
    assert set(doc) == {"error", "message"}
    if code is not None:
        assert doc["error"] == code


def test_health_needs_no_token(shared_server: ServerProcess) -> None:
    a = request(shared_server.url, "GET", "/v2/health")
    doc = a.json()
    assert a.status == 200 and doc["status"] == "ok" and doc["server"] == "dpmsfs-server/0.2"
    assert len(doc["server_id"]) == 32 and doc["peer"] is None
    assert request(shared_server.url, "GET", "/v2/health").json()["server_id"] == doc["server_id"]


def test_upload_get_download_round_trip(shared_server: ServerProcess) -> None:
    url = shared_server.url
    id, digest, frame = record()
    assert upload(url, NS_A, TOOL_A, (id, digest, frame)) == ["created"]
    assert upload(url, NS_A, TOOL_A, (id, digest, frame)) == ["exists"]
    got = request(url, "GET", f"/v2/{NS_A}/objects/{id}", auth(TOOL_A))
    assert got.status == 200 and got.body == frame
    assert got.headers["x-content-sha256"] == digest
    absent = record()[0]
    body = json.dumps({"ids": [absent, id]}).encode()
    a = request(url, "POST", f"/v2/{NS_A}/objects:download", auth(TOOL_A), body)
    assert a.status == 200
    rid, rsha, n = RECORD.unpack_from(a.body, 0)
    assert rid.hex() == absent and n == 0xFFFFFFFF
    rid, rsha, n = RECORD.unpack_from(a.body, RECORD.size)
    assert rid.hex() == id and rsha.hex() == digest and n == len(frame)
    assert a.body[2 * RECORD.size :] == frame


def test_namespaces_are_case_insensitive(shared_server: ServerProcess) -> None:
    id, digest, frame = record()
    assert upload(shared_server.url, NS_A.upper(), TOOL_A, (id, digest, frame)) == ["created"]
    lower = f"/v2/{NS_A}/objects/{id}"
    assert request(shared_server.url, "GET", lower, auth(TOOL_A)).body == frame


def test_wrong_hashes_and_bad_frames_reject_that_record_only(shared_server: ServerProcess) -> None:
    url, ns = shared_server.url, "hash-" + secrets.token_hex(4)
    good, other = record(), record()
    statuses = upload(
        url,
        ns,
        ADMIN,
        (other[0], good[1], good[2]),  # id of another content
        (good[0], other[1], good[2]),  # sha256 of another content
        (other[0], other[1], b"\x01\x05\x00\x00\x00zzzzz"),  # zstd flag, not zstd
        (other[0], other[1], b"\x09"),  # truncated header
        good,
    )
    assert statuses == ["hash_mismatch", "hash_mismatch", "bad_frame", "bad_frame", "created"]
    assert missing(url, ns, ADMIN, [(good[0], None), (other[0], None)]) == [other[0]]
    assert not list((shared_server.data / "tmp").iterdir())


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\x00" * 10, "bad_record"),  # shorter than a record header
        (RECORD.pack(b"\x00" * 16, b"\x00" * 32, 100) + b"short", "bad_record"),
    ],
)
def test_malformed_upload_bodies(shared_server: ServerProcess, body: bytes, code: str) -> None:
    a = request(shared_server.url, "POST", f"/v2/{NS_A}/objects:upload", auth(TOOL_A), body)
    assert a.status == 400
    assert_json_error(a.body, code)


def test_oversize_frame_in_upload_is_413(shared_server: ServerProcess) -> None:
    big = make_record(secrets.token_bytes(65536 + 100))  # random: frame stays raw, > limit
    conn = connect(shared_server.url)
    try:
        a = send(conn, "POST", f"/v2/{NS_A}/objects:upload", auth(TOOL_A), upload_body(big))
        assert a.status == 413
        assert_json_error(a.body, "too_large")
        assert send(conn, "GET", "/v2/health").status == 200  # same connection
    finally:
        conn.close()
    assert missing(shared_server.url, NS_A, TOOL_A, [(big[0], big[1])]) == [big[0]]
    assert not list((shared_server.data / "tmp").iterdir())


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, 401),
        ({"Authorization": f"Basic {TOOL_A}"}, 401),
        ({"Authorization": "Bearer "}, 401),
        (auth(TOOL_B), 403),
        (auth(TOOL_A), 200),
        (auth(ADMIN), 200),
        (auth(REPLICATE), 200),
    ],
)
def test_auth(shared_server: ServerProcess, headers: dict[str, str], status: int) -> None:
    a = request(shared_server.url, "GET", f"/v2/{NS_A}/stats", headers)
    assert a.status == status
    if status == 401:
        assert_json_error(a.body, "unauthorized")
        assert a.headers["www-authenticate"] == "Bearer"
    if status == 403:
        assert_json_error(a.body, "forbidden")


# (token, may read/write NS_A, may delete in NS_A, may list namespaces)
MATRIX = [
    (TOOL_A, True, False, False),
    (TOOL_B, False, False, False),
    (ADMIN, True, True, True),
    (REPLICATE, True, False, True),
]


@pytest.mark.parametrize(("token", "rw", "delete", "list_ns"), MATRIX)
def test_permission_matrix(
    shared_server: ServerProcess, token: str, rw: bool, delete: bool, list_ns: bool
) -> None:
    url = shared_server.url
    rec = record()
    upload(url, NS_A, ADMIN, rec)
    ref = "perm-" + secrets.token_hex(4)
    ok_rw = 200 if rw else 403
    body = upload_body(record())
    assert request(url, "POST", f"/v2/{NS_A}/objects:upload", auth(token), body).status == ok_rw
    assert request(url, "GET", f"/v2/{NS_A}/objects/{rec[0]}", auth(token)).status == ok_rw
    assert request(url, "GET", f"/v2/{NS_A}/objects", auth(token)).status == ok_rw
    assert request(url, "GET", f"/v2/{NS_A}/refs", auth(token)).status == ok_rw
    put = request(url, "PUT", f"/v2/{NS_A}/refs/{ref}", put_headers(token, b"r"), b"r")
    assert put.status == (201 if rw else 403)
    replace = f"/v2/{NS_A}/refs/{ref}?replace=1"
    assert request(url, "PUT", replace, put_headers(token, b"s"), b"s").status == (
        200 if delete else 403
    )
    assert request(url, "DELETE", f"/v2/{NS_A}/objects/{rec[0]}", auth(token)).status == (
        200 if delete else 403
    )
    assert request(url, "GET", "/v2/namespaces", auth(token)).status == (200 if list_ns else 403)
    assert request(url, "GET", "/v2/replication", auth(token)).status == (200 if list_ns else 403)


KEY = "0123456789abcdef0123456789abcdef"
TRAVERSALS = [
    "/v2/../objects/" + KEY,
    "/v2/%2e%2e/objects/" + KEY,
    "/v2/%2E%2E/objects/" + KEY,
    "/v2/./objects/" + KEY,
    "/v2/.toola/objects/" + KEY,
    "/v2/toola./objects/" + KEY,
    "/v2/CON/objects/" + KEY,
    "/v2/nul.txt/objects/" + KEY,
    "/v2/" + "a" * 65 + "/objects/" + KEY,
    "/v2/toola/objects/..",
    "/v2/toola/objects/%2e%2e",
    "/v2/toola/objects/..%2f..%2ftokens.json",
    "/v2/toola/objects/..%5c..%5ctokens.json",
    "/v2/toola/objects/../../../tokens.json",
    "/v2/toola/objects//etc/passwd",
    "/v2/toola/objects/%2fetc%2fpasswd",
    "/v2/toola/objects/C:%5cWindows%5cwin.ini",
    "/v2/toola/objects/" + KEY.upper(),
    "/v2/toola/objects/" + KEY[:-1],
    "/v2/toola/objects/" + KEY + "0",
    "/v2/toola/objects/" + "f" * 4000,
    "/v2/toola/objects/" + "g" * 32,
    "/v2/toola/objects/" + KEY + "%00",
    "/v2/toola/refs/..",
    "/v2/toola/refs/%2e%2e",
    "/v2/toola/refs/.hidden",
    "/v2/toola/refs/a%2fb",
    "/v2/toola/refs/" + "r" * 101,
    "/v2/toola%2fobjects:upload",
    "/v2/toola/objects%3aupload",
    "http://evil/v2/toola/objects/" + KEY,
    "/v1/toola/objects/" + KEY,
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_rejected(shared_server: ServerProcess, path: str) -> None:
    body = b"attack"
    headers = {**auth(ADMIN), "X-Content-Hash": header_value(key_of(body))}
    for method in ("PUT", "GET", "DELETE", "POST"):
        with_body = method in ("PUT", "POST")
        a = request(shared_server.url, method, path, headers, body if with_body else None)
        assert a.status in (400, 403, 404, 405), (method, path, a.status)
        assert_json_error(a.body)
    assert_store_contains_only_records(shared_server.data)


def assert_store_contains_only_records(data: Path) -> None:
    """Nothing escaped: every file is tokens, the server id, a blob, an index, a ref."""
    for root, _dirs, files in os.walk(data):
        rel = Path(root).relative_to(data)
        for name in files:
            parts = rel.parts
            if parts == () and name in ("tokens.json", "server_id", "replication.json", "lock"):
                continue
            assert parts[:1] in (("ns",), ("pool",), ("quarantine",)), rel / name
            if parts[:1] == ("ns",):
                assert len(parts) in (2, 3), rel / name
                if len(parts) == 2:
                    assert name.startswith("index.sqlite"), rel / name
                else:
                    assert parts[2] == "refs", rel / name
            if parts[:1] == ("pool",):
                assert len(parts) == 3 and len(name) == 64, rel / name
    assert sorted(p.name for p in data.parent.iterdir() if not p.name.startswith("data")) == [
        "tokens.json"
    ]


def test_malformed_missing_requests(shared_server: ServerProcess) -> None:
    url, path = shared_server.url, f"/v2/{NS_A}/objects:missing"
    for body, code in [
        (b"{not json", "bad_json"),
        (b'{"keys": []}', "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'{"objects": [1]}', "bad_json"),
        (b'{"objects": [{"id": "../../etc/passwd"}]}', "bad_id"),
        (b'{"objects": [{"id": "' + KEY.encode() + b'", "sha256": "../x"}]}', "bad_digest"),
        (
            b'{"objects": [{"id": "' + KEY.encode() + b'", "sha256": "' + b"A" * 64 + b'"}]}',
            "bad_digest",
        ),
        (b"\xff\xfe", "bad_json"),
    ]:
        a = request(url, "POST", path, auth(TOOL_A), body)
        assert a.status == 400, body
        assert_json_error(a.body, code)
    assert request(url, "POST", path, auth(TOOL_A), b'{"objects": []}').json() == {"missing": []}
    too_many = json.dumps({"objects": [{"id": KEY}] * 10_001}).encode()
    assert request(url, "POST", path, auth(TOOL_A), too_many).status == 413


def test_malformed_download_requests(shared_server: ServerProcess) -> None:
    url, path = shared_server.url, f"/v2/{NS_A}/objects:download"
    for body, status in [
        (b"{", 400),
        (b'{"ids": "x"}', 400),
        (b'{"ids": ["../x"]}', 400),
        (json.dumps({"ids": [KEY] * 1001}).encode(), 413),
    ]:
        a = request(url, "POST", path, auth(TOOL_A), body)
        assert a.status == status, body
        assert_json_error(a.body)


def test_missing_content_length_is_411(shared_server: ServerProcess) -> None:
    body = upload_body(record())
    path = f"/v2/{NS_A}/objects:upload"
    a = request(shared_server.url, "POST", path, auth(TOOL_A), None, length=False)
    assert a.status == 411
    assert_json_error(a.body, "length_required")
    chunked = auth(TOOL_A) | {"Transfer-Encoding": "chunked"}
    framed = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    a = request(shared_server.url, "POST", path, chunked, framed, False)
    assert a.status == 411
    assert_json_error(a.body, "length_required")


def test_negative_content_length_is_refused(shared_server: ServerProcess) -> None:
    bad = auth(TOOL_A) | {"Content-Length": "-5"}
    try:
        a = request(shared_server.url, "POST", f"/v2/{NS_A}/objects:upload", bad, None, False)
    except (ConnectionError, OSError):
        return  # the HTTP parser may drop such a request outright
    assert a.status == 400


def test_oversized_ref_is_413_and_connection_stays_usable(shared_server: ServerProcess) -> None:
    data = secrets.token_bytes((1 << 20) + 1)
    path = f"/v2/{NS_A}/refs/big-{secrets.token_hex(4)}"
    conn = connect(shared_server.url)
    try:
        a = send(conn, "PUT", path, put_headers(TOOL_A, data), data)
        assert a.status == 413
        assert_json_error(a.body, "too_large")
        assert send(conn, "GET", "/v2/health").status == 200  # same connection
    finally:
        conn.close()
    assert request(shared_server.url, "GET", path, auth(TOOL_A)).status == 404


def test_unknown_paths_and_methods(shared_server: ServerProcess) -> None:
    url = shared_server.url
    assert request(url, "GET", "/", auth(TOOL_A)).status == 404
    assert request(url, "GET", f"/v2/{NS_A}/nothing", auth(TOOL_A)).status == 404
    a = request(url, "POST", f"/v2/{NS_A}/objects/{KEY}", auth(TOOL_A), b"")
    assert a.status == 405 and "allow" in a.headers
    assert_json_error(a.body)
    a = request(url, "GET", f"/v2/{NS_A}/objects:upload", auth(TOOL_A))
    assert a.status == 405


def test_garbage_request_does_not_crash_server(shared_server: ServerProcess) -> None:
    parts = urlsplit(shared_server.url)
    assert parts.hostname is not None and parts.port is not None
    for garbage in [b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\x00", b"GET /v2/health\r\n"]:
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as s:
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
    assert request(shared_server.url, "GET", "/v2/health").status == 200


def test_refs_are_append_only_for_tools(shared_server: ServerProcess) -> None:
    url = shared_server.url
    name = "snapshot.2026-12-02T190000Z-" + secrets.token_hex(4)
    path = f"/v2/{NS_A}/refs/{name}"
    one, two = b'{"root": "1"}', b'{"root": "2"}'
    assert request(url, "PUT", path, put_headers(TOOL_A, one), one).status == 201
    assert request(url, "PUT", path, put_headers(TOOL_A, one), one).status == 200
    a = request(url, "PUT", path, put_headers(TOOL_A, two), two)
    assert a.status == 409
    assert_json_error(a.body, "conflict")
    assert request(url, "GET", path, auth(TOOL_A)).body == one
    assert name in request(url, "GET", f"/v2/{NS_A}/refs", auth(TOOL_A)).json()["refs"]
    assert request(url, "DELETE", path, auth(TOOL_A)).status == 403
    replace = f"{path}?replace=1"
    assert request(url, "PUT", replace, put_headers(TOOL_A, two), two).status == 403
    assert request(url, "PUT", replace, put_headers(ADMIN, two), two).status == 200
    assert request(url, "GET", path, auth(TOOL_A)).body == two
    assert request(url, "DELETE", path, auth(ADMIN)).status == 200
    assert request(url, "GET", path, auth(TOOL_A)).status == 404


def test_ref_hash_header_is_checked(shared_server: ServerProcess) -> None:
    url, path = shared_server.url, f"/v2/{NS_A}/refs/h-{secrets.token_hex(4)}"
    lying = {**auth(TOOL_A), "X-Content-Hash": header_value(key_of(b"other"))}
    a = request(url, "PUT", path, lying, b"body")
    assert a.status == 422
    assert_json_error(a.body, "hash_mismatch")
    for value in ("", "sha256:" + "0" * 32, "xxh3-128:abc"):
        a = request(url, "PUT", path, {**auth(TOOL_A), "X-Content-Hash": value}, b"body")
        assert a.status == 400
        assert_json_error(a.body, "bad_hash_header")
    assert request(url, "GET", path, auth(TOOL_A)).status == 404
    assert not list((shared_server.data / "tmp").iterdir())


def test_ref_names_keep_their_case(shared_server: ServerProcess) -> None:
    url = shared_server.url
    suffix = secrets.token_hex(4)
    for name in (f"Snap-{suffix}", f"snap-{suffix}", "CON"):
        body = name.encode()
        path = f"/v2/{NS_B}/refs/{name}"
        assert request(url, "PUT", path, put_headers(TOOL_B, body), body).status in (200, 201)
        assert request(url, "GET", path, auth(TOOL_B)).body == body
    refs = request(url, "GET", f"/v2/{NS_B}/refs", auth(TOOL_B)).json()["refs"]
    assert {f"Snap-{suffix}", f"snap-{suffix}", "CON"} <= set(refs)


def test_listing_pages_in_id_order_and_stats(shared_server: ServerProcess) -> None:
    url, ns = shared_server.url, "list-" + secrets.token_hex(4)
    records = [make_record(secrets.token_bytes(100 + i)) for i in range(7)]
    assert upload(url, ns, ADMIN, *records) == ["created"] * 7
    seen: list[str] = []
    after = ""
    while True:
        page = request(url, "GET", f"/v2/{ns}/objects?after={after}&limit=3", auth(ADMIN)).json()
        seen += page["keys"]
        if not page["more"]:
            break
        after = page["keys"][-1]
    assert seen == sorted(r[0] for r in records)
    stats = request(url, "GET", f"/v2/{ns}/stats", auth(ADMIN)).json()
    assert stats == {"objects": 7, "bytes": sum(len(r[2]) for r in records), "refs": 0}
    for bad in ("limit=0", "limit=x", "limit=10001", "after=../x"):
        assert request(url, "GET", f"/v2/{ns}/objects?{bad}", auth(ADMIN)).status == 400
    assert ns in request(url, "GET", "/v2/namespaces", auth(ADMIN)).json()["namespaces"]


def test_claim_by_digest_moves_no_bytes_and_first_compression_wins(
    shared_server: ServerProcess,
) -> None:
    url = shared_server.url
    plain = b"build binary shared by every tool " * 1500
    id, digest, frame = make_record(plain)
    ns_x, ns_y = "cx-" + secrets.token_hex(4), "cy-" + secrets.token_hex(4)
    assert upload(url, ns_x, ADMIN, (id, digest, frame)) == ["created"]
    assert missing(url, ns_y, ADMIN, [(id, None)]) == [id]
    assert missing(url, ns_y, ADMIN, [(id, digest)]) == []
    assert request(url, "GET", f"/v2/{ns_y}/objects/{id}", auth(ADMIN)).body == frame
    # Another tool uploading the same content with another compression stores nothing new.
    ns_z = "cz-" + secrets.token_hex(4)
    raw = b"\x00" + struct.pack("<I", len(plain)) + plain
    assert inspect_frame(raw).sha256 == digest and raw != frame
    assert upload(url, ns_z, ADMIN, (id, digest, raw)) == ["created"]
    assert request(url, "GET", f"/v2/{ns_z}/objects/{id}", auth(ADMIN)).body == frame
