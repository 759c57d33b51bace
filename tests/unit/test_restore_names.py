"""How restored files get their names: unnamed (O_TMPFILE) then linked for new names,
a named temporary renamed over an existing file, and nothing half-written either way."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from dpmsfs.browse import restore as restore_module
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.browse.restore import TEMP_PREFIX, RestoreError, Restorer
from dpmsfs.store.store import Store
from tests.unit.store_util import new_store, snapshot

FILES = {
    "a.bin": random.Random(1).randbytes(3 << 20),
    "d/b.txt": b"b" * 1000,
    "d/c.txt": b"",
}


@pytest.fixture
def store_and_snapshot(tmp_path: Path) -> tuple[Store, str]:
    store = new_store(str(tmp_path / "store"))
    return store, snapshot(store, FILES)


def restore_into(store: Store, name: str, target: Path, *, overwrite: bool = False) -> Restorer:
    reader = SnapshotReader(store)
    restorer = Restorer(reader, overwrite=overwrite, delete_extra=False, restore_owner=False)
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        restorer.restore_tree(reader.snapshot(name).root_tree_id, fd)
    finally:
        os.close(fd)
        restorer.close()
    return restorer


def tree_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_new_names_come_from_unnamed_files(
    tmp_path: Path, store_and_snapshot: tuple[Store, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, name = store_and_snapshot
    renames: list[bytes] = []
    real_rename = os.rename
    monkeypatch.setattr(
        restore_module.os, "rename", lambda a, *r, **k: renames.append(a) or real_rename(a, *r, **k)
    )
    (tmp_path / "out").mkdir()
    restorer = restore_into(store, name, tmp_path / "out")
    assert tree_of(tmp_path / "out") == FILES
    assert restorer._tmpfile_ok and renames == []  # no temporary names at all


def test_existing_files_are_replaced_by_rename(
    tmp_path: Path, store_and_snapshot: tuple[Store, str]
) -> None:
    store, name = store_and_snapshot
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "a.bin").write_text("old")
    (out / "d" / "b.txt").write_text("old")
    restore_into(store, name, out, overwrite=True)
    assert tree_of(out) == FILES
    assert not [p for p in out.rglob("*") if p.name.startswith(TEMP_PREFIX.decode())]


def test_without_o_tmpfile_named_temporaries_are_used(
    tmp_path: Path, store_and_snapshot: tuple[Store, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on a FUSE target (the work directory's own mount answers EOPNOTSUPP)."""
    store, name = store_and_snapshot
    real_open = os.open
    refused: list[int] = []

    def no_tmpfile(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            refused.append(flags)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(restore_module.os, "open", no_tmpfile)
    (tmp_path / "out").mkdir()
    restorer = restore_into(store, name, tmp_path / "out")
    assert tree_of(tmp_path / "out") == FILES
    assert not restorer._tmpfile_ok and len(refused) == 1  # asked once, then not again
    assert not [p for p in (tmp_path / "out").rglob(TEMP_PREFIX.decode() + "*")]


def test_a_file_that_fails_to_verify_never_gets_its_name(
    tmp_path: Path, store_and_snapshot: tuple[Store, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, name = store_and_snapshot

    def corrupt(self: Restorer, fd: int, entry: object, lengths: list[int]) -> None:
        raise RestoreError("written content does not verify")

    monkeypatch.setattr(Restorer, "_verify_written", corrupt)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RestoreError):
        restore_into(store, name, out)
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no name, no temporary
