"""The interface every remote backend offers: opaque keys and bytes, nothing more.

Keys are 32 lower-case hex digits (xxh3-128 content ids chosen by the caller); the backend
does not interpret them. Objects are immutable once stored. Refs are small named records,
append-only: storing a ref again with the same bytes is a no-op, with different bytes a
`ConflictError`. Deleting needs an admin credential (`AuthError` otherwise).

Errors: `TemporaryRemoteError` (try later), `PermanentRemoteError` and its subclasses
`NotFoundError`, `ConflictError`, `AuthError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

# A module-level alias because a method named `list` shadows the builtin in class bodies.
Keys = list[str]


@runtime_checkable
class Backend(Protocol):
    def save(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (a no-op if a sound copy is already there)."""

    def load(self, key: str) -> bytes:
        """The bytes under `key`, verified; `NotFoundError` if absent."""
        ...

    def exists(self, key: str) -> bool:
        """Whether `key` is present (a cheap check; `missing` is the verified one)."""
        ...

    def missing(self, keys: Sequence[str]) -> Keys:
        """Those of `keys` the backend does not hold intact, in the order given."""
        ...

    def list(self, after: str = "", limit: int = 1000) -> Keys:
        """Up to `limit` keys greater than `after`, in ascending order."""
        ...

    def put_ref(self, name: str, data: bytes) -> None:
        """Create ref `name`; same bytes again is a no-op, other bytes `ConflictError`."""

    def get_ref(self, name: str) -> bytes:
        """The bytes of ref `name`; `NotFoundError` if absent."""
        ...

    def list_refs(self) -> Keys:
        """All ref names, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove object `key` (admin only); `NotFoundError` if absent."""

    def delete_ref(self, name: str) -> None:
        """Remove ref `name` (admin only); `NotFoundError` if absent."""

    def close(self) -> None:
        """Release connections and other resources."""


def iter_keys(backend: Backend, page: int = 1000) -> Iterator[str]:
    """Every key of `backend`, paging through `list`."""
    after = ""
    while True:
        keys = backend.list(after, page)
        yield from keys
        if len(keys) < page:
            return
        after = keys[-1]
