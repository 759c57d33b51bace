"""HttpBackend against real and deliberately broken servers: failover, deadlines, integrity,
server identity, batching and the bandwidth limit."""

from __future__ import annotations

import json
import secrets
import struct
import time

import pytest
import requests

from remote.errors import (
    DeadlineExceeded,
    IntegrityError,
    PermanentRemoteError,
    TemporaryRemoteError,
)
from remote.frames import make_record
from remote.hashing import header_value
from remote.http_backend import HttpBackend, TokenBucket
from remote.retry import NO_RETRY, Retrier, RetryPolicy
from tests.remote.fakeserver import Reply, fake_server
from tests.remote.serverproc import NS_A, TOOL_A, ServerProcess, key_of

RECORD = struct.Struct(">16s32sI")


def client(urls: list[str], policy: RetryPolicy = NO_RETRY) -> HttpBackend:
    return HttpBackend(urls, NS_A, TOOL_A, retrier=Retrier(policy))


def unavailable(method: str, path: str) -> Reply:
    return 503, {"Content-Type": "application/json"}, b'{"error": "x", "message": "busy"}'


def test_fails_over_from_dead_url_and_remembers(
    shared_server: ServerProcess, free_url: str
) -> None:
    with client([free_url, shared_server.url]) as b:
        id, digest, frame = make_record(secrets.token_bytes(100))
        assert b.upload([(id, digest, frame)]) == {id: "created"}
        assert b.active_url == shared_server.url
        assert b.load(id) == frame
        assert b.missing([(id, None)]) == []
        assert b.health()
        assert len(b.server_id()) == 32


def test_fails_over_on_5xx_and_server_id_follows(shared_server: ServerProcess) -> None:
    with fake_server(unavailable) as busy, client([busy, shared_server.url]) as b:
        record = make_record(secrets.token_bytes(100))
        b.upload([record])
        assert b.active_url == shared_server.url
        health = requests.get(shared_server.url + "/v2/health", timeout=5).json()
        assert b.server_id() == health["server_id"]


def test_all_dead_gives_up_after_deadline(free_url: str) -> None:
    policy = RetryPolicy(deadline=0.4, first_delay=0.05, max_delay=0.1)
    with client([free_url, free_url], policy) as b:
        start = time.monotonic()
        with pytest.raises(TemporaryRemoteError) as info:
            b.upload([make_record(b"x")])
        elapsed = time.monotonic() - start
    assert isinstance(info.value, DeadlineExceeded)
    assert info.value.attempts >= 3
    assert 0.4 <= elapsed < 5
    with client([free_url]) as dead:
        assert not dead.health()


def test_always_5xx_gives_up_with_temporary_error() -> None:
    policy = RetryPolicy(deadline=0.2, first_delay=0.05)
    with (
        fake_server(unavailable) as busy,
        client([busy], policy) as b,
        pytest.raises(DeadlineExceeded) as info,
    ):
        b.load(key_of(b"x"))
    assert "HTTP 503" in str(info.value)


def test_corrupt_download_raises_integrity_error() -> None:
    id, digest, _frame = make_record(b"the real content")
    _, _, other = make_record(b"something else")

    def liar(method: str, path: str) -> Reply:
        return 200, {"X-Content-SHA256": digest}, other

    with fake_server(liar) as url, client([url]) as b, pytest.raises(DeadlineExceeded) as info:
        b.load(id)
    assert isinstance(info.value.last_error, IntegrityError)


def test_corrupt_record_in_download_stream_raises_integrity_error() -> None:
    id, digest, frame = make_record(b"the real content" * 10)
    broken = frame[:-3] + b"zzz"

    def liar(method: str, path: str) -> Reply:
        head = RECORD.pack(bytes.fromhex(id), bytes.fromhex(digest), len(broken))
        return 200, {}, head + broken

    with fake_server(liar) as url, client([url]) as b, pytest.raises(DeadlineExceeded) as info:
        list(b.load_many([id]))
    assert isinstance(info.value.last_error, IntegrityError)


def test_short_download_stream_is_a_temporary_error() -> None:
    id, digest, frame = make_record(b"content" * 10)

    def short(method: str, path: str) -> Reply:
        head = RECORD.pack(bytes.fromhex(id), bytes.fromhex(digest), len(frame) + 10)
        return 200, {}, head + frame

    with fake_server(short) as url, client([url]) as b, pytest.raises(TemporaryRemoteError):
        list(b.load_many([id]))


def test_ref_without_hash_header_is_refused() -> None:
    def bare(method: str, path: str) -> Reply:
        return 200, {}, b"data"

    with (
        fake_server(bare) as url,
        client([url]) as b,
        pytest.raises(TemporaryRemoteError, match="X-Content-Hash"),
    ):
        b.get_ref("snap")


def test_permanent_errors_are_not_retried_or_failed_over(shared_server: ServerProcess) -> None:
    calls: list[str] = []

    def bad_request(method: str, path: str) -> Reply:
        calls.append(path)
        return 400, {}, json.dumps({"error": "bad", "message": "nope"}).encode()

    policy = RetryPolicy(deadline=30)
    with (
        fake_server(bad_request) as url,
        client([url, shared_server.url], policy) as b,
        pytest.raises(PermanentRemoteError, match="nope"),
    ):
        b.list()
    assert len(calls) == 1


def test_large_batches_are_split(shared_server: ServerProcess) -> None:
    ids = [secrets.token_hex(16) for _ in range(12_345)]
    with client([shared_server.url]) as b:
        assert b.missing([(i, None) for i in ids]) == ids
        records = [make_record(secrets.token_bytes(50) + bytes([i % 256])) for i in range(600)]
        assert set(b.upload(records).values()) == {"created"}
        got = list(b.load_many([r[0] for r in records]))
        assert [f for _, f in got] == [r[2] for r in records]


def test_token_bucket_limits_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(1000, clock=lambda: now[0])
    bucket.take(1000, sleep)  # the burst
    assert slept == []
    bucket.take(500, sleep)
    assert slept == [pytest.approx(0.5)]
    now[0] += 10  # idle: refills only up to one second's worth
    bucket.take(1500, sleep)
    assert slept[-1] == pytest.approx(0.5)


def test_bandwidth_limit_slows_uploads(shared_server: ServerProcess) -> None:
    records = [make_record(secrets.token_bytes(60_000)) for _ in range(5)]
    with HttpBackend(
        [shared_server.url], NS_A, TOOL_A, retrier=Retrier(NO_RETRY), bandwidth=100_000
    ) as b:
        start = time.monotonic()
        for record in records:  # one request each: 300 kB at 100 kB/s after 1 s of burst
            b.upload([record])
        elapsed = time.monotonic() - start
    assert elapsed >= 1.5


def test_invalid_arguments_are_refused_client_side(shared_server: ServerProcess) -> None:
    with client([shared_server.url]) as b:
        with pytest.raises(ValueError):
            b.missing([("x" * 32, None)])
        with pytest.raises(ValueError):
            b.upload([("0" * 32, "0" * 63, b"")])
        with pytest.raises(ValueError):
            b.get_ref("a/b")
    with pytest.raises(ValueError):
        HttpBackend([], NS_A, TOOL_A)
    assert header_value("0" * 32).startswith("xxh3-128:")
