"""Restore from the server's contents (a /v2 backend in memory): equal trees, resume
without fetching twice, corrupt chunks refused, targets checked."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from dpmsfs.browse import restore_job
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.browse.server_restore import STATE_NAME, restore_from_server
from dpmsfs.browse.source import (
    LocalThenRemote,
    MissingObjectError,
    RemoteCorruptError,
    RemoteSource,
    ServerError,
    StoreSource,
)
from dpmsfs.errors import NotFoundError, UsageError
from dpmsfs.store import schema
from dpmsfs.store.errors import ObjectNotFoundError
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType
from tests.browse.counting import CountingBackend
from tests.browse.upload import snapshot_objects, upload_snapshot
from tests.unit.store_util import new_store, snapshot

TOOL = "tester-07"


def dataset() -> dict[str, bytes]:
    rng = random.Random(7)
    files = {f"src/d{i % 5}/f{i}.c": rng.randbytes(rng.randrange(0, 40_000)) for i in range(120)}
    files["logs/big.stdf"] = rng.randbytes(6 << 20)  # several chunks
    files["logs/empty"] = b""
    return files


@pytest.fixture
def served(tmp_path: Path) -> tuple[CountingBackend, dict[str, bytes], str, Store]:
    store = new_store(str(tmp_path / "store"))
    files = dataset()
    name = snapshot(store, files)
    backend = CountingBackend()
    upload_snapshot(store, backend, name)
    return backend, files, name, store


def tree_of(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != STATE_NAME
    }


def test_full_restore_equals_snapshot_and_fetches_each_object_once(
    served: tuple[CountingBackend, dict[str, bytes], str, Store], tmp_path: Path
) -> None:
    backend, files, name, store = served
    target = tmp_path / "target"
    result = restore_from_server(RemoteSource(backend), TOOL, "latest", [], target, force=False)
    assert result.record.name == name
    assert tree_of(target) == files
    assert not (target / STATE_NAME).exists()
    assert sorted(backend.downloads) == sorted(o.hex() for o in snapshot_objects(store, name))
    assert result.stats.files == len(files) and result.stats.kept == 0


def test_interrupted_restore_resumes_without_fetching_finished_files(
    served: tuple[CountingBackend, dict[str, bytes], str, Store], tmp_path: Path
) -> None:
    backend, files, name, store = served
    target = tmp_path / "target"
    backend.fail_after = 60  # the server goes away part way through
    with pytest.raises(ServerError):
        restore_from_server(RemoteSource(backend), TOOL, name, [], target, force=False)
    assert (target / STATE_NAME).exists()
    done = tree_of(target)
    assert 0 < len(done) < len(files)
    assert all(files[path] == data for path, data in done.items())  # never half a file
    leftover = target / "src" / ".dpmsfs-restore-0123456789ab"  # as a kill would leave it
    leftover.write_bytes(b"half a file")
    backend.fail_after = None
    backend.downloads.clear()
    result = restore_from_server(RemoteSource(backend), TOOL, name, [], target, force=False)
    assert result.resumed and result.stats.kept == len(done)
    assert tree_of(target) == files and not leftover.exists()
    # Not one chunk that only finished files need was fetched again.
    chunks = chunk_ids_by_path(store, name)
    needed_again = {c for path, ids in chunks.items() if path not in done for c in ids}
    only_finished = {c for path in done for c in chunks[path]} - needed_again
    assert only_finished and not only_finished & {bytes.fromhex(d) for d in backend.downloads}


def chunk_ids_by_path(store: Store, name: str) -> dict[str, set[bytes]]:
    reader = SnapshotReader(store)
    root = reader.snapshot(name).root_tree_id
    return {
        os.fsdecode(path): set(entry.content)
        for path, entry in reader.walk(root)
        if entry.type == EntryType.FILE
    }


def test_corrupt_chunk_on_the_server_is_an_error_and_never_written(
    served: tuple[CountingBackend, dict[str, bytes], str, Store], tmp_path: Path
) -> None:
    backend, files, name, store = served
    reader_ids = snapshot_objects(store, name)
    big_chunk = reader_ids[-1].hex()  # the last object: a chunk of some file
    backend.corrupt(big_chunk)
    target = tmp_path / "target"
    # the server re-hashes before sending, quarantines the blob and answers "no such
    # object"; a client that got the bytes anyway would refuse them (next test)
    with pytest.raises((MissingObjectError, RemoteCorruptError), match=big_chunk):
        restore_from_server(RemoteSource(backend), TOOL, name, [], target, force=False)
    restored = tree_of(target)
    assert all(files[path] == data for path, data in restored.items())
    assert len(restored) < len(files)


def test_a_frame_that_lies_about_its_id_is_refused(
    served: tuple[CountingBackend, dict[str, bytes], str, Store], tmp_path: Path
) -> None:
    """Even if the backend let it through, the source checks the id itself."""
    backend, _, name, store = served
    ids = snapshot_objects(store, name)
    a, b = ids[-1].hex(), ids[-2].hex()
    backend.mapping[a] = backend.mapping[b]  # a maps to b's content
    backend.load = lambda oid: backend.server.pool[backend.mapping[oid]].frame  # type: ignore[method-assign]
    with pytest.raises(RemoteCorruptError, match="does not match its id"):
        RemoteSource(backend).read_object(bytes.fromhex(a))


def test_target_not_empty_needs_force(
    served: tuple[CountingBackend, dict[str, bytes], str, Store], tmp_path: Path
) -> None:
    backend, files, name, _ = served
    target = tmp_path / "target"
    target.mkdir()
    (target / "someone-elses").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        restore_from_server(RemoteSource(backend), TOOL, name, [], target, force=False)
    restore_from_server(RemoteSource(backend), TOOL, name, [], target, force=True)
    assert (target / "someone-elses").read_text() == "keep me"
    assert {k: v for k, v in tree_of(target).items() if k != "someone-elses"} == files


def test_unknown_snapshot_and_tool(
    served: tuple[CountingBackend, dict[str, bytes], str, Store], tmp_path: Path
) -> None:
    backend, _, _, _ = served
    with pytest.raises(NotFoundError, match="no snapshot named 2001"):
        restore_from_server(RemoteSource(backend), TOOL, "2001-01-01T000000Z", [], tmp_path / "t",
                            force=False)  # fmt: skip
    with pytest.raises(NotFoundError, match="no snapshots of tool"):
        restore_from_server(RemoteSource(CountingBackend()), "nobody", "latest", [], tmp_path / "u",
                            force=False)  # fmt: skip
    assert not os.path.exists(tmp_path / "t" / STATE_NAME)


def test_selected_paths(
    served: tuple[CountingBackend, dict[str, bytes], str, Store], tmp_path: Path
) -> None:
    backend, files, name, _ = served
    target = tmp_path / "target"
    restore_from_server(RemoteSource(backend), TOOL, name, [b"src/d1"], target, force=False)
    assert tree_of(target) == {k: v for k, v in files.items() if k.startswith("src/d1/")}


def test_local_restore_takes_what_the_store_lacks_from_the_server(
    served: tuple[CountingBackend, dict[str, bytes], str, Store], tmp_path: Path
) -> None:
    backend, files, name, store = served
    chunks = chunk_ids_by_path(store, name)
    lost = sorted(chunks["logs/big.stdf"])[:2] + sorted(chunks["src/d0/f5.c"])
    with store.db.write() as txn:
        for oid in lost:
            txn.delete(schema.T_OBJECTS, oid)
    reader = SnapshotReader(store)
    record, selection = restore_job.select(reader, name, [])
    (tmp_path / "a").mkdir()
    with pytest.raises(ObjectNotFoundError):
        restore_job.restore(reader, record, selection, tmp_path / "a", in_place=False,
                            force=False)  # fmt: skip
    target = tmp_path / "b"
    target.mkdir()
    both = SnapshotReader(LocalThenRemote(StoreSource(store), RemoteSource(backend)))
    restore_job.restore(both, record, selection, target, in_place=False, force=False)
    assert tree_of(target) == files
    assert sorted(backend.downloads) == sorted(o.hex() for o in lost)


class BatchCountingBackend(CountingBackend):
    """Counts the data requests (`load_many_plain` from the fetch threads; trees are
    fetched on their own threads)."""

    def __init__(self) -> None:
        super().__init__()
        self.data_requests = 0

    def load_many_plain(self, ids: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        if threading.current_thread().name.startswith("fetch"):
            with self._count_lock:
                self.data_requests += 1
        return super().load_many_plain(ids)


def test_small_files_of_many_directories_share_requests(tmp_path: Path) -> None:
    """Small files are grouped across directories: a tree of 300 small directories (more
    than the walk keeps open, so it finishes directories while it walks) takes a few data
    requests of 256 files, not one (or more) per directory."""
    rng = random.Random(11)
    files = {f"lot{d:03}/w{w}.csv": rng.randbytes(900 + w) for d in range(300) for w in range(2)}
    store = new_store(str(tmp_path / "store"))
    name = snapshot(store, files)
    backend = BatchCountingBackend()
    upload_snapshot(store, backend, name)
    target = tmp_path / "target"
    result = restore_from_server(RemoteSource(backend), TOOL, name, [], target, force=False)
    assert tree_of(target) == files and result.stats.files == len(files)
    assert backend.data_requests <= 4  # 600 files: 3 groups of at most 256
    reader = SnapshotReader(store)
    root = reader.snapshot(name).root_tree_id
    for d in range(300):  # each directory's own metadata was set after its files
        entry = reader.lookup(root, f"lot{d:03}".encode())
        assert entry is not None
        assert (target / f"lot{d:03}").stat().st_mtime_ns == entry.mtime_ns
