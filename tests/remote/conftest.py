"""Fixtures for the remote layer (see serverproc for the server process itself)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.remote.serverproc import ServerProcess, write_tokens


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the many tests that only need a working endpoint."""
    base = tmp_path_factory.mktemp("shared-server")
    server = ServerProcess(
        base / "data", write_tokens(base / "tokens.json"), ("--max-object-size", "65536")
    ).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own, for tests that corrupt, kill or restart it."""
    server = ServerProcess(tmp_path / "data", write_tokens(tmp_path / "tokens.json")).start()
    yield server
    server.stop()


@pytest.fixture
def free_url() -> str:
    """A loopback URL nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback tests must not be routed through a proxy from the environment."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
