"""Where snapshot readers get objects and snapshot records: the local store, the server,
or the local store with the server behind it.

Everything that reads snapshots (reader.py, restore.py, vfs.py) goes through one of
these, so that restoring onto a formatted disk and browsing `.snapshots/` after a
local chunk was lost use the same code as a local restore. Both kinds of object hold
chunk frames exactly as `chunker.compress_chunk` makes them. Local frames are decoded
and checked against their id by `Store.decode_blob`; frames from the server are decoded
once and checked by the Backend (`load_many_plain`: xxh3-128 of the plain content == the
id the snapshot names), which hands us the plain bytes: decoding and hashing them a
second time here cost a third of a restore's CPU and checked nothing new.

The server's snapshot records are refs named `snapshot.<snapshot name>` whose body is
`SnapshotRecord.encode()` (docs/remote-api.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar

from dpmsfs.errors import DpmsError, NotFoundError, UnavailableError, UsageError
from dpmsfs.store.errors import CorruptObjectError, ObjectNotFoundError, StoreError
from dpmsfs.store.snapshots import SnapshotRecord
from dpmsfs.store.store import Store
from dpmsfs.store.tree import TreeEntry, decode_tree

if TYPE_CHECKING:
    from remote.backend import Backend

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SNAPSHOT_REF_PREFIX = "snapshot."
# A `load_many` request: at most this many ids (the server's limit is 1 000) and about
# this many bytes of plain content (known from the trees), so that one slow request
# does not hold up the rest and memory stays bounded.
BATCH_IDS = 256
BATCH_BYTES = 8 << 20
# The chunks of one large file: `objects:download` requests of about LARGE_BATCH_BYTES,
# at most LARGE_WINDOW of them in flight or waiting ahead of the writer. Memory: at most
# (LARGE_WINDOW + 1) x LARGE_BATCH_BYTES of plain content per file being restored (24 MiB
# with 8 MiB batches and a window of 2) times the restore workers. Measured on the 2.2 GB
# tree (shared machine): 4 MiB x 3 took 10.5-13.4 s (peak RSS 136-143 MB), 8 MiB x 2
# 8.9-9.6 s (156-159 MB), 16 MiB x 1 10.6 s (173 MB): fewer requests, same overlap.
LARGE_BATCH_BYTES = 8 << 20
LARGE_WINDOW = 2
# Trees fetched ahead of the walk and not read yet, at most (a few KiB each, typically).
PREFETCH_MAX = 4096
_NOT_ON_SERVER = "the server has no intact copy of object %s"


class ObjectSource(Protocol):
    """Verified objects and snapshot records, from wherever they are kept."""

    @property
    def batch_bytes(self) -> int:
        """How much small-file content a restore should ask for in one `read_objects`
        call: 0 when single reads cost nothing extra (the local store)."""
        ...

    def read_object(self, oid: bytes) -> bytes:
        """The plain content of object `oid`, checked against the id."""
        ...

    def read_objects(self, oids: Sequence[bytes]) -> Iterator[bytes]:
        """Plain contents of `oids`, in order, each checked; raises like read_object.
        For many small objects (one request per batch from the server)."""
        ...

    def read_ahead(
        self, oids: Sequence[bytes], window: int, size: int | None = None
    ) -> Iterator[bytes]:
        """As read_objects, for the chunks of one large file (`size` bytes, if known):
        several fetched at once where fetching has latency (the server)."""
        ...

    def prefetch(self, oids: Sequence[bytes]) -> None:
        """A hint: these objects (subtrees of a directory just read) will be read soon."""
        ...

    def get_snapshot(self, name: str) -> SnapshotRecord | None: ...

    def latest_snapshot(self) -> SnapshotRecord | None: ...

    def list_snapshots(self) -> list[SnapshotRecord]: ...


class MissingObjectError(NotFoundError):
    """An object the source does not hold (locally: not indexed; server: not mapped)."""


class RemoteCorruptError(DpmsError):
    """The server sent bytes that are not what the id names."""


class ServerError(UnavailableError):
    """The server could not be asked (unreachable, refused the token, failed)."""


def read_tree(source: ObjectSource, tree_id: bytes) -> list[TreeEntry]:
    return decode_tree(source.read_object(tree_id))


class StoreSource:
    """The local store, as it always was."""

    batch_bytes = 0

    def __init__(self, store: Store) -> None:
        self.store = store

    def read_object(self, oid: bytes) -> bytes:
        return self.store.read_object(oid)

    def read_objects(self, oids: Sequence[bytes]) -> Iterator[bytes]:
        return (self.store.read_object(oid) for oid in oids)

    def read_ahead(
        self, oids: Sequence[bytes], window: int, size: int | None = None
    ) -> Iterator[bytes]:
        return self.read_objects(oids)

    def prefetch(self, oids: Sequence[bytes]) -> None:
        pass  # local reads have no latency to hide

    def get_snapshot(self, name: str) -> SnapshotRecord | None:
        return self.store.get_snapshot(name)

    def latest_snapshot(self) -> SnapshotRecord | None:
        return self.store.latest_snapshot()

    def list_snapshots(self) -> list[SnapshotRecord]:
        return list(self.store.list_snapshots())


class RemoteSource:
    """A tool's namespace on the central server, through a `remote.Backend`.

    Reads of large files run `prefetch` requests ahead on a small pool of threads (each
    HTTP request on its own pooled connection), so a restore downloads several chunks at
    once while it writes another.
    """

    batch_bytes = BATCH_BYTES

    def __init__(self, backend: Backend, *, connections: int = 4) -> None:
        self.backend = backend
        self._pool = ThreadPoolExecutor(max_workers=connections, thread_name_prefix="fetch")
        # Trees on their own threads: the walk waits for them, and must not queue behind
        # the chunks of large files. Fetched a directory ahead (`prefetch`): measured on a
        # full restore of the 2.2 GB tree, the walk spent 27 of 83 s waiting for its 736
        # trees one request at a time.
        self._tree_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="trees")
        self._prefetched: dict[bytes, tuple[Future[list[bytes]], int]] = {}
        self._prefetch_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self.fetched_objects = 0  # objects downloaded, for progress and tests
        self.fetched_bytes = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._tree_pool.shutdown(wait=True, cancel_futures=True)
        self.backend.close()

    # --- objects -----------------------------------------------------------------------
    def prefetch(self, oids: Sequence[bytes]) -> None:
        with self._prefetch_lock:
            room = PREFETCH_MAX - len(self._prefetched)
            todo = [oid for oid in dict.fromkeys(oids) if oid not in self._prefetched][:room]
            for start in range(0, len(todo), BATCH_IDS):
                batch = todo[start : start + BATCH_IDS]
                future = self._tree_pool.submit(self._fetch_batch, batch)
                for index, oid in enumerate(batch):
                    self._prefetched[oid] = (future, index)

    def read_object(self, oid: bytes) -> bytes:
        with self._prefetch_lock:
            ahead = self._prefetched.pop(oid, None)
        if ahead is not None:
            try:
                return ahead[0].result()[ahead[1]]
            except DpmsError:
                pass  # (one of) the batch failed: ask for this one alone, for its own error
        return self._fetch_batch([oid])[0]

    def read_objects(self, oids: Sequence[bytes]) -> Iterator[bytes]:
        """Batches of `load_many`, up to two requests in flight ahead of the consumer."""
        batches = [list(oids[i : i + BATCH_IDS]) for i in range(0, len(oids), BATCH_IDS)]
        pending: list[Future[list[bytes]]] = []
        try:
            for batch in batches:
                pending.append(self._pool.submit(self._fetch_batch, batch))
                if len(pending) > 2:
                    yield from pending.pop(0).result()
            while pending:
                yield from pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()

    def read_ahead(
        self, oids: Sequence[bytes], window: int, size: int | None = None
    ) -> Iterator[bytes]:
        """The contents of `oids` in order (the chunks of one large file of `size` bytes):
        `objects:download` batches of about LARGE_BATCH_BYTES (chunk sizes estimated from
        `size`), up to LARGE_WINDOW batches ahead of the consumer. Without `size`, batches
        of `window` chunks."""
        per = window
        if size and oids:
            per = max(1, LARGE_BATCH_BYTES // max(1, size // len(oids)))
        per = min(per, BATCH_IDS)
        batches = [list(oids[i : i + per]) for i in range(0, len(oids), per)]
        pending: list[Future[list[bytes]]] = []
        try:
            for batch in batches:
                pending.append(self._pool.submit(self._fetch_batch, batch))
                if len(pending) > LARGE_WINDOW:
                    yield from pending.pop(0).result()
            while pending:
                yield from pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()

    def _fetch_batch(self, batch: list[bytes]) -> list[bytes]:
        wanted = [oid.hex() for oid in batch]
        out = []
        for (got, plain), oid in zip(self._call(self._load_many, wanted), batch, strict=True):
            if got != oid.hex():
                raise RemoteCorruptError(f"the server answered {got} for {oid.hex()}")
            if plain is None:
                raise MissingObjectError(_NOT_ON_SERVER % oid.hex())
            out.append(self._count(plain))
        return out

    def _load_many(self, ids: list[str]) -> list[tuple[str, bytes | None]]:
        return list(self.backend.load_many_plain(ids))

    def _count(self, data: bytes) -> bytes:
        with self._counter_lock:
            self.fetched_objects += 1
            self.fetched_bytes += len(data)
        return data

    def _call(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a backend call, turning the remote layer's errors into ours (one line)."""
        from remote import errors

        try:
            return func(*args, **kwargs)
        except errors.NotFoundError:
            raise
        except errors.AuthError as exc:
            raise ServerError(f"the server refused the token: {exc}") from None
        except errors.IntegrityError as exc:
            raise RemoteCorruptError(f"the server sent a corrupt object: {exc}") from None
        except errors.RemoteError as exc:
            raise ServerError(f"server: {exc}") from None

    # --- snapshots ---------------------------------------------------------------------
    def snapshot_names(self) -> list[str]:
        refs = self._call(self.backend.list_refs)
        names = [r[len(SNAPSHOT_REF_PREFIX) :] for r in refs if r.startswith(SNAPSHOT_REF_PREFIX)]
        return sorted(names)  # snapshot names sort chronologically (store/snapshots.py)

    def get_snapshot(self, name: str) -> SnapshotRecord | None:
        from remote.errors import NotFoundError as RemoteNotFound

        try:
            body = self._call(self.backend.get_ref, SNAPSHOT_REF_PREFIX + name)
        except RemoteNotFound:
            return None
        except ValueError:  # a name the server's naming rules refuse: not there either
            return None
        try:
            record = SnapshotRecord.decode(body)
        except StoreError as exc:
            raise RemoteCorruptError(f"snapshot {name} on the server: {exc}") from None
        if record.name != name:
            raise RemoteCorruptError(f"the server's ref for snapshot {name} names {record.name}")
        return record

    def latest_snapshot(self) -> SnapshotRecord | None:
        names = self.snapshot_names()
        return self.get_snapshot(names[-1]) if names else None

    def list_snapshots(self) -> list[SnapshotRecord]:
        records = (self.get_snapshot(name) for name in self.snapshot_names())
        return [r for r in records if r is not None]


