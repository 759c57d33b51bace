"""A stand-in for the /v2 `MemoryBackend` until remote/memory_backend.py v2 lands on main
(docs/remote-api.md, /work/briefs/v2-contract.md): pool by SHA-256, one namespace map,
frames checked on upload and on download, refs append-only. Counts downloads, so tests
can prove that a resumed restore fetched nothing twice. Delete once the real one is here.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence

from chunker import CorruptChunkError, chunk_id, decompress_chunk
from remote.errors import (
    AuthError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    TemporaryRemoteError,
)


class FakeV2Backend:
    def __init__(self, admin: bool = False) -> None:
        self.admin = admin
        self.pool: dict[str, bytes] = {}
        self.mapping: dict[str, str] = {}
        self.refs: dict[str, bytes] = {}
        self.downloads: list[str] = []  # every id whose frame was sent, in order
        self.fail_after: int | None = None  # downloads allowed before "the server dies"
        self._lock = threading.Lock()

    def server_id(self) -> str:
        return "fake"

    def missing(self, objects: Sequence[tuple[str, str | None]]) -> list[str]:
        with self._lock:
            out = []
            for oid, sha in objects:
                if oid in self.mapping:
                    continue
                if sha is not None and sha in self.pool:
                    self.mapping[oid] = sha
                    continue
                out.append(oid)
            return out

    def upload(self, records: Sequence[tuple[str, str, bytes]]) -> dict[str, str]:
        result = {}
        for oid, sha, frame in records:
            try:
                plain = decompress_chunk(frame)
            except CorruptChunkError:
                result[oid] = "bad_frame"
                continue
            if chunk_id(plain).hex() != oid or hashlib.sha256(plain).hexdigest() != sha:
                result[oid] = "hash_mismatch"
                continue
            with self._lock:
                existed = oid in self.mapping
                self.pool.setdefault(sha, bytes(frame))
                self.mapping[oid] = sha
            result[oid] = "exists" if existed else "created"
        return result

    def load(self, oid: str) -> bytes:
        with self._lock:
            if self.fail_after is not None and len(self.downloads) >= self.fail_after:
                raise TemporaryRemoteError("fake server stopped answering")
            sha = self.mapping.get(oid)
            if sha is None:
                raise NotFoundError(f"no object {oid}")
            frame = self.pool[sha]
            self.downloads.append(oid)
        try:
            if chunk_id(decompress_chunk(frame)).hex() != oid:
                raise IntegrityError(f"object {oid} does not match its id")
        except CorruptChunkError:
            raise IntegrityError(f"object {oid} does not decompress") from None
        return frame

    def load_many(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        for oid in ids:
            try:
                yield oid, self.load(oid)
            except NotFoundError:
                yield oid, None

    def list(self, after: str = "", limit: int = 1000) -> list[str]:
        return sorted(k for k in self.mapping if k > after)[:limit]

    def put_ref(self, name: str, data: bytes) -> None:
        with self._lock:
            old = self.refs.get(name)
            if old is not None and old != data:
                raise ConflictError(f"ref {name} exists")
            self.refs[name] = bytes(data)

    def get_ref(self, name: str) -> bytes:
        try:
            return self.refs[name]
        except KeyError:
            raise NotFoundError(f"no ref {name}") from None

    def list_refs(self) -> list[str]:
        return sorted(self.refs)

    def delete(self, oid: str) -> None:
        if not self.admin:
            raise AuthError("admin only")
        del self.mapping[oid]

    def delete_ref(self, name: str) -> None:
        if not self.admin:
            raise AuthError("admin only")
        del self.refs[name]

    def close(self) -> None:
        pass

    # --- for tests ---------------------------------------------------------------------
    def corrupt(self, oid: str) -> None:
        """Flip a byte of the blob behind `oid` (as a failing server disk would)."""
        sha = self.mapping[oid]
        frame = bytearray(self.pool[sha])
        frame[-1] ^= 0xFF
        self.pool[sha] = bytes(frame)
