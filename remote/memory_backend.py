"""`MemoryBackend`: an in-memory fake with the real semantics, for other layers' tests.

It validates keys and ref names like the server, keeps refs append-only and refuses deletes
without `admin=True`, so code tested against it behaves the same against `HttpBackend`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from remote import names
from remote.backend import Keys
from remote.errors import AuthError, ConflictError, NotFoundError


class MemoryBackend:
    def __init__(self, admin: bool = False) -> None:
        self.admin = admin
        self.objects: dict[str, bytes] = {}
        self.refs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def save(self, key: str, data: bytes) -> None:
        _check_key(key)
        with self._lock:
            self.objects.setdefault(key, bytes(data))

    def load(self, key: str) -> bytes:
        _check_key(key)
        with self._lock:
            try:
                return self.objects[key]
            except KeyError:
                raise NotFoundError(f"no object {key}") from None

    def exists(self, key: str) -> bool:
        _check_key(key)
        with self._lock:
            return key in self.objects

    def missing(self, keys: Sequence[str]) -> Keys:
        for key in keys:
            _check_key(key)
        with self._lock:
            return [k for k in keys if k not in self.objects]

    def list(self, after: str = "", limit: int = 1000) -> Keys:
        with self._lock:
            return sorted(k for k in self.objects if k > after)[:limit]

    def put_ref(self, name: str, data: bytes) -> None:
        _check_ref(name)
        with self._lock:
            old = self.refs.setdefault(name, bytes(data))
        if old != data:
            raise ConflictError(f"ref {name} exists with different content")

    def get_ref(self, name: str) -> bytes:
        _check_ref(name)
        with self._lock:
            try:
                return self.refs[name]
            except KeyError:
                raise NotFoundError(f"no ref {name}") from None

    def list_refs(self) -> Keys:
        with self._lock:
            return sorted(self.refs)

    def delete(self, key: str) -> None:
        _check_key(key)
        self._require_admin()
        with self._lock:
            if self.objects.pop(key, None) is None:
                raise NotFoundError(f"no object {key}")

    def delete_ref(self, name: str) -> None:
        _check_ref(name)
        self._require_admin()
        with self._lock:
            if self.refs.pop(name, None) is None:
                raise NotFoundError(f"no ref {name}")

    def close(self) -> None:
        pass

    def _require_admin(self) -> None:
        if not self.admin:
            raise AuthError("only an admin may delete")


def _check_key(key: str) -> None:
    if not names.is_key(key):
        raise ValueError(f"invalid key {key!r}: need 32 lower-case hex digits")


def _check_ref(name: str) -> None:
    if not names.is_ref_name(name):
        raise ValueError(f"invalid ref name {name!r}")
