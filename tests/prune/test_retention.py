"""The retention policy: restic's rules, counted in snapshots that exist."""

from __future__ import annotations

import pytest

from dpmsfs.errors import UsageError
from dpmsfs.store.retention import (
    DEFAULT_POLICY,
    Candidate,
    Decision,
    Policy,
    parse_duration,
    policy_from_config,
    select,
    with_overrides,
)

HOUR = 3600 * 10**9
DAY = 24 * HOUR
T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z, a Thursday


def snaps(times: list[int], labels: dict[int, str] | None = None) -> list[Candidate]:
    labels = labels or {}
    return [Candidate(f"s{i:04d}", t, labels.get(i, "")) for i, t in enumerate(times)]


def kept(decisions: list[Decision]) -> list[str]:
    return [d.name for d in decisions if d.keep]


def test_durations() -> None:
    assert parse_duration("48h") == 48 * 3600
    assert parse_duration("1y6m") == (365 + 180) * 86400
    assert parse_duration("2w") == 14 * 86400
    bad: dict[str, object]
    for bad in ("", "5", "3x", "h", "1d 2h", "-1d"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_daily_counts_days_that_have_snapshots() -> None:
    # 4 snapshots a day for 3 days, then the tool is off for 40 days, then 2 more days
    times = [T0 + d * DAY + h * 6 * HOUR for d in range(3) for h in range(4)]
    times += [T0 + (43 + d) * DAY + h * 6 * HOUR for d in range(2) for h in range(4)]
    decisions = select(snaps(times), Policy(keep_daily=5))
    # newest of each of the 5 days with snapshots, across the 40-day gap
    assert kept(decisions) == ["s0003", "s0007", "s0011", "s0015", "s0019"]
    reasons = {d.name: d.reasons for d in decisions}
    assert reasons["s0019"] == ["newest", "daily"]


def test_within_is_relative_to_the_newest_snapshot() -> None:
    times = [T0 + i * HOUR for i in range(10)] + [T0 + 100 * DAY]
    decisions = select(snaps(times), Policy(keep_within_s=3 * 3600))
    assert kept(decisions) == ["s0010"]  # nothing else within 3 h of the newest
    times = [T0 + i * HOUR for i in range(10)]
    assert kept(select(snaps(times), Policy(keep_within_s=3 * 3600))) == [
        "s0006", "s0007", "s0008", "s0009"
    ]  # fmt: skip


def test_last_weekly_monthly_yearly_and_pins() -> None:
    times = [T0 + d * DAY for d in range(800)]
    decisions = select(
        snaps(times, {5: "pre-restore", 6: "release"}),
        Policy(keep_last=2, keep_weekly=3, keep_monthly=2, keep_yearly=3, pin_labels=("release",)),
        pinned_names=["s0001"],
    )
    got = {d.name: d.reasons for d in decisions if d.keep}
    assert got["s0799"] == ["newest", "last", "weekly", "monthly", "yearly"]
    assert got["s0798"] == ["last"]
    assert got["s0001"] == ["pinned"]
    assert got["s0005"] == ["label pre-restore"]
    assert got["s0006"] == ["label release"]
    assert sum("weekly" in r for r in got.values()) == 3
    assert sum("monthly" in r for r in got.values()) == 2
    yearly = sorted(n for n, r in got.items() if "yearly" in r)
    assert yearly == ["s0364", "s0729", "s0799"]  # the newest of 2026, 2027, 2028


def test_policy_from_config_and_overrides() -> None:
    assert policy_from_config({}) == DEFAULT_POLICY
    assert policy_from_config({"pin_labels": ["x"]}).keep_daily == DEFAULT_POLICY.keep_daily
    policy = policy_from_config({"keep_within": "48h", "keep_daily": 7})
    assert policy == Policy(keep_within_s=48 * 3600, keep_daily=7)
    bad: dict[str, object]
    bad_path = {"paths": [{"pattern": "../x", "keep_within": "1d"}]}
    for bad in ({"keep_daily": -1}, {"keep_daily": "7"}, {"keep_within": 3}, {"nope": 1},
                {"keep_last": 0}, bad_path):  # fmt: skip
        with pytest.raises(UsageError):
            policy_from_config(bad)
    over = with_overrides(Policy(keep_daily=7, pin_labels=("r",)), {"keep_last": 3})
    assert over == Policy(keep_last=3, pin_labels=("r",))
    with pytest.raises(UsageError):
        select(snaps([T0]), Policy())