class LocalThenRemote:
    """The local store first; what it lacks or holds corrupt comes from the server."""

    batch_bytes = 0

    def __init__(self, local: StoreSource, remote: RemoteSource) -> None:
        self.local = local
        self.remote = remote

    def read_object(self, oid: bytes) -> bytes:
        try:
            return self.local.read_object(oid)
        except (ObjectNotFoundError, CorruptObjectError) as exc:
            log.warning("object %s: %s; fetching it from the server", oid.hex(), exc)
            return self.remote.read_object(oid)

    def read_objects(self, oids: Sequence[bytes]) -> Iterator[bytes]:
        return (self.read_object(oid) for oid in oids)

    def read_ahead(
        self, oids: Sequence[bytes], window: int, size: int | None = None
    ) -> Iterator[bytes]:
        return self.read_objects(oids)

    def prefetch(self, oids: Sequence[bytes]) -> None:
        pass  # local reads have no latency to hide

    def get_snapshot(self, name: str) -> SnapshotRecord | None:
        return self.local.get_snapshot(name) or self.remote.get_snapshot(name)

    def latest_snapshot(self) -> SnapshotRecord | None:
        return self.local.latest_snapshot()

    def list_snapshots(self) -> list[SnapshotRecord]:
        return self.local.list_snapshots()


