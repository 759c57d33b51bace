"""A flipped byte in a pack: verify --read-data finds it and says what it costs.

docs/design.md ("How verify checks it"): structure checks (no --read-data) compare index,
pack headers and checksummed footers and never read object payloads, so a flipped
payload byte passes them; --read-data reads and hashes every object and reports the
damaged object with the snapshots and paths it affects. A flipped footer byte breaks
the footer checksum, which the structure checks catch on their own.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.store.errors import CorruptObjectError
from dpmsfs.store.packs import RECORD, TRAILER, pack_path
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType
from tests.fault.conftest import needs_fuse
from tests.fault.util import damage_lines, snapshot_cli, verify_cli, wait_for_control
from tests.mount.conftest import CliMount

pytestmark = needs_fuse


def flip(path: str, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        (byte,) = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte ^ 0x40]), offset)
    finally:
        os.close(fd)


def make_store(workdir: Path, store_dir: Path) -> tuple[str, bytes]:
    """A store with one snapshot holding pgm/flow.bin; returns (snapshot, file content)."""
    content = random.Random(7).randbytes(300_000)
    (workdir / "pgm").mkdir()
    (workdir / "pgm" / "flow.bin").write_bytes(content)
    (workdir / "other.txt").write_text("untouched")
    mount = CliMount(workdir, "--store", str(store_dir))
    try:
        wait_for_control(workdir, store_dir)
        name = snapshot_cli(workdir, store_dir)
    finally:
        mount.stop()
    clean = verify_cli(workdir, store_dir, "--read-data")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    return name, content


def chunk_of(store_dir: Path, snapshot: str, path: bytes) -> tuple[bytes, str, int, int]:
    """(chunk id, pack file, record offset, payload length) of a file's only chunk."""
    with Store.open(str(store_dir), readonly=True) as store:
        reader = SnapshotReader(store)
        entry = reader.lookup(reader.snapshot(snapshot).root_tree_id, path)
        assert entry is not None and entry.type == EntryType.FILE
        assert len(entry.content) == 1
        loc = store.locate(entry.content[0])
        assert loc is not None
        return (
            entry.content[0],
            pack_path(store.packs_dir, loc.pack_id),
            loc.offset,
            (loc.stored_length),
        )


def test_flipped_payload_byte_is_found_by_read_data(workdir: Path, store_dir: Path) -> None:
    snapshot, _ = make_store(workdir, store_dir)
    oid, pack, offset, length = chunk_of(store_dir, snapshot, b"pgm/flow.bin")
    flip(pack, offset + RECORD.size + length // 2)

    result = verify_cli(workdir, store_dir, "--read-data")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert f"damaged object {oid.hex()}" in out, out
    assert f"affects snapshot {snapshot}" in out, out
    assert f"affects {snapshot}/pgm/flow.bin" in out, out
    assert "other.txt" not in out  # only what is really lost
    assert "DAMAGED" in out and "Traceback" not in result.stderr

    # Structure checks never read payloads (documented): they still pass.
    structure = verify_cli(workdir, store_dir)
    assert structure.returncode == 0, structure.stdout + structure.stderr
    assert not damage_lines(structure.stdout), structure.stdout

    # Reading the file back refuses the damaged chunk instead of returning bad bytes.
    with Store.open(str(store_dir), readonly=True) as store:
        reader = SnapshotReader(store)
        entry = reader.lookup(reader.snapshot(snapshot).root_tree_id, b"pgm/flow.bin")
        assert entry is not None
        with pytest.raises(CorruptObjectError):
            reader.read_file(entry)
        other = reader.lookup(reader.snapshot(snapshot).root_tree_id, b"other.txt")
        assert other is not None and reader.read_file(other) == b"untouched"


def test_flipped_footer_byte_fails_structure_checks(workdir: Path, store_dir: Path) -> None:
    snapshot, _ = make_store(workdir, store_dir)
    _, pack, _, _ = chunk_of(store_dir, snapshot, b"pgm/flow.bin")
    size = os.path.getsize(pack)
    flip(pack, size - TRAILER.size - 10)  # inside the last footer entry

    for extra in ((), ("--read-data",)):
        result = verify_cli(workdir, store_dir, *extra)
        out = result.stdout
        assert result.returncode == 1, (extra, out + result.stderr)
        assert "DAMAGED" in out and damage_lines(out), (extra, out)
        assert os.path.basename(pack) in out, (extra, out)
        assert "Traceback" not in result.stderr
