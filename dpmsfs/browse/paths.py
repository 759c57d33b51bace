"""Restore paths, checked. Light on purpose: the CLI imports it before anything heavy."""

from __future__ import annotations

import os

from dpmsfs.errors import UsageError


def checked_path(path: bytes) -> bytes:
    """A restore path relative to the work directory: no `..`, not absolute, not in
    .snapshots; `.` and empty components dropped. Checked by the CLI and again by the
    daemon, which runs as root and must never write outside its target."""
    shown = os.fsdecode(path)
    if b"\0" in path:
        raise UsageError(f"{shown!r}: NUL in a restore path")
    if path.startswith(b"/"):
        raise UsageError(f"{shown}: a restore path is relative to the work directory")
    parts = [p for p in path.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise UsageError(f"{shown}: '..' is not allowed in a restore path")
    if parts and parts[0] == b".snapshots":
        raise UsageError(f"{shown}: name a path of the work directory, not of .snapshots")
    return b"/".join(parts)
