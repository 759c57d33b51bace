"""`MemoryBackend`: an in-memory fake with the real v2 semantics, for other layers' tests.

The state of one server lives in a `MemoryServer`: the pool of blobs keyed by SHA-256 of
their plain content, and per namespace the map id -> digest and the refs. Each
`MemoryBackend` is one tool's (or an admin's) client of such a server; several backends over
one `MemoryServer` model several tools on one server (cross-tool dedup, xxh3 collisions),
and pointing a backend at another `MemoryServer` (`backend.server = other`) models an HA
failover (`server_id()` changes).

It checks what the real server checks (frames decode, xxh3 and SHA-256 of the plain content
match the record, a mapping only to a verified blob, claim-by-digest in `missing`, refs
append-only, deletes admin-only) and re-hashes a blob before trusting or sending it, so code
tested against it behaves the same against `HttpBackend`. `MemoryServer.corrupt` damages a
blob in place, the way a bad disk would, and the next check quarantines it.
"""

from __future__ import annotations

import builtins
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from remote import names
from remote.backend import BAD_FRAME, CREATED, EXISTS, HASH_MISMATCH, Keys
from remote.errors import (
    AuthError,
    ConflictError,
    ForgottenError,
    IntegrityError,
    NotFoundError,
    PermanentRemoteError,
)
from remote.frames import (
    MAX_FRAME_SIZE,
    BadFrameError,
    inspect_frame,
    is_digest,
    plain_of_verified,
)


@dataclass(slots=True)
class _Blob:
    frame: bytes
    xxh3: str  # recorded at upload, as the real server records it in the blob header


@dataclass
class _Namespace:
    objects: dict[str, str] = field(default_factory=dict)  # id -> pool digest
    refs: dict[str, bytes] = field(default_factory=dict)
    forgotten: set[str] = field(default_factory=set)  # refs a prune forgot (tombstones)
    report: dict[str, Any] | None = None  # the latest PUT report (latest wins)


@dataclass
class UploadCounters:
    """What tools sent, for tests of dedup: records received and frame bytes received."""

    records: int = 0
    frame_bytes: int = 0
    blobs_stored: int = 0


class MemoryServer:
    """One server's state, shared by every `MemoryBackend` that talks to it."""

    def __init__(self, server_id: str | None = None) -> None:
        self.id = server_id or uuid.uuid4().hex
        self.pool: dict[str, _Blob] = {}
        self.namespaces: dict[str, _Namespace] = {}
        self.quarantined: builtins.list[str] = []
        self.counters = UploadCounters()
        self.lock = threading.RLock()

    def namespace(self, ns: str) -> _Namespace:
        with self.lock:
            return self.namespaces.setdefault(names.namespace_dir(ns), _Namespace())

    def forget_refs(self, ns: str, refs: Sequence[str]) -> None:
        """What a server prune does to refs: delete them and keep their tombstones."""
        with self.lock:
            space = self.namespace(ns)
            for name in refs:
                space.refs.pop(name, None)
                space.forgotten.add(name)

    def corrupt(self, digest: str, frame: bytes = b"\x07garbage") -> None:
        """Replace blob `digest`'s bytes (a damaged disk); checks will quarantine it."""
        with self.lock:
            self.pool[digest].frame = frame

    def digest_of(self, ns: str, id: str) -> str | None:
        """The pool digest namespace `ns` maps `id` to, if any."""
        with self.lock:
            return self.namespace(ns).objects.get(id)

    def intact(self, digest: str) -> bool:
        """Re-hash blob `digest` (as the server does); quarantine it if it is damaged."""
        with self.lock:
            blob = self.pool.get(digest)
            if blob is None:
                return False
            try:
                found = inspect_frame(blob.frame)
            except BadFrameError:
                found = None
            if found is not None and found.sha256 == digest and found.id == blob.xxh3:
                return True
            del self.pool[digest]
            self.quarantined.append(digest)
            return False


