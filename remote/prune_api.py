"""The request of the online prune (`POST /v2/<ns>/prune`, admin only) and its checks.

The body names the same policy as `dpmsfs-server prune`'s flags (docs/remote-api.md):

    {"keep_last": N, "keep_hourly": N, "keep_daily": N, "keep_weekly": N,
     "keep_monthly": N, "keep_yearly": N, "keep_within": "14d", "pin_labels": ["..."],
     "grace": "24h", "dry_run": false}

Every field is optional but the policy must keep something. The grace may not be shorter
than the server's minimum (`serve --prune-min-grace`): the grace is what keeps the
mappings a syncing tool was just given (docs/design.md, "Online prune").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from remote import retention
from remote.prune import DEFAULT_GRACE_S


class PruneRequestError(ValueError):
    """The body does not describe a usable prune; the message says why, in one line."""


@dataclass(frozen=True)
class PruneRequest:
    policy: retention.Policy
    grace_s: int
    dry_run: bool


_KNOWN = {f"keep_{r}" for r in retention.COUNT_RULES} | {
    "keep_within",
    "pin_labels",
    "grace",
    "dry_run",
}


def parse(doc: Any, min_grace_s: int) -> PruneRequest:
    if not isinstance(doc, dict):
        raise PruneRequestError("body must be a JSON object of policy fields")
    unknown = set(doc) - _KNOWN
    if unknown:
        raise PruneRequestError(f"unknown field(s): {', '.join(sorted(unknown))}")
    overrides: dict[str, Any] = {}
    for rule in retention.COUNT_RULES:
        value = doc.get(f"keep_{rule}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PruneRequestError(f"keep_{rule} must be a whole number >= 0")
        overrides[f"keep_{rule}"] = value
    within = doc.get("keep_within")
    if within not in (None, ""):
        if not isinstance(within, str):
            raise PruneRequestError('keep_within must be a duration such as "14d"')
        overrides["keep_within"] = within
    labels = doc.get("pin_labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise PruneRequestError("pin_labels must be a list of strings")
    dry_run = doc.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise PruneRequestError("dry_run must be true or false")
    grace = doc.get("grace")
    try:
        policy = retention.with_overrides(retention.Policy(), overrides)
        policy = replace(policy, pin_labels=tuple(labels))
        if grace is None:
            grace_s = DEFAULT_GRACE_S
        elif isinstance(grace, str):
            grace_s = retention.parse_duration(grace)
        else:
            raise PruneRequestError('grace must be a duration such as "24h"')
    except retention.PolicyError as exc:
        raise PruneRequestError(str(exc)) from None
    if policy.empty:
        raise PruneRequestError("give at least one keep_* rule (the server has no default policy)")
    if grace_s < min_grace_s:
        raise PruneRequestError(
            f"grace {retention.format_duration(grace_s)} is shorter than this server's "
            f"minimum {retention.format_duration(min_grace_s)} (serve --prune-min-grace)"
        )
    return PruneRequest(policy, grace_s, dry_run)
