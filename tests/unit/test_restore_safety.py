"""A damaged or crafted store, or a hostile target, never makes a restore write outside it."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.browse.restore import Restorer
from dpmsfs.cli.cmd_restore import relative_path
from dpmsfs.errors import UsageError
from dpmsfs.store import EntryType, ObjectType, SnapshotRecord, Store, TreeEntry
from dpmsfs.store.errors import TreeFormatError
from tests.unit.store_util import T0, new_store, store_file

_HEADER = struct.Struct(">4sBI")
_ENTRY = struct.Struct(">HBIIIQqQQIHI")

BAD_NAMES = [b"..", b".", b"../../escape", b"sub/escape", b"/tmp/escape", b"esc\0ape", b""]


def raw_tree(entries: list[TreeEntry]) -> bytes:
    """The tree encoding of docs/design.md, without any of encode_tree's checks."""
    parts = [_HEADER.pack(b"DTRE", 1, len(entries))]
    for e in entries:
        parts.append(_ENTRY.pack(len(e.name), e.type, e.mode, e.uid, e.gid, e.size, e.mtime_ns,
                                 e.rdev, e.link_key, len(e.target), len(e.xattrs),
                                 len(e.content)))  # fmt: skip
        parts += [e.name, e.target, b"".join(e.content)]
    return b"".join(parts)


def file_entry(store: Store, name: bytes, data: bytes = b"payload") -> TreeEntry:
    return TreeEntry(name, EntryType.FILE, 0o644, 0, 0, len(data), T0,
                     content=store_file(store, data))  # fmt: skip


def add_snapshot(store: Store, root: bytes, name: str = "2024-05-01T120000Z") -> str:
    store.flush()
    store.add_snapshot(SnapshotRecord(name, T0, root))
    return name


def bad_entry(store: Store, name: bytes, kind: str) -> TreeEntry:
    if kind == "file":
        return file_entry(store, name)
    if kind == "symlink":
        return TreeEntry(name, EntryType.SYMLINK, 0o777, 0, 0, 0, T0, target=b"/etc/passwd")
    sub, _ = store.write_object(ObjectType.TREE, raw_tree([file_entry(store, b"x")]))
    return TreeEntry(name, EntryType.DIR, 0o755, 0, 0, 0, T0, content=(sub,))


def crafted_root(store: Store, bad: TreeEntry, *, nested: bool) -> bytes:
    """A root tree holding `bad`, at the top or one directory down, beside a good file."""
    good = file_entry(store, b"good")
    if nested:
        sub, _ = store.write_object(ObjectType.TREE, raw_tree([bad]))
        top = [TreeEntry(b"d", EntryType.DIR, 0o755, 0, 0, 0, T0, content=(sub,)), good]
    else:
        top = sorted([good, bad], key=lambda e: e.name)
    root, _ = store.write_object(ObjectType.TREE, raw_tree(top))
    return root


def outside_files(base: Path, target: Path) -> list[str]:
    """Everything under `base` that is not `target` or below it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path != target and target not in path.parents:
                found.append(str(path.relative_to(base)))
    return sorted(found)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """base/ holding target/ (deep inside, so '../..' stays inside base) and a sentinel."""
    target = tmp_path / "base" / "a" / "b" / "target"
    target.mkdir(parents=True)
    (tmp_path / "base" / "sentinel").write_text("s")
    return tmp_path / "base", target


def baseline(base: Path, target: Path) -> list[str]:
    return [p for p in outside_files(base, target) if p != "sentinel"]


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_crafted_names_never_escape(
    tmp_path: Path, layout: tuple[Path, Path], name: bytes, nested: bool, kind: str
) -> None:
    base, target = layout
    before = outside_files(base, target)
    store = new_store(str(tmp_path / "store"))
    try:
        root = crafted_root(store, bad_entry(store, name, kind), nested=nested)
        snap = add_snapshot(store, root)
        target_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        restorer = Restorer(SnapshotReader(store), overwrite=True, delete_extra=True,
                            restore_owner=True)  # fmt: skip
        try:
            with pytest.raises(TreeFormatError):
                restorer.restore_tree(root, target_fd)
        finally:
            restorer.close()
            os.close(target_fd)
    finally:
        store.close()
    assert outside_files(base, target) == before
    assert not Path("/tmp/escape").exists()

    if kind != "file":
        return
    (tmp_path / "work").mkdir()
    # The CLI: a clear one-line error, nothing outside the target either.
    result = subprocess.run(
        [sys.executable, "-m", "dpmsfs.cli.main", "restore", str(tmp_path / "work"),
         "--store", str(tmp_path / "store"), "--snapshot", snap, "--to", str(target)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "invalid entry name" in result.stderr or "entry" in result.stderr, result.stderr
    assert outside_files(base, target) == before


def test_symlink_in_target_where_a_directory_goes(
    tmp_path: Path, layout: tuple[Path, Path]
) -> None:
    base, target = layout
    outside = base / "outside"
    outside.mkdir()
    store = new_store(str(tmp_path / "store"))
    try:
        sub, _ = store.write_object(ObjectType.TREE, raw_tree([file_entry(store, b"f")]))
        root, _ = store.write_tree(
            [TreeEntry(b"d", EntryType.DIR, 0o755, 0, 0, 0, T0, content=(sub,))]
        )
        snap = add_snapshot(store, root)
    finally:
        store.close()
    os.symlink(outside, target / "d")
    (tmp_path / "work").mkdir()

    def dpmsfs_restore(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dpmsfs.cli.main", "restore", str(tmp_path / "work"),
             "--store", str(tmp_path / "store"), "--snapshot", snap, *args],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip

    # One path below the symlink: refused.
    result = dpmsfs_restore("d/f", "--to", str(target), "--force")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert os.listdir(outside) == []
    # The whole tree without --force: the symlink is left alone, reported.
    result = dpmsfs_restore("--to", str(target))
    assert result.returncode == 1, result.stderr
    assert os.listdir(outside) == [] and os.path.islink(target / "d")
    # With --force: the symlink is replaced by the directory, nothing written outside.
    result = dpmsfs_restore("--to", str(target), "--force")
    assert result.returncode == 0, result.stderr
    assert os.listdir(outside) == []
    assert not os.path.islink(target / "d") and (target / "d" / "f").read_bytes() == b"payload"
    assert outside_files(base, target) == ["a", "a/b", "outside", "sentinel"]


@pytest.mark.parametrize("path", ["..", "../x", "a/../../x", "a/..", "/elsewhere/x", "./../x"])
def test_dotdot_paths_are_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(UsageError):
        relative_path(tmp_path / "work", path)
    (tmp_path / "work").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "dpmsfs.cli.main", "restore", str(tmp_path / "work"), "--store",
         str(tmp_path / "nostore"), "--snapshot", "latest", path, "--to", str(tmp_path / "t")],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "t").exists()
