"""The HTTP contract of dpmsfs-server, spoken raw against a real server process."""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from remote.hashing import header_value
from tests.remote.rawhttp import connect, request, send
from tests.remote.serverproc import ADMIN, NS_A, NS_B, TOOL_A, TOOL_B, ServerProcess, key_of


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def put_headers(token: str, body: bytes) -> dict[str, str]:
    return {**auth(token), "X-Content-Hash": header_value(key_of(body))}


def blob() -> bytes:
    return secrets.token_bytes(300)


def assert_json_error(answer_body: bytes, code: str | None = None) -> None:
    doc = json.loads(answer_body)
    assert set(doc) == {"error", "message"}
    if code is not None:
        assert doc["error"] == code


def test_health_needs_no_token(shared_server: ServerProcess) -> None:
    a = request(shared_server.url, "GET", "/v1/health")
    assert a.status == 200 and a.json()["status"] == "ok"


def test_put_get_head_round_trip(shared_server: ServerProcess) -> None:
    data = blob()
    key = key_of(data)
    path = f"/v1/{NS_A}/objects/{key}"
    a = request(shared_server.url, "PUT", path, put_headers(TOOL_A, data), data)
    assert a.status == 201 and a.json()["created"] is True
    again = request(shared_server.url, "PUT", path, put_headers(TOOL_A, data), data)
    assert again.status == 200 and again.json()["created"] is False
    got = request(shared_server.url, "GET", path, auth(TOOL_A))
    assert got.status == 200 and got.body == data
    assert got.headers["x-content-hash"] == header_value(key)
    head = request(shared_server.url, "HEAD", path, auth(TOOL_A))
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(data))


def test_namespaces_are_case_insensitive(shared_server: ServerProcess) -> None:
    data = blob()
    path = f"/v1/{NS_A.upper()}/objects/{key_of(data)}"
    assert request(shared_server.url, "PUT", path, put_headers(TOOL_A, data), data).status == 201
    lower = f"/v1/{NS_A}/objects/{key_of(data)}"
    assert request(shared_server.url, "GET", lower, auth(TOOL_A)).body == data


def test_hash_mismatch_is_422_and_stores_nothing(shared_server: ServerProcess) -> None:
    data = blob()
    path = f"/v1/{NS_A}/objects/{key_of(data)}"
    headers = {**auth(TOOL_A), "X-Content-Hash": header_value(key_of(data + b"x"))}
    a = request(shared_server.url, "PUT", path, headers, data)
    assert a.status == 422
    assert_json_error(a.body, "hash_mismatch")
    assert request(shared_server.url, "HEAD", path, auth(TOOL_A)).status == 404
    assert not list((shared_server.data / "tmp").iterdir())


@pytest.mark.parametrize("value", [None, "", "sha256:" + "0" * 32, "xxh3-128:abc", "xxh3-128:"])
def test_missing_or_malformed_hash_header_is_400(
    shared_server: ServerProcess, value: str | None
) -> None:
    data = blob()
    headers = auth(TOOL_A) | ({} if value is None else {"X-Content-Hash": value})
    a = request(shared_server.url, "PUT", f"/v1/{NS_A}/objects/{key_of(data)}", headers, data)
    assert a.status == 400
    assert_json_error(a.body, "bad_hash_header")


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
    ],
)
def test_auth(shared_server: ServerProcess, headers: dict[str, str], status: int) -> None:
    a = request(shared_server.url, "GET", f"/v1/{NS_A}/stats", headers)
    assert a.status == status
    if status == 401:
        assert_json_error(a.body, "unauthorized")
        assert a.headers["www-authenticate"] == "Bearer"
    if status == 403:
        assert_json_error(a.body, "forbidden")


def test_tool_cannot_write_other_namespace(shared_server: ServerProcess) -> None:
    data = blob()
    path = f"/v1/{NS_B}/objects/{key_of(data)}"
    assert request(shared_server.url, "PUT", path, put_headers(TOOL_A, data), data).status == 403
    assert request(shared_server.url, "HEAD", path, auth(TOOL_B)).status == 404


