"""HttpBackend against real and deliberately broken servers: failover, deadlines, integrity."""

from __future__ import annotations

import json
import secrets
import time

import pytest

from remote.errors import (
    DeadlineExceeded,
    IntegrityError,
    PermanentRemoteError,
    TemporaryRemoteError,
)
from remote.hashing import header_value
from remote.http_backend import HttpBackend
from remote.retry import NO_RETRY, Retrier, RetryPolicy
from tests.remote.fakeserver import Reply, fake_server
from tests.remote.serverproc import NS_A, TOOL_A, ServerProcess, key_of


def client(urls: list[str], policy: RetryPolicy = NO_RETRY) -> HttpBackend:
    return HttpBackend(urls, NS_A, TOOL_A, retrier=Retrier(policy))


def unavailable(method: str, path: str) -> Reply:
    return 503, {"Content-Type": "application/json"}, b'{"error": "x", "message": "busy"}'


def test_fails_over_from_dead_url_and_remembers(
    shared_server: ServerProcess, free_url: str
) -> None:
    with HttpBackend([free_url, shared_server.url], NS_A, TOOL_A, retrier=Retrier(NO_RETRY)) as b:
        data = secrets.token_bytes(100)
        b.save(key_of(data), data)
        assert b.active_url == shared_server.url
        assert b.load(key_of(data)) == data
        assert b.missing([key_of(data)]) == []
        assert b.health()


def test_fails_over_on_5xx(shared_server: ServerProcess) -> None:
    with fake_server(unavailable) as busy:
        b = HttpBackend([busy, shared_server.url], NS_A, TOOL_A, retrier=Retrier(NO_RETRY))
        with b:
            data = secrets.token_bytes(100)
            b.save(key_of(data), data)
            assert b.active_url == shared_server.url


def test_all_dead_gives_up_after_deadline(free_url: str) -> None:
    policy = RetryPolicy(deadline=0.4, first_delay=0.05, max_delay=0.1)
    with HttpBackend([free_url, free_url], NS_A, TOOL_A, retrier=Retrier(policy)) as b:
        start = time.monotonic()
        with pytest.raises(TemporaryRemoteError) as info:
            b.save(key_of(b"x"), b"x")
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
    data = b"the real content"

    def liar(method: str, path: str) -> Reply:
        return 200, {"X-Content-Hash": header_value(key_of(b"something else"))}, data

    with fake_server(liar) as url, client([url]) as b, pytest.raises(DeadlineExceeded) as info:
        b.load(key_of(data))
    assert isinstance(info.value.last_error, IntegrityError)


def test_download_without_hash_header_is_refused() -> None:
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


def test_large_missing_batches(shared_server: ServerProcess) -> None:
    keys = [secrets.token_hex(16) for _ in range(25_000)]
    with HttpBackend([shared_server.url], NS_A, TOOL_A, retrier=Retrier(NO_RETRY)) as b:
        assert b.missing(keys) == keys
