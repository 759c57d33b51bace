"""Through a real mount: every saved state becomes a version, snapshots hold the tree."""

from __future__ import annotations

import os
from pathlib import Path

from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType
from tests.mount.conftest import CliMount, cli_snapshot, run_cli


def files_of(store_dir: Path, name: str) -> dict[str, bytes | str]:
    """path -> content (files) or 'dir' / '-> target' of one snapshot."""
    with Store.open(str(store_dir), readonly=True) as store:
        reader = SnapshotReader(store)
        record = reader.snapshot(name)
        result: dict[str, bytes | str] = {}
        for path, entry in reader.walk(record.root_tree_id):
            key = os.fsdecode(path)
            if entry.type == EntryType.FILE:
                result[key] = reader.read_file(entry)
            elif entry.type == EntryType.DIR:
                result[key] = "dir"
            elif entry.type == EntryType.SYMLINK:
                result[key] = "-> " + os.fsdecode(entry.target)
        return result


def test_existing_tree_is_imported_and_edits_become_versions(
    workdir: Path, store_dir: Path
) -> None:
    (workdir / "pgm" / "src").mkdir(parents=True)
    (workdir / "pgm" / "src" / "main.cpp").write_text("int main() { return 0; }\n")
    (workdir / "results").mkdir()
    (workdir / "results" / "lot1.stdf").write_bytes(os.urandom(300_000))
    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        first = cli_snapshot(workdir, store_dir, "imported")
        assert files_of(store_dir, first) == {
            "pgm": "dir",
            "pgm/src": "dir",
            "pgm/src/main.cpp": b"int main() { return 0; }\n",
            "results": "dir",
            "results/lot1.stdf": (workdir / "results" / "lot1.stdf").read_bytes(),
        }
        (workdir / "pgm" / "src" / "main.cpp").write_text("int main() { return 1; }\n")
        with open(workdir / "results" / "lot1.stdf", "ab") as f:
            f.write(b"appended")
        os.rename(workdir / "pgm", workdir / "pgm-v2")
        os.symlink("pgm-v2", workdir / "pgm")
        (workdir / "results" / "gone.txt").write_text("short-lived")
        os.unlink(workdir / "results" / "gone.txt")
        second = cli_snapshot(workdir, store_dir, "edited")
        after = files_of(store_dir, second)
        assert after["pgm-v2/src/main.cpp"] == b"int main() { return 1; }\n"
        assert after["pgm"] == "-> pgm-v2"
        assert after["results/lot1.stdf"].endswith(b"appended")  # type: ignore[union-attr]
        assert "results/gone.txt" not in after
        assert "pgm/src/main.cpp" not in after
        # The first snapshot is untouched.
        assert files_of(store_dir, first)["pgm/src/main.cpp"] == b"int main() { return 0; }\n"
    finally:
        mount.stop()
    listing = run_cli("snapshots", str(workdir), "--store", str(store_dir))
    assert listing.returncode == 0
    assert first in listing.stdout and "imported" in listing.stdout
    assert second in listing.stdout and "edited" in listing.stdout
    verify = run_cli("verify", str(workdir), "--store", str(store_dir), "--read-data")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_changes_while_unmounted_are_found_at_the_next_mount(
    workdir: Path, store_dir: Path
) -> None:
    (workdir / "a.txt").write_text("one")
    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        first = cli_snapshot(workdir, store_dir)
    finally:
        mount.stop()
    (workdir / "a.txt").write_text("two")  # behind dpmsfs's back
    (workdir / "b.txt").write_text("new")
    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        second = cli_snapshot(workdir, store_dir)
    finally:
        mount.stop()
    assert files_of(store_dir, first) == {"a.txt": b"one"}
    assert files_of(store_dir, second) == {"a.txt": b"two", "b.txt": b"new"}


def test_status_reports_capture(mounted: CliMount, store_dir: Path) -> None:
    (mounted.workdir / "x").write_bytes(b"x" * 1000)
    cli_snapshot(mounted.workdir, store_dir)
    result = run_cli("status", str(mounted.workdir), "--store", str(store_dir), "--json")
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout)
    assert report["daemon"] == "running"
    assert report["mounted"] is True
    assert report["captured_files"] == 1
    assert report["captured_bytes"] == 1000
    assert report["pending_files"] == 0
    assert report["last_snapshot"]


def test_excluded_files_are_not_captured(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    (work / "keep.c").write_text("keep")
    (work / "scratch.tmp").write_text("temporary")
    (work / "core").write_bytes(b"\0" * 100)
    name = cli_snapshot(work, store_dir)
    assert files_of(store_dir, name) == {"keep.c": b"keep"}


def test_large_directory_rename_and_deep_paths(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    (work / "big").mkdir()
    for i in range(300):
        (work / "big" / f"f{i:04d}").write_text(str(i))
    deep = work
    for _ in range(30):  # a path of ~3,000 bytes: LMDB keys cannot hold it whole
        deep = deep / ("d" * 99)
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep")
    first = cli_snapshot(work, store_dir)
    os.rename(work / "big", work / "renamed")
    second = cli_snapshot(work, store_dir)
    before, after = files_of(store_dir, first), files_of(store_dir, second)
    assert before["big/f0299"] == b"299"
    assert after["renamed/f0299"] == b"299" and "big/f0299" not in after
    deep_key = "/".join(["d" * 99] * 30) + "/leaf"
    assert after[deep_key] == b"deep"
