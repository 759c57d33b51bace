"""Retention policy: which snapshots to keep, and why (pure: no I/O, no clock).

A leaf module shared by the tool (dpmsfs/store/retention.py re-exports it and turns
`PolicyError` into its UsageError) and the server's `dpmsfs-server prune`, so both read
the same policy language the same way.

The rules are restic's (``restic forget --keep-*``), counted in snapshots that exist,
never in wall-clock slots: ``keep_daily = 7`` keeps the newest snapshot of each of the
last 7 *days that have snapshots*, so a tool switched off for a month comes back with its
history intact. ``keep_within`` is measured back from the newest snapshot, not from now,
for the same reason. Periods are UTC (snapshot names are UTC; a fab runs around the
clock, so local midnight has no special meaning).

Always kept, whatever the policy: pinned snapshots (by name, see gc.py, or by label:
``pin_labels`` and every ``pre-restore`` safety snapshot), and the newest snapshot (the
capture state continues from its trees). A policy with no rule at all is refused: an
empty policy would otherwise mean "forget everything but the newest".

docs/operations.md ("Retention") documents the configuration and the default.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any


class PolicyError(ValueError):
    """A policy, duration or path pattern that cannot be used; one line for the operator."""


UsageError = PolicyError  # the name the rules below were written with

PRE_RESTORE_LABEL = "pre-restore"

_UNITS = {"s": 1, "h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"(\d+)([shdwmy])")

COUNT_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def parse_duration(text: str) -> int:
    """Seconds in a duration like ``48h``, ``30d``, ``2w``, ``1y6m`` (m = 30 d, y = 365 d)."""
    text = text.strip().lower()
    if not text:
        raise UsageError("empty duration")
    pos, total = 0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise UsageError(
            f"bad duration {text!r}: use numbers with s, h, d, w, m (30 days) or y, e.g. 48h, 1y6m"
        )
    return total


def format_duration(seconds: int) -> str:
    for unit in ("y", "m", "w", "d", "h"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s" if seconds % 3600 else f"{seconds // 3600}h"


@dataclass(frozen=True)
class PathRule:
    """Paths matching ``pattern`` leave snapshots older than ``keep_within_s`` (measured,
    like ``keep_within``, back from the newest snapshot); the rest of those snapshots
    stays. Patterns are relative to the work directory: ``*`` and ``?`` within one name,
    ``**`` across directories (``results/**``: everything below results/)."""

    pattern: str
    keep_within_s: int

    def matcher(self) -> PathMatcher:
        return PathMatcher(self.pattern)


class PathMatcher:
    """A path rule's pattern compiled: `matches` a relative path, and `may_contain` says
    whether a directory can hold a match at all (so untouched subtrees are not read)."""

    def __init__(self, pattern: str) -> None:
        check_pattern(pattern)
        self.pattern = pattern
        out = []
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
            elif pattern[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pattern[i] == "?":
                out.append("[^/]")
                i += 1
            else:
                out.append(re.escape(pattern[i]))
                i += 1
        self._regex = re.compile("".join(out), re.DOTALL)
        cut = min((pattern.find(c) for c in "*?" if c in pattern), default=len(pattern))
        self.literal = pattern[:cut]

    def matches(self, path: str) -> bool:
        return self._regex.fullmatch(path) is not None

    def may_contain(self, directory: str) -> bool:
        prefix = directory + "/"
        return prefix.startswith(self.literal) or self.literal.startswith(prefix)


def check_pattern(pattern: str) -> None:
    parts = pattern.split("/")
    if not pattern or pattern.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UsageError(
            f"bad path pattern {pattern!r}: relative to the work directory, no '.', '..' "
            "or empty components (e.g. results/**)"
        )


@dataclass(frozen=True)
class Policy:
    """How many snapshots of each kind to keep (0: the rule is off)."""

    keep_within_s: int = 0
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    pin_labels: tuple[str, ...] = ()
    paths: tuple[PathRule, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.keep_within_s and not any(self.count(r) for r in COUNT_RULES)

    def count(self, rule: str) -> int:
        value: int = getattr(self, f"keep_{rule}")
        return value

    def describe(self) -> str:
        parts = [f"within {format_duration(self.keep_within_s)}"] if self.keep_within_s else []
        parts += [f"{rule} {self.count(rule)}" for rule in COUNT_RULES if self.count(rule)]
        parts += [f"{r.pattern} within {format_duration(r.keep_within_s)}" for r in self.paths]
        return ", ".join(parts) or "no rule"

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {f"keep_{r}": self.count(r) for r in COUNT_RULES}
        doc["keep_within"] = format_duration(self.keep_within_s) if self.keep_within_s else ""
        doc["pin_labels"] = list(self.pin_labels)
        doc["paths"] = [
            {"pattern": r.pattern, "keep_within": format_duration(r.keep_within_s)}
            for r in self.paths
        ]
        return doc


DEFAULT_POLICY = Policy(
    keep_within_s=14 * 86400,  # every snapshot (15 min apart) of the last two weeks
    keep_last=10,
    keep_hourly=0,
    keep_daily=60,  # then one a day for two months of active days
    keep_weekly=26,  # one a week for half a year
    keep_monthly=24,  # one a month for two years
    keep_yearly=5,
)
"""The fab default: the planning notes keep 7-30 days densely, then sparser history."""


def policy_from_config(table: Mapping[str, Any], where: str = "retention") -> Policy:
    """The ``[retention]`` table of a configuration file; missing keys take the default,
    and a table that sets any rule replaces the default rules entirely (as restic)."""
    known = {f"keep_{r}" for r in COUNT_RULES} | {"keep_within", "pin_labels", "paths"}
    unknown = set(table) - known
    if unknown:
        raise UsageError(f"{where}: unknown setting(s): {', '.join(sorted(unknown))}")
    rules_given = any(k in table for k in known - {"pin_labels", "paths"})
    base = Policy() if rules_given else DEFAULT_POLICY
    values: dict[str, Any] = {}
    for rule in COUNT_RULES:
        key = f"keep_{rule}"
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{where}: {key} must be a whole number >= 0")
            values[key] = value
    if "keep_within" in table:
        if not isinstance(table["keep_within"], str):
            raise UsageError(f'{where}: keep_within must be a duration string such as "14d"')
        values["keep_within_s"] = parse_duration(table["keep_within"])
    if "pin_labels" in table:
        labels = table["pin_labels"]
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise UsageError(f"{where}: pin_labels must be a list of strings")
        values["pin_labels"] = tuple(labels)
    if "paths" in table:
        values["paths"] = _path_rules(table["paths"], where)
    policy = replace(base, **values)
    if policy.empty:
        raise UsageError(f"{where}: the policy keeps nothing; set at least one keep_* rule")
    return policy


def _path_rules(items: Any, where: str) -> tuple[PathRule, ...]:
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise UsageError(f"{where}: paths must be [[retention.paths]] tables")
    rules = []
    for item in items:
        unknown = set(item) - {"pattern", "keep_within"}
        if (
            unknown
            or not isinstance(item.get("pattern"), str)
            or not isinstance(item.get("keep_within"), str)
        ):
            raise UsageError(
                f'{where}: each [[retention.paths]] needs pattern = "..." and '
                f'keep_within = "..." (and nothing else)'
            )
        check_pattern(item["pattern"])
        rules.append(PathRule(item["pattern"], parse_duration(item["keep_within"])))
    return tuple(rules)


def with_overrides(policy: Policy, overrides: Mapping[str, Any]) -> Policy:
    """Command-line rules replace the configured rules (pins stay), as restic's flags."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return policy
    values: dict[str, Any] = {
        f.name: 0 for f in fields(Policy) if f.name not in ("pin_labels", "paths")
    }
    for key, value in given.items():
        if key == "keep_within":
            values["keep_within_s"] = parse_duration(str(value))
        else:
            if int(value) < 0:
                raise UsageError(f"--{key.replace('_', '-')} must be >= 0")
            values[key] = int(value)
    return replace(policy, **values)


@dataclass(frozen=True)
class Candidate:
    """What the policy needs to know about one snapshot."""

    name: str
    time_utc_ns: int
    label: str = ""


@dataclass
class Decision:
    name: str
    keep: bool
    reasons: list[str] = field(default_factory=list)


def _bucket(rule: str) -> Callable[[datetime.datetime], tuple[int, ...]]:
    if rule == "hourly":
        return lambda t: (t.year, t.month, t.day, t.hour)
    if rule == "daily":
        return lambda t: (t.year, t.month, t.day)
    if rule == "weekly":
        return lambda t: tuple(t.isocalendar()[:2])
    if rule == "monthly":
        return lambda t: (t.year, t.month)
    return lambda t: (t.year,)


def select(
    snapshots: Iterable[Candidate], policy: Policy, pinned_names: Iterable[str] = ()
) -> list[Decision]:
    """Keep or forget each snapshot, with the reasons it is kept; oldest first."""
    if policy.empty:
        raise UsageError("the retention policy keeps nothing; give at least one --keep-* rule")
    ordered: Sequence[Candidate] = sorted(snapshots, key=lambda c: (c.time_utc_ns, c.name))
    pinned = set(pinned_names)
    pin_labels = {PRE_RESTORE_LABEL, *policy.pin_labels}
    decisions = {c.name: Decision(c.name, False) for c in ordered}
    if not ordered:
        return []
    newest = ordered[-1]
    decisions[newest.name].reasons.append("newest")
    horizon = newest.time_utc_ns - policy.keep_within_s * 1_000_000_000
    last_bucket: dict[str, tuple[int, ...] | None] = {r: None for r in COUNT_RULES}
    left = {r: policy.count(r) for r in COUNT_RULES}
    for index, snap in enumerate(reversed(ordered)):
        reasons = decisions[snap.name].reasons
        if snap.name in pinned:
            reasons.append("pinned")
        if snap.label in pin_labels:
            reasons.append(f"label {snap.label}")
        if policy.keep_within_s and snap.time_utc_ns >= horizon:
            reasons.append(f"within {format_duration(policy.keep_within_s)}")
        if left["last"] and index < policy.keep_last:
            reasons.append("last")
        when = datetime.datetime.fromtimestamp(snap.time_utc_ns / 1e9, datetime.UTC)
        for rule in COUNT_RULES[1:]:
            if not left[rule]:
                continue
            bucket = _bucket(rule)(when)
            if bucket != last_bucket[rule]:
                last_bucket[rule] = bucket
                left[rule] -= 1
                reasons.append(rule)
    for decision in decisions.values():
        decision.keep = bool(decision.reasons)
    return [decisions[c.name] for c in ordered]


def path_rules_due(
    snapshots: Iterable[tuple[Candidate, tuple[str, ...]]],
    policy: Policy,
    decisions: Sequence[Decision],
) -> dict[str, list[PathRule]]:
    """Per kept snapshot, the path rules to apply now: the snapshot is older than the
    rule's window (from the newest snapshot), the rule was not applied to it yet
    (``snapshots`` pairs each candidate with its record's ``pruned``), and it is not
    protected (pinned, a pinned label, the newest)."""
    if not policy.paths:
        return {}
    listed = list(snapshots)
    if not listed:
        return {}
    newest = max(c.time_utc_ns for c, _ in listed)
    protected = {
        d.name
        for d in decisions
        if any(r == "newest" or r == "pinned" or r.startswith("label ") for r in d.reasons)
    }
    keep = {d.name for d in decisions if d.keep}
    due: dict[str, list[PathRule]] = {}
    for snap, applied in listed:
        if snap.name not in keep or snap.name in protected:
            continue
        for rule in policy.paths:
            old = newest - snap.time_utc_ns > rule.keep_within_s * 1_000_000_000
            if old and rule.pattern not in applied:
                due.setdefault(snap.name, []).append(rule)
    return due
