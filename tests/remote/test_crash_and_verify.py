"""Crash consistency and server-side integrity, with real server processes.

- kill -9 in the middle of an upload batch leaves nothing visible, and the restart drops the
  temp files; the client's retry then stores it;
- a corrupt blob on disk is reported missing (every tool mapping it), refused on GET, and
  found by `dpmsfs-server verify`, which moves it to quarantine; a re-upload heals it.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from remote.frames import make_record
from remote.http_backend import HttpBackend
from remote.pool import HEADER_SIZE
from remote.retry import NO_RETRY, Retrier
from tests.remote.rawhttp import request
from tests.remote.serverproc import (
    NS_A,
    NS_B,
    REPO,
    TOOL_A,
    TOOL_B,
    ServerProcess,
    server_cmd,
)

RECORD = struct.Struct(">16s32sI")


def backend(server: ServerProcess, ns: str = NS_A, token: str = TOOL_A) -> HttpBackend:
    return HttpBackend([server.url], ns, token, retrier=Retrier(NO_RETRY))


def blob_file(server: ServerProcess, digest: str) -> Path:
    return server.data / "pool" / digest[:2] / digest[2:4] / digest


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_kill_9_during_upload_leaves_nothing_visible(fresh_server: ServerProcess) -> None:
    records = [make_record(secrets.token_bytes(4 << 20)) for _ in range(3)]
    body = b"".join(
        RECORD.pack(bytes.fromhex(i), bytes.fromhex(d), len(f)) + f for i, d, f in records
    )
    parts = urlsplit(fresh_server.url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    try:
        head = (
            f"POST /v2/{NS_A}/objects:upload HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOOL_A}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body[: len(body) * 2 // 3])  # the first record, part of the second
        deadline = time.monotonic() + 10
        tmp_dir = fresh_server.data / "tmp"
        while not any(p.stat().st_size >= 4 << 20 for p in tmp_dir.iterdir()):
            assert time.monotonic() < deadline, "upload never reached the server's disk"
            time.sleep(0.01)
        fresh_server.kill()  # the first blob is staged, the batch not committed
    finally:
        sock.close()

    fresh_server.start()  # same data directory
    assert list((fresh_server.data / "tmp").iterdir()) == []
    ids = [(i, d) for i, d, _ in records]
    with backend(fresh_server) as b:
        assert b.missing([(i, None) for i, _ in ids]) == [i for i, _ in ids]  # nothing mapped
        assert b.list() == []
        assert b.missing(ids) == [i for i, _ in ids]  # not even claimable: never published
        assert not any(p.is_file() for p in (fresh_server.data / "pool").rglob("*"))
        assert b.upload(records) == {i: "created" for i, _ in ids}
        assert [f for _, f in b.load_many([i for i, _ in ids])] == [r[2] for r in records]
    assert run_verify(fresh_server.data).returncode == 0


def test_corrupt_blob_is_missing_for_every_tool_then_healed(fresh_server: ServerProcess) -> None:
    id, digest, frame = make_record(secrets.token_bytes(4096))
    with backend(fresh_server) as a, backend(fresh_server, NS_B, TOOL_B) as b:
        a.upload([(id, digest, frame)])
        assert b.missing([(id, digest)]) == []  # tool B claims it by digest
        flip_byte(blob_file(fresh_server, digest), HEADER_SIZE + 100)  # bit rot, same size
        assert a.missing([(id, digest)]) == [id]  # re-hashed, found bad, quarantined
        assert not blob_file(fresh_server, digest).exists()
        assert b.missing([(id, digest)]) == [id]
        a.upload([(id, digest, frame)])  # the tool re-sends; the pool is healed for both
        assert b.load(id) == frame
        assert b.missing([(id, None)]) == []
    assert len(list((fresh_server.data / "quarantine" / "pool").iterdir())) == 1


def test_corrupt_blob_is_not_served(fresh_server: ServerProcess) -> None:
    id, digest, frame = make_record(secrets.token_bytes(4096))
    with backend(fresh_server) as b:
        b.upload([(id, digest, frame)])
        flip_byte(blob_file(fresh_server, digest), 10)  # inside the header's digest
        a = request(
            fresh_server.url,
            "GET",
            f"/v2/{NS_A}/objects/{id}",
            {"Authorization": f"Bearer {TOOL_A}"},
        )
        assert a.status == 404
        assert list(b.load_many([id])) == [(id, None)]
        assert b.missing([(id, None)]) == [id]


def test_truncated_blob_is_missing(fresh_server: ServerProcess) -> None:
    id, digest, frame = make_record(secrets.token_bytes(4096))
    with backend(fresh_server) as b:
        b.upload([(id, digest, frame)])
        path = blob_file(fresh_server, digest)
        path.write_bytes(path.read_bytes()[:-10])
        assert b.missing([(id, digest)]) == [id]


def run_verify(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_cmd("verify", "--data", str(data), *extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_verify_command_quarantines_corrupt_blobs(fresh_server: ServerProcess) -> None:
    records = [make_record(secrets.token_bytes(2000 + i)) for i in range(4)]
    with backend(fresh_server) as b:
        b.upload(records)
        b.put_ref("snap-1", b"{}")
        clean = run_verify(fresh_server.data)
        assert clean.returncode == 0, clean.stderr
        assert "checked 4 blobs, 4 mappings, 1 refs: 0 corrupt" in clean.stdout

        bad_id, bad, bad_frame = records[2]
        flip_byte(blob_file(fresh_server, bad), HEADER_SIZE + 7)
        report_only = run_verify(fresh_server.data, "--no-quarantine")
        assert report_only.returncode == 1
        assert blob_file(fresh_server, bad).exists()

        found = run_verify(fresh_server.data, "--namespace", NS_A)
        assert found.returncode == 1
        assert f"corrupt blob {bad}" in found.stdout
        assert f"corrupt mapping {NS_A}/{bad_id}" in found.stdout  # now dangling
        assert not blob_file(fresh_server, bad).exists()
        assert b.missing([(r[0], r[1]) for r in records]) == [bad_id]
        b.upload([records[2]])
        assert b.load(bad_id) == bad_frame
    assert run_verify(fresh_server.data).returncode == 0
    quarantined = list((fresh_server.data / "quarantine" / "pool").iterdir())
    assert [p.name.split(".")[0] for p in quarantined] == [bad]


def test_verify_finds_a_corrupt_ref(fresh_server: ServerProcess) -> None:
    with backend(fresh_server) as b:
        b.put_ref("snapshot.x", b'{"root": "abc"}')
    ref_file = next((fresh_server.data / "ns" / NS_A / "refs").iterdir())
    flip_byte(ref_file, 40)
    result = run_verify(fresh_server.data)
    assert result.returncode == 1 and f"corrupt ref {NS_A}/snapshot.x" in result.stdout
    assert not ref_file.exists()


def test_verify_rejects_a_non_store_directory(tmp_path: Path) -> None:
    result = run_verify(tmp_path)
    assert result.returncode == 3
    assert "not a dpmsfs-server data directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_stats_and_server_id_survive_restart(fresh_server: ServerProcess) -> None:
    record = make_record(b"abc")
    with backend(fresh_server) as b:
        b.upload([record])
        first_id = b.server_id()
    fresh_server.stop()
    fresh_server.start()
    with backend(fresh_server) as b:
        assert b.stats() == {"objects": 1, "bytes": len(record[2]), "refs": 0}
        assert b.server_id() == first_id
    assert json.loads((fresh_server.data.parent / "tokens.json").read_text())["tokens"]


def test_payload_damage_is_caught_by_the_client_reported_and_quarantined(
    fresh_server: ServerProcess,
) -> None:
    """The server sends after cheap header checks only; the client's xxh3 check catches a
    rotted payload, `objects:suspect` makes the server re-check and quarantine it, and the
    object then reads as absent (never as data)."""
    good_id, good_digest, good_frame = make_record(secrets.token_bytes(5000))
    id, digest, frame = make_record(secrets.token_bytes(4096))  # random: a raw frame
    with backend(fresh_server) as b:
        b.upload([(id, digest, frame), (good_id, good_digest, good_frame)])
        flip_byte(blob_file(fresh_server, digest), HEADER_SIZE + 100)  # in the payload
        got = list(b.load_many_plain([good_id, id]))
        assert got[0][0] == good_id and got[0][1] is not None and len(got[0][1]) == 5000
        assert got[1] == (id, None)
        quarantined = list((fresh_server.data / "quarantine" / "pool").iterdir())
        assert [p.name.split(".")[0] for p in quarantined] == [digest]
        assert b.missing([(id, digest)]) == [id]


def test_damaged_lists_quarantined_ids_since_a_cursor(fresh_server: ServerProcess) -> None:
    records = [make_record(secrets.token_bytes(3000 + i)) for i in range(3)]
    with backend(fresh_server) as a, backend(fresh_server, NS_B, TOOL_B) as other:
        a.upload(records)
        other.upload(records[:1])
        assert a.damaged(0)[0] == []
        bad_id, bad_digest, _ = records[0]
        flip_byte(blob_file(fresh_server, bad_digest), HEADER_SIZE + 50)
        assert run_verify(fresh_server.data).returncode == 1
        ids, cursor = a.damaged(0)
        assert ids == [bad_id]
        assert other.damaged(0)[0] == [bad_id]  # every tool mapping the blob hears of it
        assert cursor > 0
        # asked again past the settle window: nothing new
        assert a.damaged(cursor + 20_000_000_000)[0] == []
        a.upload(records[:1])  # healed
        assert a.missing([(bad_id, bad_digest)]) == []
    answer = request(
        fresh_server.url,
        "GET",
        f"/v2/{NS_A}/objects:damaged?after=-1",
        {"Authorization": f"Bearer {TOOL_A}"},
    )
    assert answer.status == 400


def test_single_object_load_reports_payload_damage_and_reads_it_as_absent(
    fresh_server: ServerProcess,
) -> None:
    """`GET objects/<id>` is checked like a download record: a rotted payload is reported
    (`objects:suspect`), quarantined by the server, and then reads as absent."""
    from remote.errors import NotFoundError

    id, digest, frame = make_record(secrets.token_bytes(4096))
    with backend(fresh_server) as b:
        b.upload([(id, digest, frame)])
        flip_byte(blob_file(fresh_server, digest), HEADER_SIZE + 100)  # in the payload
        with pytest.raises(NotFoundError):
            b.load(id)
        quarantined = list((fresh_server.data / "quarantine" / "pool").iterdir())
        assert [p.name.split(".")[0] for p in quarantined] == [digest]
        assert b.missing([(id, digest)]) == [id]
        b.upload([(id, digest, frame)])  # the tool heals it
        assert b.load(id) == frame