class MemoryBackend:
    def __init__(
        self,
        admin: bool = False,
        *,
        server: MemoryServer | None = None,
        namespace: str = "tool",
        max_object_size: int = MAX_FRAME_SIZE,
    ) -> None:
        if not names.is_namespace(namespace):
            raise ValueError(f"invalid namespace {namespace!r}")
        self.admin = admin
        self.server = server if server is not None else MemoryServer()
        self.namespace = namespace
        self.max_object_size = max_object_size

    @property
    def _ns(self) -> _Namespace:
        return self.server.namespace(self.namespace)

    def server_id(self) -> str:
        return self.server.id

    def missing(self, objects: Sequence[tuple[str, str | None]]) -> Keys:
        for id, digest in objects:
            _check_id(id)
            if digest is not None:
                _check_digest(digest)
        out: Keys = []
        with self.server.lock:
            ns = self._ns
            for id, digest in objects:
                mapped = ns.objects.get(id)
                if mapped is not None and self.server.intact(mapped):
                    continue
                claimable = digest is not None and self.server.intact(digest)
                if claimable and self.server.pool[str(digest)].xxh3 == id:
                    ns.objects[id] = str(digest)  # claim by digest: no bytes needed
                    continue
                out.append(id)
        return out

    def upload(self, records: Sequence[tuple[str, str, bytes]]) -> dict[str, str]:
        for id, digest, frame in records:
            _check_id(id)
            _check_digest(digest)
            if len(frame) > self.max_object_size:
                raise PermanentRemoteError(
                    f"HTTP 413: frame of {len(frame)} bytes exceeds {self.max_object_size}"
                )
        results: dict[str, str] = {}
        for id, digest, frame in records:
            results[id] = self._upload_one(id, digest, bytes(frame))
        return results

    def _upload_one(self, id: str, digest: str, frame: bytes) -> str:
        try:
            found = inspect_frame(frame)
        except BadFrameError:
            return BAD_FRAME
        if found.id != id or found.sha256 != digest:
            return HASH_MISMATCH
        server = self.server
        with server.lock:
            server.counters.records += 1
            server.counters.frame_bytes += len(frame)
            ns = self._ns
            mapped = ns.objects.get(id)
            if mapped is not None and mapped != digest and server.intact(mapped):
                return EXISTS  # first verified mapping of an id wins, as refs do
            stored = server.intact(digest)
            if not stored:
                server.pool[digest] = _Blob(frame, id)
                server.counters.blobs_stored += 1
            if mapped == digest and stored:
                return EXISTS
            ns.objects[id] = digest
            return CREATED

    def load(self, id: str) -> bytes:
        _check_id(id)
        with self.server.lock:
            digest = self._ns.objects.get(id)
            if digest is None or not self.server.intact(digest):
                raise NotFoundError(f"no object {id}")
            return self.server.pool[digest].frame

    def load_many(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        for id in ids:
            _check_id(id)
        for id in ids:
            try:
                yield id, self.load(id)
            except NotFoundError:
                yield id, None

    def load_many_plain(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        for id, frame in self.load_many(ids):
            if frame is None:
                yield id, None
                continue
            try:
                yield id, plain_of_verified(id, frame)
            except BadFrameError as exc:
                raise IntegrityError(f"object {id}: {exc}") from exc

    def damaged(self, after: int = 0) -> tuple[Keys, int]:
        """The cursor is a position in the server's quarantine list."""
        if after < 0:
            raise ValueError("cursor must not be negative")
        with self.server.lock:
            since = set(self.server.quarantined[after:])
            ids = sorted(id for id, d in self._ns.objects.items() if d in since)
            return ids, len(self.server.quarantined)

    def list(self, after: str = "", limit: int = 1000) -> Keys:
        with self.server.lock:
            return sorted(k for k in self._ns.objects if k > after)[:limit]

    def put_ref(self, name: str, data: bytes) -> None:
        _check_ref(name)
        with self.server.lock:
            if name in self._ns.forgotten and not self.admin:
                raise ForgottenError(f"ref {name} was pruned here")
            old = self._ns.refs.setdefault(name, bytes(data))
        if old != data:
            raise ConflictError(f"ref {name} exists with different content")

    def get_ref(self, name: str) -> bytes:
        _check_ref(name)
        with self.server.lock:
            try:
                return self._ns.refs[name]
            except KeyError:
                raise NotFoundError(f"no ref {name}") from None

    def list_refs(self) -> Keys:
        with self.server.lock:
            return sorted(self._ns.refs)

    def forgotten_refs(self, names: Sequence[str]) -> Keys:
        for name in names:
            _check_ref(name)
        with self.server.lock:
            return [n for n in names if n in self._ns.forgotten]

    def delete(self, id: str) -> None:
        _check_id(id)
        self._require_admin()
        with self.server.lock:
            if self._ns.objects.pop(id, None) is None:
                raise NotFoundError(f"no object {id}")

    def delete_ref(self, name: str) -> None:
        _check_ref(name)
        self._require_admin()
        with self.server.lock:
            if self._ns.refs.pop(name, None) is None:
                raise NotFoundError(f"no ref {name}")

    def put_report(self, report: dict[str, Any]) -> None:
        with self.server.lock:
            self._ns.report = dict(report)

    def close(self) -> None:
        pass

    def _require_admin(self) -> None:
        if not self.admin:
            raise AuthError("HTTP 403: only an admin may delete")


def _check_id(id: str) -> None:
    if not names.is_key(id):
        raise ValueError(f"invalid object id {id!r}: need 32 lower-case hex digits")


def _check_digest(digest: str) -> None:
    if not is_digest(digest):
        raise ValueError(f"invalid sha256 {digest!r}: need 64 lower-case hex digits")


def _check_ref(name: str) -> None:
    if not names.is_ref_name(name):
        raise ValueError(f"invalid ref name {name!r}")
