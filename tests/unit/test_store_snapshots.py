"""Snapshot names: UTC, no colons, unique within a second, sorting chronologically."""

from __future__ import annotations

import pytest

from dpmsfs.store.errors import StoreError
from dpmsfs.store.snapshots import (
    SnapshotRecord,
    SnapshotStats,
    base_name,
    snapshot_name,
    suffix,
)

T0 = 1_714_564_800 * 10**9  # 2024-05-01T12:00:00Z


def test_base_name() -> None:
    assert base_name(T0) == "2024-05-01T120000Z"
    assert base_name(T0 + 999_999_999) == "2024-05-01T120000Z"
    assert ":" not in base_name(T0)


def test_unique_names_sort_chronologically() -> None:
    taken: list[str] = []
    for second in range(3):
        for _ in range(120):  # past -9 and -99, where naive suffixes stop sorting
            taken.append(snapshot_name(T0 + second * 10**9, taken.__contains__))
    assert len(set(taken)) == len(taken)
    assert sorted(taken) == taken
    assert taken[:3] == ["2024-05-01T120000Z", "2024-05-01T120000Z-2", "2024-05-01T120000Z-3"]
    assert suffix(10) == "-A10" and suffix(100) == "-B100"
    with pytest.raises(ValueError):
        suffix(1)


def test_record_round_trip_and_rejection() -> None:
    record = SnapshotRecord("2024-05-01T120000Z", T0, bytes(range(16)), "before upgrade",
                            "tool-7", SnapshotStats(3, 300, 30))  # fmt: skip
    assert SnapshotRecord.decode(record.encode()) == record
    with pytest.raises(StoreError):
        SnapshotRecord.decode(b"{not json")
    with pytest.raises(StoreError):
        SnapshotRecord.decode(record.encode().replace(b'"v":1', b'"v":2'))
