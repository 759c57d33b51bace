"""Fixtures of the sync tests: the mount tests' work directory and store beside it."""

from __future__ import annotations

from tests.mount.conftest import store_dir, workdir

__all__ = ["store_dir", "workdir"]
