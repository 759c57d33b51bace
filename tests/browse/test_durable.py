"""durable.py: the one syncfs a server restore ends with, and early write-back."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dpmsfs.browse.durable import start_writeback, sync_filesystem


def test_sync_filesystem_reports_errors_instead_of_ignoring_them(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    sync_filesystem(fd)  # a real file system: no error
    os.close(fd)
    with pytest.raises(OSError) as caught:
        sync_filesystem(fd)  # closed: the kernel's error reaches the caller
    assert caught.value.errno == errno.EBADF


def test_early_writeback_keeps_the_content(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 << 20)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        start_writeback(fd)
        fd_dir = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            sync_filesystem(fd_dir)
        finally:
            os.close(fd_dir)
        assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        os.close(fd)
