"""A file open in `.snapshots` holds a prune lease: a prune in a loop that forgets its
snapshot meanwhile never removes what it is reading (without the lease, the chunks it
has not read yet are swept and the read fails with EIO)."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

from dpmsfs.store import Store
from tests.mount.conftest import CliMount, cli_snapshot, run_cli

MB = 1 << 20


def test_snapshot_read_survives_prune_loop(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    data = random.Random(7).randbytes(12 * MB)  # many chunks, incompressible
    (work / "big.dat").write_bytes(data)
    old = cli_snapshot(work, store_dir)
    (work / "big.dat").unlink()
    (work / "other.dat").write_bytes(b"x" * 1000)
    cli_snapshot(work, store_dir)
    mounted.wait_for_view()

    stop = threading.Event()
    prunes: list[str] = []
    failures: list[str] = []

    def prune_loop() -> None:
        while not stop.is_set():
            result = run_cli("prune", str(work), "--store", str(store_dir), "--keep-last", "1")
            (prunes if result.returncode == 0 else failures).append(result.stderr)

    with open(mounted.view / old / "big.dat", "rb", buffering=0) as f:
        head = f.read(MB)  # open and reading: the snapshot is leased
        thread = threading.Thread(target=prune_loop)
        thread.start()
        try:
            # the first prune forgets the snapshot and collects; let a few run
            while len(prunes) + len(failures) < 3:
                stop.wait(0.1)
            listing = run_cli("snapshots", str(work), "--store", str(store_dir), "--json")
            names = [s["name"] for s in json.loads(listing.stdout)]
            assert old not in names, (names, failures)  # forgotten meanwhile
            # ... and yet its data is still indexed: the open file's lease kept it (an
            # fd on a deleted pack would read on, so this is what tells the lease held)
            store = Store.open(os.fspath(store_dir), readonly=True)
            try:
                assert store.stats().stored_bytes >= 12 * MB, store.stats()
            finally:
                store.close()
            rest = b""
            while True:
                # drop the page cache so every read goes to the view (and its store)
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                piece = f.read(MB)
                if not piece:
                    break
                rest += piece
        finally:
            stop.set()
            thread.join(120)
    assert not failures, failures
    assert head + rest == data
    # once closed, the lease is gone and the next prune reclaims the file's space
    result = run_cli("prune", str(work), "--store", str(store_dir), "--keep-last", "1",
                     "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    reclaimed = json.loads(result.stdout)["collect"]["reclaimed_bytes"]
    assert reclaimed >= 10 * MB, reclaimed
    verify = run_cli("verify", str(work), "--store", str(store_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr
