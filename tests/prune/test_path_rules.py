"""Per-path rules: old snapshots lose only the matching paths (results/**), keep pgm/."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dpmsfs import prune
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.errors import UsageError
from dpmsfs.store import gc, verify
from dpmsfs.store.retention import PathMatcher, PathRule, Policy, policy_from_config
from tests.unit.store_util import T0, new_store, snapshot

DAY = 86400 * 10**9


def _paths(store: object, name: str) -> dict[str, bytes]:
    reader = SnapshotReader(store)  # type: ignore[arg-type]
    record = reader.snapshot(name)
    return {
        p.decode(): reader.read_file(e) for p, e in reader.walk(record.root_tree_id) if e.type == 1
    }


def test_patterns() -> None:
    m = PathMatcher("results/**")
    assert m.matches("results/a") and m.matches("results/x/y.stdf")
    assert not m.matches("results") and not m.matches("pgm/results/a")
    assert m.may_contain("results") and not m.may_contain("pgm")
    star = PathMatcher("results/*/raw")
    assert star.matches("results/lot1/raw") and not star.matches("results/a/b/raw")
    assert star.may_contain("results") and star.may_contain("results/lot1")
    for bad in ("", "/abs", "a/../b", "a//b", "./a"):
        with pytest.raises(UsageError):
            PathMatcher(bad)
    policy = policy_from_config(
        {"keep_last": 3, "paths": [{"pattern": "results/**", "keep_within": "30d"}]}
    )
    assert policy.paths == (PathRule("results/**", 30 * 86400),)
    with pytest.raises(UsageError):
        policy_from_config({"keep_last": 3, "paths": [{"pattern": "results/**"}]})


def test_old_snapshots_lose_only_matching_paths(tmp_path: Path) -> None:
    store = new_store(str(tmp_path / "s"))
    rng = random.Random(3)
    pgm = {"pgm/flow.tp": rng.randbytes(20_000), "pgm/lib/a.h": rng.randbytes(5_000)}
    names, contents = [], []
    for day in range(4):
        files = pgm | {f"results/day{day}/lot.stdf": rng.randbytes(300_000), "notes": b"n%d" % day}
        names.append(snapshot(store, files, T0 + day * 20 * DAY))  # 0, 20, 40, 60 days
        contents.append(files)
    gc.pin(store, names[0])
    policy = Policy(keep_last=10, paths=(PathRule("results/**", 30 * 86400),))
    before = store.stats().stored_bytes

    dry = prune.prune(store, policy, dry_run=True)
    assert dry.trimmed == {names[1]: ["results/**"]}  # day 0 pinned, 40 and 60 recent
    assert store.stats().stored_bytes == before

    result = prune.prune(store, policy)
    assert result.forgotten == [] and result.trimmed == {names[1]: ["results/**"]}
    trimmed = _paths(store, names[1])
    assert trimmed == {k: v for k, v in contents[1].items() if not k.startswith("results/")}
    record = store.get_snapshot(names[1])
    assert record is not None and record.pruned == ("results/**",)
    assert record.time_utc_ns == T0 + 20 * DAY
    for i in (0, 2, 3):  # pinned, and within 30 days of the newest: untouched
        assert _paths(store, names[i]) == contents[i]
        untouched = store.get_snapshot(names[i])
        assert untouched is not None and untouched.pruned == ()
    assert before - store.stats().stored_bytes > 250_000  # day 1's datalog went
    report = verify(store, read_data=True)
    assert report.ok and not report.garbage, report.summary()

    again = prune.prune(store, policy)  # applied once: nothing more to do
    assert again.trimmed == {} and again.collect.dead_objects == 0
    store.close()
