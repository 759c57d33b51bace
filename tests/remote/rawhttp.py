"""A raw HTTP helper: http.client sends paths exactly as written (requests would normalise
`..` away), which the path-traversal tests need."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    assert parts.hostname is not None
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    length: bool = True,
) -> Answer:
    """One request on `conn`; `length=False` omits Content-Length entirely."""
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    if length and body is not None and "Content-Length" not in (headers or {}):
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    data = resp.read()
    return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)


def request(
    url: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    length: bool = True,
) -> Answer:
    conn = connect(url)
    try:
        return send(conn, method, path, headers, body, length)
    finally:
        conn.close()
