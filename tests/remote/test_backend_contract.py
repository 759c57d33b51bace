"""One contract, two backends: MemoryBackend must behave like HttpBackend against a server,
so that other layers can test against the fake and trust the result.

`world` yields a factory of backends over one server: `world(ns, admin=False)`, so a test
can play several tools (namespaces) and an admin on the same pool.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from chunker import compress_chunk
from remote.backend import BAD_FRAME, CREATED, EXISTS, HASH_MISMATCH, Backend, iter_keys
from remote.errors import AuthError, ConflictError, NotFoundError
from remote.faulty_backend import FaultyBackend
from remote.frames import inspect_frame, make_record
from remote.http_backend import HttpBackend
from remote.memory_backend import MemoryBackend, MemoryServer
from remote.retry import NO_RETRY, Retrier
from tests.remote.serverproc import ADMIN, TOOL_ANY, ServerProcess

World = Callable[..., Backend]


@pytest.fixture(params=["memory", "http"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """A factory `world(ns, admin=False)` of backends that share one (empty) server."""
    made: list[Backend] = []
    prefix = "c" + secrets.token_hex(4)
    memory = MemoryServer()
    http: ServerProcess | None = None
    if request.param == "http":
        http = request.getfixturevalue("shared_server")

    def make(ns: str = "a", admin: bool = False) -> Backend:
        backend: Backend
        if http is None:
            backend = MemoryBackend(admin=admin, server=memory, namespace=f"{prefix}-{ns}")
        else:
            token = ADMIN if admin else TOOL_ANY
            backend = HttpBackend([http.url], f"{prefix}-{ns}", token, retrier=Retrier(NO_RETRY))
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def test_upload_then_load(world: World) -> None:
    tool = world()
    plain = secrets.token_bytes(5000) * 3
    id, digest, frame = make_record(plain)
    assert tool.missing([(id, digest)]) == [id]
    with pytest.raises(NotFoundError):
        tool.load(id)
    assert tool.upload([(id, digest, frame)]) == {id: CREATED}
    assert tool.upload([(id, digest, frame)]) == {id: EXISTS}
    assert tool.missing([(id, digest), (id, None)]) == []
    got = tool.load(id)
    assert inspect_frame(got).id == id
    assert [(i, f is not None) for i, f in tool.load_many([id])] == [(id, True)]


def test_empty_object(world: World) -> None:
    tool = world()
    id, digest, frame = make_record(b"")
    assert tool.upload([(id, digest, frame)]) == {id: CREATED}
    assert tool.load(id) == frame
    assert tool.missing([(id, None)]) == []


def test_missing_order_and_listing(world: World) -> None:
    tool = world()
    records = [make_record(secrets.token_bytes(64)) for _ in range(5)]
    ids = [r[0] for r in records]
    tool.upload(records[:3])
    assert tool.missing([(r[0], r[1]) for r in records]) == ids[3:]
    assert tool.missing([(r[0], None) for r in reversed(records)]) == ids[3:][::-1]
    stored = sorted(ids[:3])
    assert tool.list("", 1000) == stored
    assert tool.list(stored[0], 1) == [stored[1]]
    assert list(iter_keys(tool, page=2)) == stored


def test_load_many_keeps_order_and_reports_absent(world: World) -> None:
    tool = world()
    records = [make_record(secrets.token_bytes(100)) for _ in range(3)]
    tool.upload([records[0], records[2]])
    ids = [r[0] for r in records]
    got = list(tool.load_many(ids))
    assert [i for i, _ in got] == ids
    assert got[0][1] == records[0][2] and got[1][1] is None and got[2][1] == records[2][2]


def test_upload_rejects_wrong_hashes_and_bad_frames_per_record(world: World) -> None:
    tool = world()
    good = make_record(b"good" * 100)
    other = make_record(b"other" * 100)
    wrong_id = (other[0], good[1], good[2])  # frame is good's, id is other's
    wrong_sha = (good[0], other[1], good[2])
    broken = (other[0], other[1], b"\x01\x10\x00\x00\x00not zstd")
    results = tool.upload([wrong_id, broken, good])
    assert results == {other[0]: BAD_FRAME, good[0]: CREATED}
    assert tool.upload([wrong_sha]) == {good[0]: HASH_MISMATCH}  # even when id is mapped
    fresh = world("fresh")
    assert fresh.upload([wrong_sha]) == {good[0]: HASH_MISMATCH}
    assert fresh.upload([wrong_id]) == {other[0]: HASH_MISMATCH}
    assert fresh.missing([(good[0], None), (other[0], None)]) == [good[0], other[0]]


def test_claim_by_digest_across_tools(world: World) -> None:
    tool_a, tool_b = world("a"), world("b")
    id, digest, frame = make_record(b"shared build binary " * 1000)
    tool_a.upload([(id, digest, frame)])
    assert tool_b.missing([(id, None)]) == [id]  # no digest: no claim
    assert tool_b.missing([(id, digest)]) == []  # claimed: no bytes sent
    assert tool_b.load(id) == frame
    assert tool_b.list() == [id]
    # A claim needs the digest's blob to have exactly this xxh3 id.
    other_id = make_record(b"something else")[0]
    assert tool_b.missing([(other_id, digest)]) == [other_id]


def test_namespaces_are_separate(world: World) -> None:
    tool_a, tool_b = world("a"), world("b")
    id, digest, frame = make_record(b"mine")
    tool_a.upload([(id, digest, frame)])
    tool_a.put_ref("snapshot.x", b"rec")
    with pytest.raises(NotFoundError):
        tool_b.load(id)
    assert tool_b.list() == [] and tool_b.list_refs() == []


def test_refs_append_only(world: World) -> None:
    tool, admin = world(), world(admin=True)
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
    with pytest.raises(NotFoundError):
        admin.delete_ref("snap-1")


def test_only_admin_deletes(world: World) -> None:
    tool, admin = world(), world(admin=True)
    id, digest, frame = make_record(b"precious")
    tool.upload([(id, digest, frame)])
    with pytest.raises(AuthError):
        tool.delete(id)
    admin.delete(id)
    assert tool.missing([(id, None)]) == [id]
    with pytest.raises(NotFoundError):
        admin.delete(id)
    # The blob may stay in the pool until the server prunes it: claiming it back is allowed.
    assert tool.missing([(id, digest)]) in ([], [id])


def test_invalid_names_rejected_client_side(world: World) -> None:
    tool = world()
    id, digest, frame = make_record(b"x")
    for bad in ("../x", "A" * 32, "0" * 31):
        with pytest.raises(ValueError):
            tool.upload([(bad, digest, frame)])
        with pytest.raises(ValueError):
            tool.missing([(bad, None)])
        with pytest.raises(ValueError):
            tool.load(bad)
    with pytest.raises(ValueError):
        tool.upload([(id, "F" * 64, frame)])
    with pytest.raises(ValueError):
        tool.missing([(id, "../" + "0" * 61)])
    with pytest.raises(ValueError):
        tool.put_ref("../etc", b"x")


def test_server_id_is_stable(world: World) -> None:
    a, b = world("a"), world("b")
    assert a.server_id() == a.server_id() == b.server_id()
    assert len(a.server_id()) == 32


# --- MemoryBackend-only behaviours (fault injection the HTTP tests do on a real disk) ----


def test_memory_corrupt_blob_is_missing_then_healed_by_upload() -> None:
    server = MemoryServer()
    tool = MemoryBackend(server=server, namespace="a")
    id, digest, frame = make_record(b"will rot" * 50)
    tool.upload([(id, digest, frame)])
    server.corrupt(digest)
    assert tool.missing([(id, digest)]) == [id]
    assert server.quarantined == [digest]
    with pytest.raises(NotFoundError):
        tool.load(id)
    assert tool.upload([(id, digest, frame)]) == {id: CREATED}
    assert tool.load(id) == frame


def test_memory_shared_blob_is_stored_once() -> None:
    server = MemoryServer()
    a = MemoryBackend(server=server, namespace="a")
    b = MemoryBackend(server=server, namespace="b")
    id, digest, frame = make_record(b"binary" * 999)
    a.upload([(id, digest, frame)])
    b.upload([(id, digest, compress_chunk(b"binary" * 999, level=1))])
    assert server.counters.blobs_stored == 1
    assert b.load(id) == frame  # the first upload's compression wins
    assert server.digest_of("b", id) == digest


def test_memory_failover_changes_server_id() -> None:
    primary, peer = MemoryServer(), MemoryServer()
    tool = MemoryBackend(server=primary)
    first = tool.server_id()
    tool.server = peer
    assert tool.server_id() != first == primary.id


def test_faulty_backend_fails_chosen_calls() -> None:
    inner = MemoryBackend()
    faulty = FaultyBackend(inner, lambda method, n: method == "upload" and n % 2 == 1)
    record = make_record(b"a")
    with pytest.raises(Exception, match="injected fault in upload"):
        faulty.upload([record])
    assert inner.missing([(record[0], None)]) == [record[0]]
    faulty.upload([record])
    assert faulty.load(record[0]) == record[2]
    assert faulty.calls == [("upload", 1), ("upload", 2), ("load", 3)]
    assert faulty.faults == 1


def test_faulty_backend_after_call_and_custom_error() -> None:
    inner = MemoryBackend()
    faulty = FaultyBackend(inner, lambda method, n: ConflictError("boom"), after_call=True)
    record = make_record(b"b")
    with pytest.raises(ConflictError):
        faulty.upload([record])
    assert inner.missing([(record[0], None)]) == []  # the call happened; the answer was lost


def test_retrier_rides_over_faulty_backend() -> None:
    faulty = FaultyBackend(MemoryBackend(), lambda method, n: n <= 2)
    retrier = Retrier(sleep=lambda s: None)
    record = make_record(b"c")
    retrier.call(lambda: faulty.upload([record]))
    assert faulty.wrapped.missing([(record[0], None)]) == []
    assert len(faulty.calls) == 3


def test_memory_damaged_and_plain_loads() -> None:
    from remote.frames import make_record as _make
    from remote.memory_backend import MemoryBackend as _Memory

    backend = _Memory()
    id, digest, frame = _make(b"plain content " * 100)
    backend.upload([(id, digest, frame)])
    assert list(backend.load_many_plain([id])) == [(id, b"plain content " * 100)]
    assert backend.damaged(0) == ([], 0)
    backend.server.corrupt(digest)
    assert list(backend.load_many_plain([id])) == [(id, None)]  # checked, quarantined
    ids, cursor = backend.damaged(0)
    assert ids == [id] and cursor == 1
    assert backend.damaged(cursor) == ([], 1)
