"""The server's disk fills up (a real, small tmpfs): 507, nothing half-visible, and it works
again once space returns."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from remote.errors import TemporaryRemoteError
from remote.frames import make_record
from remote.http_backend import HttpBackend
from remote.retry import NO_RETRY, Retrier
from tests.remote.serverproc import ADMIN, ServerProcess, write_tokens


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_gives_507_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    server = ServerProcess(small_disk / "data", write_tokens(tmp_path / "tokens.json")).start()
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1 << 20))
    try:
        with HttpBackend([server.url], "tool1", ADMIN, retrier=Retrier(NO_RETRY)) as b:
            stored: list[tuple[str, str, bytes]] = []
            refused: tuple[str, str, bytes] | None = None
            for _ in range(40):
                rec = make_record(secrets.token_bytes(200_000))
                try:
                    assert b.upload([rec]) == {rec[0]: "created"}
                except TemporaryRemoteError as exc:
                    assert "507" in str(exc) or "disk full" in str(exc), exc
                    refused = rec
                    break
                stored.append(rec)
            assert refused is not None, "the disk never filled up"
            assert stored, "not even one upload fit"
            # Nothing half-visible: the refused object is not mapped, no temp file is left.
            assert b.missing([(refused[0], refused[1])]) == [refused[0]]
            assert list((small_disk / "data" / "tmp").iterdir()) == []
            # Everything acknowledged before is intact.
            got = dict(b.load_many([r[0] for r in stored]))
            assert [got[r[0]] for r in stored] == [r[2] for r in stored]
            with pytest.raises(TemporaryRemoteError):
                b.put_ref("snapshot.big", secrets.token_bytes(900_000))
            filler.unlink()  # space returns
            assert b.upload([refused]) == {refused[0]: "created"}
            b.put_ref("snapshot.after", b"ok")
            assert b.load(refused[0]) == refused[2]
    finally:
        server.stop()
    verify = subprocess.run(
        [*server_cmd_verify(small_disk / "data")], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def server_cmd_verify(data: Path) -> list[str]:
    from tests.remote.serverproc import server_cmd

    return server_cmd("verify", "--data", str(data))
