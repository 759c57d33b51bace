"""Crash consistency and server-side integrity, with real server processes.

- kill -9 in the middle of an upload leaves no visible object, and the restart drops the
  temp file;
- a corrupt object on disk is reported missing (`?verify=1`), refused on GET, and found by
  `dpmsfs-server verify`, which moves it to quarantine so tools re-send it.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from remote.hashing import header_value
from remote.http_backend import HttpBackend
from remote.objfile import HEADER_SIZE
from remote.retry import NO_RETRY, Retrier
from tests.remote.rawhttp import request
from tests.remote.serverproc import NS_A, REPO, TOOL_A, ServerProcess, key_of, server_cmd


def backend(server: ServerProcess, verify_missing: bool = True) -> HttpBackend:
    return HttpBackend(
        [server.url], NS_A, TOOL_A, retrier=Retrier(NO_RETRY), verify_missing=verify_missing
    )


def object_file(server: ServerProcess, key: str) -> Path:
    return server.data / "ns" / NS_A / "objects" / key[:2] / key


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_kill_9_during_put_leaves_no_partial_object(fresh_server: ServerProcess) -> None:
    body = secrets.token_bytes(8 << 20)
    key = key_of(body)
    parts = urlsplit(fresh_server.url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    try:
        head = (
            f"PUT /v1/{NS_A}/objects/{key} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOOL_A}\r\nX-Content-Hash: {header_value(key)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body[: len(body) // 2])
        tmp_dir = fresh_server.data / "tmp"
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size > HEADER_SIZE for p in tmp_dir.iterdir()):
            assert time.monotonic() < deadline, "upload never reached the server's disk"
            time.sleep(0.01)
        fresh_server.kill()
    finally:
        sock.close()

    assert not object_file(fresh_server, key).exists()
    fresh_server.start()  # same data directory
    assert list((fresh_server.data / "tmp").iterdir()) == []
    with backend(fresh_server) as b:
        assert not b.exists(key)
        assert b.missing([key]) == [key]
        b.save(key, body)
        assert b.load(key) == body


def test_corrupt_object_reported_missing_with_verify(fresh_server: ServerProcess) -> None:
    data = secrets.token_bytes(4096)
    key = key_of(data)
    with backend(fresh_server, verify_missing=False) as cheap, backend(fresh_server) as strict:
        cheap.save(key, data)
        flip_byte(object_file(fresh_server, key), HEADER_SIZE + 100)  # bit rot, same size
        assert cheap.missing([key]) == []  # the header check cannot see it...
        assert strict.missing([key]) == [key]  # ...the verified check does, and quarantines
        assert not object_file(fresh_server, key).exists()
        assert cheap.missing([key]) == [key]
        strict.save(key, data)  # the tool re-sends; the store is healed
        assert strict.load(key) == data
    assert len(list((fresh_server.data / "quarantine" / NS_A).iterdir())) == 1


def test_corrupt_object_is_not_served(fresh_server: ServerProcess) -> None:
    data = secrets.token_bytes(4096)
    key = key_of(data)
    with backend(fresh_server) as b:
        b.save(key, data)
        flip_byte(object_file(fresh_server, key), HEADER_SIZE)
        a = request(
            fresh_server.url,
            "GET",
            f"/v1/{NS_A}/objects/{key}",
            {"Authorization": f"Bearer {TOOL_A}"},
        )
        assert a.status == 404
        assert b.missing([key]) == [key]


def test_truncated_object_is_missing_even_without_verify(fresh_server: ServerProcess) -> None:
    data = secrets.token_bytes(4096)
    key = key_of(data)
    with backend(fresh_server, verify_missing=False) as b:
        b.save(key, data)
        path = object_file(fresh_server, key)
        path.write_bytes(path.read_bytes()[:-10])
        assert b.missing([key]) == [key]
        assert not b.exists(key)


def run_verify(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_cmd("verify", "--data", str(data), *extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_verify_command_quarantines_corrupt_objects(fresh_server: ServerProcess) -> None:
    blobs = [secrets.token_bytes(2000 + i) for i in range(4)]
    with backend(fresh_server, verify_missing=False) as b:
        for d in blobs:
            b.save(key_of(d), d)
        b.put_ref("snap-1", b"{}")
        clean = run_verify(fresh_server.data)
        assert clean.returncode == 0, clean.stderr
        assert "checked 5 records, 0 corrupt" in clean.stdout

        bad = key_of(blobs[2])
        flip_byte(object_file(fresh_server, bad), HEADER_SIZE + 7)
        report_only = run_verify(fresh_server.data, "--no-quarantine")
        assert report_only.returncode == 1
        assert object_file(fresh_server, bad).exists()

        found = run_verify(fresh_server.data, "--namespace", NS_A)
        assert found.returncode == 1
        assert f"corrupt object {NS_A}/{bad}" in found.stdout
        assert "1 corrupt" in found.stdout
        assert not object_file(fresh_server, bad).exists()
        assert b.missing([key_of(d) for d in blobs]) == [bad]  # even the cheap check sees it
        b.save(bad, blobs[2])
    assert run_verify(fresh_server.data).returncode == 0
    quarantined = list((fresh_server.data / "quarantine" / NS_A).iterdir())
    assert [p.name.split(".")[0] for p in quarantined] == [f"object-{bad}"]


def test_verify_rejects_a_non_store_directory(tmp_path: Path) -> None:
    result = run_verify(tmp_path)
    assert result.returncode == 3
    assert "not a dpmsfs-server data directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_stats_after_restart(fresh_server: ServerProcess) -> None:
    with backend(fresh_server) as b:
        b.save(key_of(b"abc"), b"abc")
    fresh_server.stop()
    fresh_server.start()
    with backend(fresh_server) as b:
        assert b.stats() == {"objects": 1, "bytes": 3, "refs": 0}
    assert json.loads((fresh_server.data.parent / "tokens.json").read_text())["tokens"]
