"""The v2 interface every remote backend offers (contract: docs/remote-api.md, "/v2").

Objects are chunk frames (`chunker.compress_chunk`) named by the tool's id, the xxh3-128 of
the plain content (32 lower-case hex). The server keeps one shared *pool* of blobs keyed by
the SHA-256 of the plain content (64 lower-case hex) and, per namespace (tool), a map from
id to pool digest. A mapping is only ever created after the server verified that the blob's
plain content has that xxh3-128, so no tool can make another restore foreign bytes by
uploading an xxh3 collision first.

- `missing` answers which ids the server still needs bytes for. An id with a digest the pool
  already holds (another tool uploaded the same content) is mapped there and then, durably,
  and is not missing: this is the cross-tool dedup, and no bytes move.
- `upload` sends (id, sha256, frame) records; the server decodes each frame and checks both
  hashes; a mismatch rejects that record only (status `hash_mismatch` or `bad_frame`).
- Downloads (`load`, `load_many`, `load_many_plain`) are verified by the client: the frame
  decodes and its plain content hashes to the id asked for (`IntegrityError` otherwise).
  The server sends blobs after cheap checks only (docs/design.md), so this check is the
  one that keeps damaged bytes out of a restore.
- `damaged` lists ids whose server copy was quarantined since a cursor: the sync uploads
  them again from the local store.
- Refs are small named records, append-only for tools: storing a ref again with the same
  bytes is a no-op, with different bytes a `ConflictError`. Deleting needs an admin
  credential (`AuthError` otherwise).
- `server_id()` names the server answering now (fixed per data directory), so the sync layer
  notices an HA failover and re-checks what that server holds.

Errors: `TemporaryRemoteError` (try later, or the other server), `PermanentRemoteError` and
its subclasses `NotFoundError`, `ConflictError`, `AuthError`; `IntegrityError` (temporary).
Malformed ids, digests or ref names are refused client-side with `ValueError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

# A module-level alias because a method named `list` shadows the builtin in class bodies.
Keys = list[str]
# Upload statuses (per record) of `Backend.upload`.
CREATED = "created"
EXISTS = "exists"
HASH_MISMATCH = "hash_mismatch"
BAD_FRAME = "bad_frame"
UPLOAD_STATUSES = frozenset({CREATED, EXISTS, HASH_MISMATCH, BAD_FRAME})
STORED_STATUSES = frozenset({CREATED, EXISTS})  # the server holds the id's bytes now


@runtime_checkable
class Backend(Protocol):
    def server_id(self) -> str:
        """The id (uuid hex) of the server that answers now; changes on HA failover."""
        ...

    def missing(self, objects: Sequence[tuple[str, str | None]]) -> Keys:
        """Of (id, sha256 or None) pairs, the ids the server still needs bytes for.

        In request order; batches internally. A pair whose digest the pool holds intact
        with a matching xxh3 is mapped by the server before it answers (not missing).
        """
        ...

    def upload(self, records: Sequence[tuple[str, str, bytes]]) -> dict[str, str]:
        """Send (id, sha256, frame) records; {id: status} with a status of UPLOAD_STATUSES.

        Durable on the server before this returns; batches internally.
        """
        ...

    def load(self, id: str) -> bytes:
        """The frame of `id`, verified (decodes, xxh3 == id); `NotFoundError` if absent."""
        ...

    def load_many(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        """(id, frame or None if the server lacks it), verified as `load`, order as given."""
        ...

    def load_many_plain(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        """As `load_many`, but the *plain content* of each object: the frame decoded once
        and its xxh3-128 checked against the id (`IntegrityError` otherwise). For readers
        that want the bytes (a restore), so nothing decodes a frame twice."""
        ...

    def damaged(self, after: int = 0) -> tuple[Keys, int]:
        """(ids, cursor): ids of this namespace whose server copy was found damaged and
        quarantined after cursor `after` (0: ever), and the cursor to ask with next time.

        How a tool learns, in its normal sync passes, what it must upload again
        (docs/remote-api.md, `objects:damaged`).
        """
        ...

    def list(self, after: str = "", limit: int = 1000) -> Keys:
        """Up to `limit` mapped ids greater than `after`, in ascending order."""
        ...

    def put_ref(self, name: str, data: bytes) -> None:
        """Create ref `name`; same bytes again is a no-op, other bytes `ConflictError`."""

    def get_ref(self, name: str) -> bytes:
        """The bytes of ref `name`; `NotFoundError` if absent."""
        ...

    def list_refs(self) -> Keys:
        """All ref names, sorted."""
        ...

    def forgotten_refs(self, names: Sequence[str]) -> Keys:
        """Those of `names` a server prune forgot (in the order given): a tool does not
        send them again, and `put_ref` of one raises `ForgottenError`. `NotFoundError`
        from a server older than this endpoint."""
        ...

    def delete(self, id: str) -> None:
        """Remove the mapping of `id` (admin only); `NotFoundError` if absent."""

    def delete_ref(self, name: str) -> None:
        """Remove ref `name` (admin only); `NotFoundError` if absent."""

    def put_report(self, report: dict[str, Any]) -> None:
        """Replace this tool's status report (latest wins; docs/remote-api.md)."""

    def close(self) -> None:
        """Release connections and other resources."""


def iter_keys(backend: Backend, page: int = 1000) -> Iterator[str]:
    """Every mapped id of `backend`, paging through `list`."""
    after = ""
    while True:
        keys = backend.list(after, page)
        yield from keys
        if len(keys) < page:
            return
        after = keys[-1]
