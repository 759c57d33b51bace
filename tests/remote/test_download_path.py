"""The restore's receive path against a real server: downloads keep their connections
alive, and every record is still checked against its id."""

from __future__ import annotations

import secrets
import socket
from typing import Any

import pytest
import urllib3.connection

from remote.frames import make_record
from remote.http_backend import HttpBackend
from remote.retry import NO_RETRY, Retrier
from tests.remote.serverproc import TOOL_ANY, ServerProcess


def test_downloads_reuse_one_connection(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each objects:download answer is read to its end, so the connection goes back to
    the pool alive: before, urllib3 closed it after every batch (the body's last, empty
    chunk was left unread) and the next request paid a new TCP connection on both sides.

    urllib3 reconnects a closed pooled connection lazily (its pool counters do not see
    it), so the real connect calls are counted."""
    connects: list[int] = []
    real_connect = urllib3.connection.HTTPConnection.connect

    def counting_connect(self: Any) -> None:
        connects.append(1)
        real_connect(self)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "connect", counting_connect)
    ns = "dl" + secrets.token_hex(4)
    backend = HttpBackend([shared_server.url], ns, TOOL_ANY, retrier=Retrier(NO_RETRY))
    try:
        plains = [secrets.token_bytes(60_000 + i) for i in range(20)]
        backend.upload([make_record(p) for p in plains])
        ids = [make_record(p)[0] for p in plains]
        connects.clear()
        for round_no in range(10):
            wanted = ids[round_no % 3 :]
            got = list(backend.load_many_plain(wanted))
            assert got == list(zip(wanted, plains[round_no % 3 :], strict=True))
            assert list(backend.load_many_plain([ids[0], "0" * 32])) == [
                (ids[0], plains[0]),
                ("0" * 32, None),
            ]
        assert len(connects) <= 1
    finally:
        backend.close()


def test_proxy_settings_of_the_environment_still_apply(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment is read once when the backend is made (not per request), and still
    honoured: a proxy that does not answer fails the call unless NO_PROXY exempts the
    server."""
    from remote.errors import TemporaryRemoteError

    with socket.socket() as probe:  # a port nobody listens on: the "proxy"
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("HTTP_PROXY", dead)
    monkeypatch.setenv("http_proxy", dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = HttpBackend([shared_server.url], "px", TOOL_ANY, retrier=Retrier(NO_RETRY))
    try:
        with pytest.raises(TemporaryRemoteError):
            list(proxied.load_many_plain(["0" * 32]))
    finally:
        proxied.close()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    direct = HttpBackend([shared_server.url], "px", TOOL_ANY, retrier=Retrier(NO_RETRY))
    try:
        assert list(direct.load_many_plain(["0" * 32])) == [("0" * 32, None)]
    finally:
        direct.close()