KEY = "0123456789abcdef0123456789abcdef"
TRAVERSALS = [
    "/v1/../objects/" + KEY,
    "/v1/%2e%2e/objects/" + KEY,
    "/v1/%2E%2E/objects/" + KEY,
    "/v1/./objects/" + KEY,
    "/v1/.toola/objects/" + KEY,
    "/v1/toola./objects/" + KEY,
    "/v1/CON/objects/" + KEY,
    "/v1/nul.txt/objects/" + KEY,
    "/v1/" + "a" * 65 + "/objects/" + KEY,
    "/v1/toola/objects/..",
    "/v1/toola/objects/%2e%2e",
    "/v1/toola/objects/..%2f..%2ftokens.json",
    "/v1/toola/objects/..%5c..%5ctokens.json",
    "/v1/toola/objects/../../../tokens.json",
    "/v1/toola/objects//etc/passwd",
    "/v1/toola/objects/%2fetc%2fpasswd",
    "/v1/toola/objects/C:%5cWindows%5cwin.ini",
    "/v1/toola/objects/" + KEY.upper(),
    "/v1/toola/objects/" + KEY[:-1],
    "/v1/toola/objects/" + KEY + "0",
    "/v1/toola/objects/" + "f" * 4000,
    "/v1/toola/objects/" + "g" * 32,
    "/v1/toola/objects/" + KEY + "%00",
    "/v1/toola/refs/..",
    "/v1/toola/refs/%2e%2e",
    "/v1/toola/refs/.hidden",
    "/v1/toola/refs/a%2fb",
    "/v1/toola/refs/" + "r" * 101,
    "http://evil/v1/toola/objects/" + KEY,
    "/v2/toola/objects/" + KEY,
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_rejected(shared_server: ServerProcess, path: str) -> None:
    body = b"attack"
    headers = {**auth(ADMIN), "X-Content-Hash": header_value(key_of(body))}
    for method in ("PUT", "GET", "DELETE"):
        a = request(shared_server.url, method, path, headers, body if method == "PUT" else None)
        assert a.status in (400, 403, 404), (method, path, a.status)
        assert_json_error(a.body)
    assert_store_contains_only_records(shared_server.data)


def assert_store_contains_only_records(data: Path) -> None:
    """Nothing escaped: every file is tokens, a record in a valid place, or quarantine."""
    for root, _dirs, files in os.walk(data):
        rel = Path(root).relative_to(data)
        for name in files:
            parts = rel.parts
            if parts == () and name in ("tokens.json",):
                continue
            assert parts[:1] in (("ns",), ("quarantine",)), rel / name
            if parts[:1] == ("ns",):
                assert len(parts) in (3, 4) and parts[2] in ("objects", "refs"), rel / name
    assert sorted(p.name for p in data.parent.iterdir() if not p.name.startswith("data")) == [
        "tokens.json"
    ]


def test_malformed_missing_requests(shared_server: ServerProcess) -> None:
    url, path = shared_server.url, f"/v1/{NS_A}/objects:missing"
    for body, code in [
        (b"{not json", "bad_json"),
        (b'{"keys": []}', "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'["../../etc/passwd"]', "bad_key"),
        (b"\xff\xfe", "bad_json"),
    ]:
        a = request(url, "POST", path, auth(TOOL_A), body)
        assert a.status == 400, body
        assert_json_error(a.body, code)
    assert request(url, "POST", path, auth(TOOL_A), b"[]").json() == {"missing": []}


def test_missing_content_length_is_411(shared_server: ServerProcess) -> None:
    data = blob()
    path = f"/v1/{NS_A}/objects/{key_of(data)}"
    a = request(shared_server.url, "PUT", path, put_headers(TOOL_A, data), None, length=False)
    assert a.status == 411
    assert_json_error(a.body, "length_required")
    chunked = put_headers(TOOL_A, data) | {"Transfer-Encoding": "chunked"}
    a = request(shared_server.url, "PUT", path, chunked, b"5\r\nhello\r\n0\r\n\r\n", False)
    assert a.status == 411
    bad = put_headers(TOOL_A, data) | {"Content-Length": "-5"}
    assert request(shared_server.url, "PUT", path, bad, None, length=False).status == 400


def test_oversized_body_is_413_and_connection_stays_usable(shared_server: ServerProcess) -> None:
    data = secrets.token_bytes(65536 + 1)  # the shared server allows 65536
    path = f"/v1/{NS_A}/objects/{key_of(data)}"
    conn = connect(shared_server.url)
    try:
        a = send(conn, "PUT", path, put_headers(TOOL_A, data), data)
        assert a.status == 413
        assert_json_error(a.body, "too_large")
        assert send(conn, "GET", "/v1/health").status == 200  # same connection
    finally:
        conn.close()
    assert request(shared_server.url, "HEAD", path, auth(TOOL_A)).status == 404
    assert not list((shared_server.data / "tmp").iterdir())


def test_unknown_paths_and_methods(shared_server: ServerProcess) -> None:
    url = shared_server.url
    assert request(url, "GET", "/", auth(TOOL_A)).status == 404
    assert request(url, "GET", f"/v1/{NS_A}/nothing", auth(TOOL_A)).status == 404
    a = request(url, "POST", f"/v1/{NS_A}/objects/{KEY}", auth(TOOL_A), b"")
    assert a.status == 405 and "allow" in a.headers
    a = request(url, "PATCH", f"/v1/{NS_A}/objects/{KEY}", auth(TOOL_A), b"")
    assert a.status == 501
    assert_json_error(a.body)


def test_garbage_request_does_not_crash_server(shared_server: ServerProcess) -> None:
    parts = urlsplit(shared_server.url)
    assert parts.hostname is not None and parts.port is not None
    for garbage in [b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\x00", b"GET /v1/health\r\n"]:
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as s:
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
    assert request(shared_server.url, "GET", "/v1/health").status == 200


def test_only_admin_deletes_objects(shared_server: ServerProcess) -> None:
    data = blob()
    path = f"/v1/{NS_A}/objects/{key_of(data)}"
    request(shared_server.url, "PUT", path, put_headers(TOOL_A, data), data)
    a = request(shared_server.url, "DELETE", path, auth(TOOL_A))
    assert a.status == 403
    assert request(shared_server.url, "HEAD", path, auth(TOOL_A)).status == 200
    assert request(shared_server.url, "DELETE", path, auth(ADMIN)).status == 200
    assert request(shared_server.url, "HEAD", path, auth(TOOL_A)).status == 404
    assert request(shared_server.url, "DELETE", path, auth(ADMIN)).status == 404


def test_refs_are_append_only_for_tools(shared_server: ServerProcess) -> None:
    url = shared_server.url
    name = "snap-" + secrets.token_hex(4)
    path = f"/v1/{NS_A}/refs/{name}"
    one, two = b'{"root": "1"}', b'{"root": "2"}'
    assert request(url, "PUT", path, put_headers(TOOL_A, one), one).status == 201
    assert request(url, "PUT", path, put_headers(TOOL_A, one), one).status == 200
    a = request(url, "PUT", path, put_headers(TOOL_A, two), two)
    assert a.status == 409
    assert_json_error(a.body, "conflict")
    assert request(url, "GET", path, auth(TOOL_A)).body == one
    assert name in request(url, "GET", f"/v1/{NS_A}/refs", auth(TOOL_A)).json()["refs"]
    assert request(url, "DELETE", path, auth(TOOL_A)).status == 403
    replace = f"{path}?replace=1"
    assert request(url, "PUT", replace, put_headers(TOOL_A, two), two).status == 403
    assert request(url, "PUT", replace, put_headers(ADMIN, two), two).status == 200
    assert request(url, "GET", path, auth(TOOL_A)).body == two
    assert request(url, "DELETE", path, auth(ADMIN)).status == 200
    assert request(url, "GET", path, auth(TOOL_A)).status == 404


def test_ref_names_keep_their_case(shared_server: ServerProcess) -> None:
    url = shared_server.url
    suffix = secrets.token_hex(4)
    for name in (f"Snap-{suffix}", f"snap-{suffix}", "CON"):
        body = name.encode()
        path = f"/v1/{NS_B}/refs/{name}"
        assert request(url, "PUT", path, put_headers(TOOL_B, body), body).status in (200, 201)
        assert request(url, "GET", path, auth(TOOL_B)).body == body
    refs = request(url, "GET", f"/v1/{NS_B}/refs", auth(TOOL_B)).json()["refs"]
    assert {f"Snap-{suffix}", f"snap-{suffix}", "CON"} <= set(refs)


def test_listing_pages_in_key_order_and_stats(shared_server: ServerProcess) -> None:
    url, ns = shared_server.url, "list-" + secrets.token_hex(4)
    blobs = [secrets.token_bytes(100 + i) for i in range(7)]
    for b in blobs:
        path = f"/v1/{ns}/objects/{key_of(b)}"
        assert request(url, "PUT", path, put_headers(ADMIN, b), b).status == 201
    seen: list[str] = []
    after = ""
    while True:
        page = request(url, "GET", f"/v1/{ns}/objects?after={after}&limit=3", auth(ADMIN)).json()
        seen += page["keys"]
        if not page["more"]:
            break
        after = page["keys"][-1]
    assert seen == sorted(key_of(b) for b in blobs)
    stats = request(url, "GET", f"/v1/{ns}/stats", auth(ADMIN)).json()
    assert stats == {"objects": 7, "bytes": sum(map(len, blobs)), "refs": 0}
    for bad in ("limit=0", "limit=x", "limit=10001", "after=../x"):
        assert request(url, "GET", f"/v1/{ns}/objects?{bad}", auth(ADMIN)).status == 400


def test_missing_reports_absent_keys_in_order(shared_server: ServerProcess) -> None:
    url = shared_server.url
    have = blob()
    request(url, "PUT", f"/v1/{NS_A}/objects/{key_of(have)}", put_headers(TOOL_A, have), have)
    absent = [key_of(blob()) for _ in range(3)]
    keys = [absent[0], key_of(have), absent[1], absent[2]]
    for query in ("", "?verify=1"):
        a = request(
            url,
            "POST",
            f"/v1/{NS_A}/objects:missing{query}",
            auth(TOOL_A),
            json.dumps(keys).encode(),
        )
        assert a.json() == {"missing": absent}
