"""Fixtures of the fault tests: a work directory under /tmp and a store beside it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mount.conftest import force_unmount, fuse_usable

needs_fuse = pytest.mark.skipif(not fuse_usable(), reason="needs root and /dev/fuse")


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A world-traversable scratch directory (pytest's tmp_path is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="dpmsfs-fault-", dir="/tmp"))
    os.chmod(base, 0o755)
    (base / "work").mkdir(mode=0o755)
    yield base
    force_unmount(base / "work")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def workdir(base_dir: Path) -> Path:
    return base_dir / "work"


@pytest.fixture
def store_dir(base_dir: Path) -> Path:
    return base_dir / "store"
