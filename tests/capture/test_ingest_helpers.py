"""Ingest helpers without a mount: read-ahead, the parent-directory cache, exclusions."""

from __future__ import annotations

import fnmatch
import os
import string
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpmsfs.capture.ingest import ParentDirs
from dpmsfs.capture.prefetch import Prefetcher
from dpmsfs.config import DEFAULT_EXCLUDES, Exclusions


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield tmp_path, fd
    finally:
        os.close(fd)


def _wait(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_prefetch_advises_regular_files_only(root: tuple[Path, int]) -> None:
    path, fd = root
    (path / "d").mkdir()
    for i in range(5):
        (path / "d" / f"f{i}").write_bytes(b"x" * 1000)
    (path / "empty").write_bytes(b"")
    os.mkfifo(path / "fifo")  # opening it could block or have effects: never opened
    os.symlink("/dev/zero", path / "link")
    paths = [b"d/f0", b"fifo", b"link", b"empty", None, b"missing/x", b"../escape"]
    paths += [f"d/f{i}".encode() for i in range(1, 5)]
    prefetcher = Prefetcher(fd, paths, ahead=len(paths))
    prefetcher.start()
    _wait(lambda: not prefetcher._thread.is_alive())
    prefetcher.stop()
    assert prefetcher.advised == 5


def test_prefetch_stays_ahead_of_the_workers_by_at_most_ahead(root: tuple[Path, int]) -> None:
    path, fd = root
    for i in range(20):
        (path / f"f{i}").write_bytes(b"y" * 10)
    prefetcher = Prefetcher(fd, [f"f{i}".encode() for i in range(20)], ahead=3)
    prefetcher.start()
    _wait(lambda: prefetcher.advised == 3)
    time.sleep(0.05)
    assert prefetcher.advised == 3  # waits for the workers
    for _ in range(4):
        prefetcher.taken()
    _wait(lambda: prefetcher.advised == 7)
    prefetcher.stop()  # returns although most paths were never taken
    assert not prefetcher._thread.is_alive()


def test_parent_dirs_reuses_the_directory_and_refuses_bad_names(root: tuple[Path, int]) -> None:
    path, fd = root
    (path / "a" / "b").mkdir(parents=True)
    (path / "a" / "b" / "x").write_text("x")
    (path / "a" / "b" / "y").write_text("y")
    (path / "top").write_text("t")
    parents = ParentDirs(fd)
    try:
        fd_x, name_x = parents.open(b"a/b/x")
        fd_y, name_y = parents.open(b"a/b/y")
        assert fd_x == fd_y and (name_x, name_y) == (b"x", b"y")
        assert os.stat(name_y, dir_fd=fd_y).st_size == 1
        fd_top, name_top = parents.open(b"top")
        assert name_top == b"top" and os.stat(name_top, dir_fd=fd_top).st_size == 1
        for bad in (b"a/b/..", b"a/b/", b"a/../top", b"a//b/x"):
            with pytest.raises(OSError):
                parents.open(bad)
        os.symlink(path / "a", path / "sym")
        with pytest.raises(OSError):
            parents.open(b"sym/b/x")  # components are never followed as symlinks
    finally:
        parents.close()


def test_parent_dirs_after_a_bad_name_from_the_cached_directory(root: tuple[Path, int]) -> None:
    path, fd = root
    (path / "d").mkdir()
    (path / "d" / "f").write_text("f")
    parents = ParentDirs(fd)
    try:
        parents.open(b"d/f")
        with pytest.raises(OSError):
            parents.open(b"d/..")
        assert parents.open(b"d/f")[1] == b"f"
    finally:
        parents.close()


NAMES = st.text(alphabet=string.ascii_letters + string.digits + ".~*?[]-_ é\n", max_size=12)
PATTERNS = st.lists(st.text(alphabet="ab.*?[]!~-c", min_size=1, max_size=6), min_size=0, max_size=4)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(patterns=PATTERNS, name=NAMES)
def test_exclusions_match_fnmatchcase_exactly(patterns: list[str], name: str) -> None:
    encoded = os.fsencode(name)
    want = any(fnmatch.fnmatchcase(name, p) for p in patterns)
    assert Exclusions(tuple(patterns)).excludes(encoded) == want


def test_exclusions_of_paths() -> None:
    ex = Exclusions(DEFAULT_EXCLUDES)
    assert ex.excludes_path(b"results/core.1234")
    assert ex.excludes_path(b"tmp.swp/inside/file")
    assert not ex.excludes_path(b"pgm/core_test/main.cpp")
    assert not Exclusions(()).excludes_path(b"a.tmp")


def test_work_queue_hands_out_largest_and_smallest_and_budgets_dense_bytes() -> None:
    from dpmsfs.capture.engine import _Work, _WorkQueue
    from dpmsfs.capture.state import JournalEntry, Pending

    entry = JournalEntry(seq=1, flags=Pending(0), first_ns=0, last_ns=0)
    sizes = [5, 900, 10, 70, 0, 3000]
    queue = _WorkQueue(
        [_Work(f"k{i}".encode(), f"p{i}".encode(), entry, None, s) for i, s in enumerate(sizes)],
        dense_bytes=100,
    )
    assert [w.size for w in queue.small_first] == sorted(sizes)
    taken = [queue.next(large=True), queue.next(), queue.next(), queue.next(large=True)]
    assert [w.size for w in taken if w] == [3000, 0, 5, 900]
    assert [w.size for w in iter(queue.next, None)] == [10, 70]
    assert queue.next(large=True) is None
    assert queue.take_dense(60) and not queue.take_dense(60) and queue.take_dense(40)


@pytest.mark.parametrize("size", [0, 1, 4096, 512 << 10, (512 << 10) + 1, 3 << 20])
def test_capture_ids_are_the_chunkers_whatever_the_read_path(
    root: tuple[Path, int], size: int
) -> None:
    """Small files take a one-read path, larger ones the chunker: same ids either way."""
    from chunker import DEFAULT_PARAMS, chunk_buffer, chunk_id
    from dpmsfs.capture import ingest
    from dpmsfs.store.store import Store

    path, _fd = root
    data = os.urandom(size // 2) + bytes(size - size // 2)
    (path / "work").mkdir()
    (path / "work" / "f.bin").write_bytes(data)
    work_fd = os.open(path / "work", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with Store.create(str(path / "store"), DEFAULT_PARAMS.identity) as store:
            outcome = ingest.capture(work_fd, b"f.bin", store, None, False, 1)
            assert isinstance(outcome, ingest.Captured)
            want = tuple(chunk_id(c) for c in chunk_buffer(data, DEFAULT_PARAMS))
            assert outcome.state.entry.content == want
            assert outcome.read_bytes == size
            assert b"".join(store.read_object(i) for i in want) == data
    finally:
        os.close(work_fd)


@pytest.mark.parametrize("size", [4096, 3 << 20])
@pytest.mark.parametrize("accept_growth", [False, True])
def test_a_file_appended_to_during_the_read(
    root: tuple[Path, int], size: int, accept_growth: bool
) -> None:
    """A file that grows while it is read is Unstable, unless the engine asks to accept
    growth (a datalog never quiet): then it is captured exactly as it was when the read
    began, with that moment's size, and its ctime says it changed since."""
    from chunker import DEFAULT_PARAMS
    from dpmsfs.capture import ingest
    from dpmsfs.store.store import Store

    path, _fd = root
    data = os.urandom(size)
    (path / "work").mkdir()
    log_file = path / "work" / "lot.log"
    log_file.write_bytes(data)
    before_ctime = os.stat(log_file).st_ctime_ns
    appended: list[int] = []

    def append_once(_n: int) -> bool:  # called by the store while the file is being read
        if not appended:
            time.sleep(0.01)  # a later mtime/ctime
            with open(log_file, "ab") as f:
                appended.append(f.write(b"record\n" * 10))
        return False

    work_fd = os.open(path / "work", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with Store.create(str(path / "store"), DEFAULT_PARAMS.identity) as store:
            outcome = ingest.capture(work_fd, b"lot.log", store, None, False, 1,
                                     dense=append_once, accept_growth=accept_growth)  # fmt: skip
            assert appended, "the file grew during the read"
            if not accept_growth:
                assert isinstance(outcome, ingest.Unstable)
                return
            assert isinstance(outcome, ingest.Captured)
            entry = outcome.state.entry
            assert entry.size == size
            assert b"".join(store.read_object(i) for i in entry.content) == data
            assert outcome.state.ctime_ns == before_ctime != os.stat(log_file).st_ctime_ns
    finally:
        os.close(work_fd)


def test_a_file_rewritten_shorter_during_the_read_is_never_accepted(root: tuple[Path, int]) -> None:
    """Growth is the only change accepted: a file truncated while read stays Unstable."""
    from chunker import DEFAULT_PARAMS
    from dpmsfs.capture import ingest
    from dpmsfs.store.store import Store

    path, _fd = root
    (path / "work").mkdir()
    target = path / "work" / "f.bin"
    target.write_bytes(os.urandom(3 << 20))

    def truncate(_n: int) -> bool:
        os.truncate(target, 1000)
        return False

    work_fd = os.open(path / "work", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with Store.create(str(path / "store"), DEFAULT_PARAMS.identity) as store:
            outcome = ingest.capture(work_fd, b"f.bin", store, None, False, 1,
                                     dense=truncate, accept_growth=True)  # fmt: skip
            assert isinstance(outcome, ingest.Unstable)
    finally:
        os.close(work_fd)
