"""One contract, two backends: MemoryBackend must behave like HttpBackend against a server,
so that other layers can test against the fake and trust the result."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from remote.backend import Backend, iter_keys
from remote.errors import AuthError, ConflictError, NotFoundError
from remote.faulty_backend import FaultyBackend
from remote.http_backend import HttpBackend
from remote.memory_backend import MemoryBackend
from remote.retry import NO_RETRY, Retrier
from tests.remote.serverproc import ADMIN, TOOL_A, TOOL_ANY, ServerProcess, key_of


@pytest.fixture(params=["memory", "http"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Backend, Backend]]:
    """(tool backend, admin backend) over one shared, empty namespace."""
    if request.param == "memory":
        tool = MemoryBackend(admin=False)
        admin = MemoryBackend(admin=True)
        admin.objects, admin.refs = tool.objects, tool.refs
        yield tool, admin
        return
    server: ServerProcess = request.getfixturevalue("shared_server")
    ns = "c-" + secrets.token_hex(6)
    tool_http = HttpBackend([server.url], ns, TOOL_ANY, retrier=Retrier(NO_RETRY))
    admin_http = HttpBackend([server.url], ns, ADMIN, retrier=Retrier(NO_RETRY))
    yield tool_http, admin_http
    tool_http.close()
    admin_http.close()


def test_save_load_exists(pair: tuple[Backend, Backend]) -> None:
    tool, _ = pair
    data = secrets.token_bytes(5000)
    key = key_of(data)
    assert not tool.exists(key)
    with pytest.raises(NotFoundError):
        tool.load(key)
    tool.save(key, data)
    tool.save(key, data)  # idempotent
    assert tool.exists(key)
    assert tool.load(key) == data


def test_empty_object(pair: tuple[Backend, Backend]) -> None:
    tool, _ = pair
    key = key_of(b"")
    tool.save(key, b"")
    assert tool.load(key) == b""
    assert tool.missing([key]) == []


def test_missing_and_listing(pair: tuple[Backend, Backend]) -> None:
    tool, _ = pair
    blobs = [secrets.token_bytes(64) for _ in range(5)]
    keys = [key_of(b) for b in blobs]
    for k, b in zip(keys[:3], blobs[:3], strict=True):
        tool.save(k, b)
    assert tool.missing(keys) == keys[3:]
    assert tool.list("", 1000) == sorted(keys[:3])
    assert tool.list(sorted(keys[:3])[0], 1) == [sorted(keys[:3])[1]]
    assert list(iter_keys(tool, page=2)) == sorted(keys[:3])


def test_refs_append_only(pair: tuple[Backend, Backend]) -> None:
    tool, admin = pair
    tool.put_ref("snap-1", b"one")
    tool.put_ref("snap-1", b"one")
    with pytest.raises(ConflictError):
        tool.put_ref("snap-1", b"two")
    tool.put_ref("snap-0", b"zero")
    assert tool.get_ref("snap-1") == b"one"
    assert tool.list_refs() == ["snap-0", "snap-1"]
    with pytest.raises(NotFoundError):
        tool.get_ref("nope")
    with pytest.raises(AuthError):
        tool.delete_ref("snap-1")
    admin.delete_ref("snap-1")
    assert tool.list_refs() == ["snap-0"]


def test_only_admin_deletes(pair: tuple[Backend, Backend]) -> None:
    tool, admin = pair
    data = b"precious"
    tool.save(key_of(data), data)
    with pytest.raises(AuthError):
        tool.delete(key_of(data))
    admin.delete(key_of(data))
    assert not tool.exists(key_of(data))
    with pytest.raises(NotFoundError):
        admin.delete(key_of(data))


def test_invalid_names_rejected_client_side(pair: tuple[Backend, Backend]) -> None:
    tool, _ = pair
    for bad in ("../x", "A" * 32, "0" * 31):
        with pytest.raises(ValueError):
            tool.save(bad, b"x")
    with pytest.raises(ValueError):
        tool.put_ref("../etc", b"x")


def test_faulty_backend_fails_chosen_calls() -> None:
    inner = MemoryBackend()
    faulty = FaultyBackend(inner, lambda method, n: method == "save" and n % 2 == 1)
    key = key_of(b"a")
    with pytest.raises(Exception, match="injected fault in save"):
        faulty.save(key, b"a")
    assert not inner.exists(key)
    faulty.save(key, b"a")
    assert faulty.load(key) == b"a"
    assert faulty.calls == [("save", 1), ("save", 2), ("load", 3)]
    assert faulty.faults == 1


def test_faulty_backend_after_call_and_custom_error() -> None:
    inner = MemoryBackend()
    faulty = FaultyBackend(inner, lambda method, n: ConflictError("boom"), after_call=True)
    with pytest.raises(ConflictError):
        faulty.save(key_of(b"b"), b"b")
    assert inner.exists(key_of(b"b"))  # the call happened; only the answer was lost


def test_retrier_rides_over_faulty_backend() -> None:
    faulty = FaultyBackend(MemoryBackend(), lambda method, n: n <= 2)
    retrier = Retrier(sleep=lambda s: None)
    key = key_of(b"c")
    retrier.call(lambda: faulty.save(key, b"c"))
    assert faulty.wrapped.exists(key)
    assert len(faulty.calls) == 3


def test_tool_token_reaches_its_namespace(shared_server: ServerProcess) -> None:
    with HttpBackend([shared_server.url], "toola", TOOL_A, retrier=Retrier(NO_RETRY)) as b:
        data = secrets.token_bytes(10)
        b.save(key_of(data), data)
        assert b.load(key_of(data)) == data
        with pytest.raises(AuthError):
            b.delete(key_of(data))
    other = HttpBackend([shared_server.url], "toolb", TOOL_A, retrier=Retrier(NO_RETRY))
    with other, pytest.raises(AuthError):
        other.save(key_of(data), data)
