"""Retention policy of the tool: the shared rules of remote/retention.py, with their
errors raised as the CLI's UsageError (exit 2, one line).

The policy code lives in remote/ (a leaf: no dpmsfs imports) because the server's
`dpmsfs-server prune` applies the same policy language to the snapshot refs it holds;
this module keeps the names the tool has always imported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from dpmsfs.errors import UsageError
from remote import retention as _shared
from remote.retention import (
    COUNT_RULES,
    DEFAULT_POLICY,
    PRE_RESTORE_LABEL,
    Candidate,
    Decision,
    PathRule,
    Policy,
    PolicyError,
    format_duration,
    path_rules_due,
)

__all__ = [
    "COUNT_RULES",
    "DEFAULT_POLICY",
    "PRE_RESTORE_LABEL",
    "Candidate",
    "Decision",
    "PathMatcher",
    "PathRule",
    "Policy",
    "check_pattern",
    "format_duration",
    "parse_duration",
    "path_rules_due",
    "policy_from_config",
    "select",
    "with_overrides",
]

P = ParamSpec("P")
R = TypeVar("R")


def _as_usage(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except PolicyError as exc:
            raise UsageError(str(exc)) from None

    return wrapper


parse_duration = _as_usage(_shared.parse_duration)
check_pattern = _as_usage(_shared.check_pattern)
policy_from_config = _as_usage(_shared.policy_from_config)
with_overrides = _as_usage(_shared.with_overrides)
select = _as_usage(_shared.select)


class PathMatcher(_shared.PathMatcher):
    def __init__(self, pattern: str) -> None:
        try:
            super().__init__(pattern)
        except PolicyError as exc:
            raise UsageError(str(exc)) from None
