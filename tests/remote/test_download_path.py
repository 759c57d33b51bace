"""The restore's receive path against a real server: downloads keep their connections
alive, and every record is still checked against its id."""

from __future__ import annotations

import secrets
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
