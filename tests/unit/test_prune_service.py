"""A failing prune is recorded for `dpmsfs status`, and a second one at once is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpmsfs import prune
from dpmsfs.clock import FakeClock
from dpmsfs.errors import BusyError
from dpmsfs.store import gc
from dpmsfs.store.retention import Policy
from tests.unit.store_util import T0, new_store, random_files, snapshot


def test_a_failed_prune_shows_in_status(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    first = snapshot(store, random_files(3, 1000, 1), T0)
    last = snapshot(store, random_files(3, 1000, 2), T0 + 10**9)
    service = prune.PruneService(store, Policy(keep_last=1), 24, FakeClock())
    record = store.get_snapshot(last)
    assert record is not None
    loc = store.locate(record.root_tree_id)
    assert loc is not None
    pack = os.path.join(store.packs_dir, loc.pack_id.hex()[:2], loc.pack_id.hex() + ".pack")
    with open(pack, "r+b") as f:  # damage the newest snapshot's root tree
        f.seek(loc.offset + 25)
        f.write(b"\x00\xff\x00\xff")
    store.drop_pack_handle(loc.pack_id)
    with pytest.raises(gc.CollectionAbortedError):
        service.run_now()
    status = service.status()
    assert "cannot read tree" in status["last_error"] and not status["running"]
    recorded = prune.last_result(store)
    assert recorded is not None and "cannot read tree" in recorded["error"]
    assert store.get_snapshot(first) is None  # forgetting happened; nothing was swept

    service.running = True  # as while another prune runs
    with pytest.raises(BusyError):
        service.run_now()
    store.close()
