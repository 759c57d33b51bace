"""Server-to-server replication for the HA pair, with two real server processes.

A writes, B converges (objects mapped before the refs that reach them); kill -9 of A in the
middle of replicating, restart, converges; B down for a while, then back, converges; the lag
is visible in /v2/health and /v2/replication.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from remote.frames import make_record
from remote.http_backend import HttpBackend
from remote.retry import NO_RETRY, Retrier
from tests.remote.serverproc import ADMIN, REPLICATE, ServerProcess, write_tokens


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """(A, B): B is a plain server; A replicates to B every 0.2 s."""
    tokens = write_tokens(tmp_path / "tokens.json")
    b = ServerProcess(tmp_path / "b", tokens).start()
    token_file = tmp_path / "peer-token"
    token_file.write_text(REPLICATE + "\n")
    a = ServerProcess(
        tmp_path / "a",
        tokens,
        ("--peer", b.url, "--peer-token-file", str(token_file), "--peer-interval", "0.2"),
    ).start()
    yield a, b
    a.stop()
    b.stop()


def client(server: ServerProcess, ns: str) -> HttpBackend:
    return HttpBackend([server.url], ns, ADMIN, retrier=Retrier(NO_RETRY))


def wait_for(cond: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def peer_status(server: ServerProcess) -> dict[str, Any]:
    doc = requests.get(server.url + "/v2/health", timeout=5).json()
    peer: dict[str, Any] = doc["peer"]
    return peer


def write_snapshot(server: ServerProcess, ns: str, n: int, size: int = 2000) -> list[str]:
    records = [make_record(secrets.token_bytes(size)) for _ in range(n)]
    with client(server, ns) as b:
        b.upload(records)
        name = f"snapshot.{secrets.token_hex(4)}"
        b.put_ref(name, " ".join(r[0] for r in records).encode())
    return [r[0] for r in records]


def converged(a: ServerProcess, b: ServerProcess, spaces: list[str]) -> bool:
    """B has every ref of A, and every id A maps (checked by downloading from B)."""
    for ns in spaces:
        with client(a, ns) as ca, client(b, ns) as cb:
            if cb.list_refs() != ca.list_refs():
                return False
            ids = ca.list(limit=10_000)
            if cb.missing([(i, None) for i in ids]):
                return False
    return True


def check_invariant(b: ServerProcess, ns: str) -> None:
    """Every ref on B reaches only ids B maps (the HA invariant)."""
    with client(b, ns) as cb:
        for name in cb.list_refs():
            ids = cb.get_ref(name).decode().split()
            assert cb.missing([(i, None) for i in ids]) == [], name


def test_writes_to_a_reach_b_with_lag_visible(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    write_snapshot(a, "tool1", 20)
    write_snapshot(a, "tool2", 5)
    wait_for(lambda: converged(a, b, ["tool1", "tool2"]))
    check_invariant(b, "tool1")
    wait_for(lambda: peer_status(a)["pending_objects"] == 0 and peer_status(a)["lag_seconds"] == 0)
    status = peer_status(a)
    assert status["last_success"] is not None and status["url"] == b.url
    assert requests.get(b.url + "/v2/health", timeout=5).json()["peer"] is None
    admin = {"Authorization": f"Bearer {ADMIN}"}
    repl = requests.get(a.url + "/v2/replication", headers=admin, timeout=5).json()
    assert repl["peer"]["objects_sent"] == 25 and repl["peer"]["refs_sent"] == 2
    # Content B already holds (another tool's) is claimed on B by digest, not sent again.
    with client(a, "tool1") as ca, client(a, "tool3") as c3:
        ids = ca.list()
        frames = dict(ca.load_many(ids))
        digests = {i: make_record_digest(frames[i]) for i in ids}
        assert c3.missing([(i, digests[i]) for i in ids]) == []
    wait_for(lambda: converged(a, b, ["tool3"]))
    repl = requests.get(a.url + "/v2/replication", headers=admin, timeout=5).json()
    assert repl["peer"]["objects_sent"] == 25 and repl["peer"]["objects_claimed"] >= 20


def make_record_digest(frame: bytes | None) -> str:
    from remote.frames import inspect_frame

    assert frame is not None
    return inspect_frame(frame).sha256


def test_kill_9_of_a_mid_replication_then_restart_converges(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pair
    for i in range(4):
        write_snapshot(a, f"tool{i}", 40, size=60_000)
    time.sleep(0.3)  # replication has started, most likely not finished
    a.kill()
    for ns in ("tool0", "tool1", "tool2", "tool3"):
        check_invariant(b, ns)  # whatever B got so far, its refs are complete
    a.start()
    write_snapshot(a, "tool0", 5)
    wait_for(lambda: converged(a, b, ["tool0", "tool1", "tool2", "tool3"]), timeout=60)
    for ns in ("tool0", "tool1", "tool2", "tool3"):
        check_invariant(b, ns)


def test_peer_down_for_a_while_then_back(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tokens = write_tokens(tmp_path / "tokens.json")
    b = FixedPortServer(tmp_path / "b", tokens, port=port).start()
    token_file = tmp_path / "peer-token"
    token_file.write_text(REPLICATE)
    a = ServerProcess(
        tmp_path / "a",
        tokens,
        ("--peer", b.url, "--peer-token-file", str(token_file), "--peer-interval", "0.2"),
    ).start()
    try:
        write_snapshot(a, "tool1", 5)
        wait_for(lambda: converged(a, b, ["tool1"]))
        b.stop()
        write_snapshot(a, "tool1", 7)
        write_snapshot(a, "tool9", 3)
        wait_for(lambda: peer_status(a)["last_error"] is not None)
        time.sleep(0.5)
        assert peer_status(a)["lag_seconds"] > 0
        assert peer_status(a)["pending_objects"] > 0
        b.start()
        wait_for(lambda: converged(a, b, ["tool1", "tool9"]))
        check_invariant(b, "tool1")
        wait_for(lambda: peer_status(a)["lag_seconds"] == 0)
    finally:
        a.stop()
        b.stop()


class FixedPortServer(ServerProcess):
    """A server that always listens on the same port (a peer URL that stays valid)."""

    def __init__(self, data: Path, tokens: Path, port: int) -> None:
        super().__init__(data, tokens)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> FixedPortServer:
        self.extra = ("--listen", f"127.0.0.1:{self.port}")
        super().start()
        return self