def read_token(token_file: Path) -> str:
    """The tool's bearer token: the file's first line (the file is kept 0600 by root)."""
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise UsageError(f"{token_file}: cannot read the token: {exc.strerror}") from None
    if not token or "\n" in token:
        raise UsageError(f"{token_file}: expected one line holding the tool's token")
    return token


def open_server(
    urls: Sequence[str],
    tool: str,
    token_file: Path,
    tls_ca: Path | None = None,
    *,
    deadline: float = 30.0,
    connections: int = 4,
) -> RemoteSource:
    """The tool's namespace on the server pair at `urls` (tried in order, failing over).

    `deadline`: how long a call keeps retrying a server that does not answer before the
    command gives up (the daemon's sync waits longer; a person at a terminal should not).
    """
    from remote.http_backend import HttpBackend
    from remote.retry import Retrier, RetryPolicy

    token = read_token(token_file)
    try:
        backend = HttpBackend(
            list(urls),
            tool,
            token,
            retrier=Retrier(RetryPolicy(deadline=deadline)),
            tls_verify=str(tls_ca) if tls_ca else True,
            pool_size=connections + 3,
        )
    except ValueError as exc:
        raise UsageError(f"tool {tool!r}: {exc}") from None
    return RemoteSource(backend, connections=connections)
