"""A small in-memory stand-in for the /v2 server, used until remote/memory_backend.py (v2)
lands on main: pool keyed by SHA-256 of the plain content, per-namespace id -> digest maps,
claim-by-digest in `missing`, hash checks on upload, append-only refs.

`FakeServer` is one server; `FakeV2(server, ns)` is one tool's client of it. `corrupt(id)`
damages a blob the way a bad disk would; `frames_received` counts upload bytes.
"""

from __future__ import annotations

import builtins
import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence

from chunker import chunk_id, decompress_chunk
from remote.errors import ConflictError, NotFoundError, TemporaryRemoteError


class FakeServer:
    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.pool: dict[str, tuple[bytes, str]] = {}  # digest -> (frame, xxh3 hex)
        self.maps: dict[str, dict[str, str]] = {}  # ns -> id -> digest
        self.refs: dict[str, dict[str, bytes]] = {}
        self.frames_received = 0
        self.frames_stored = 0
        self.up = True
        self.lock = threading.RLock()

    def intact(self, digest: str) -> bool:
        blob = self.pool.get(digest)
        if blob is None:
            return False
        try:
            plain = decompress_chunk(blob[0])
        except ValueError:
            plain = b"\0"
        if hashlib.sha256(plain).hexdigest() != digest:
            del self.pool[digest]  # quarantined
            return False
        return True

    def corrupt(self, ns: str, oid: str) -> None:
        digest = self.maps[ns][oid]
        frame, xid = self.pool[digest]
        damaged = bytearray(frame)
        damaged[-1] ^= 0xFF
        self.pool[digest] = (bytes(damaged), xid)


class FakeV2:
    def __init__(
        self, server: FakeServer, ns: str, on_call: Callable[[str], None] | None = None
    ) -> None:
        self.server = server
        self.ns = ns
        self.on_call = on_call or (lambda method: None)
        server.maps.setdefault(ns, {})
        server.refs.setdefault(ns, {})

    def _enter(self, method: str) -> None:
        if not self.server.up:
            raise TemporaryRemoteError("connection refused (fake server down)")
        self.on_call(method)

    def server_id(self) -> str:
        return self.server.id

    def missing(self, objects: Sequence[tuple[str, str | None]]) -> list[str]:
        self._enter("missing")
        s = self.server
        out = []
        with s.lock:
            m = s.maps[self.ns]
            for oid, digest in objects:
                mapped = m.get(oid)
                if mapped is not None and s.intact(mapped):
                    continue
                if digest is not None and s.intact(digest) and s.pool[digest][1] == oid:
                    m[oid] = digest
                    continue
                out.append(oid)
        return out

    def upload(self, records: Sequence[tuple[str, str, bytes]]) -> dict[str, str]:
        self._enter("upload")
        s = self.server
        results = {}
        with s.lock:
            for oid, digest, frame in records:
                s.frames_received += len(frame)
                try:
                    plain = decompress_chunk(frame)
                except ValueError:
                    results[oid] = "bad_frame"
                    continue
                if chunk_id(plain).hex() != oid or hashlib.sha256(plain).hexdigest() != digest:
                    results[oid] = "hash_mismatch"
                    continue
                if s.intact(digest):
                    results[oid] = "exists"
                else:
                    s.pool[digest] = (bytes(frame), oid)
                    s.frames_stored += len(frame)
                    results[oid] = "created"
                s.maps[self.ns][oid] = digest
        return results

    def load(self, oid: str) -> bytes:
        self._enter("load")
        s = self.server
        with s.lock:
            digest = s.maps[self.ns].get(oid)
            if digest is None or not s.intact(digest):
                raise NotFoundError(oid)
            return s.pool[digest][0]

    def load_many(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        for oid in ids:
            try:
                yield oid, self.load(oid)
            except NotFoundError:
                yield oid, None

    def list(self, after: str = "", limit: int = 1000) -> list[str]:
        return sorted(k for k in self.server.maps[self.ns] if k > after)[:limit]

    def put_ref(self, name: str, data: bytes) -> None:
        self._enter("put_ref")
        with self.server.lock:
            old = self.server.refs[self.ns].setdefault(name, bytes(data))
        if old != data:
            raise ConflictError(name)

    def get_ref(self, name: str) -> bytes:
        self._enter("get_ref")
        try:
            return self.server.refs[self.ns][name]
        except KeyError:
            raise NotFoundError(name) from None

    def list_refs(self) -> builtins.list[str]:
        self._enter("list_refs")
        return sorted(self.server.refs[self.ns])

    def delete(self, oid: str) -> None:
        self.server.maps[self.ns].pop(oid)

    def delete_ref(self, name: str) -> None:
        self.server.refs[self.ns].pop(name)

    def close(self) -> None:
        pass
