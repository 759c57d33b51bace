"""The systemd watchdog pings (dpmsfs/fs/liveness.py): when to ping, and only when the
probe of the mount came back."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

from dpmsfs.fs import liveness


def test_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert liveness.watchdog_interval() == 15.0


def test_no_pings_for_another_process_or_without_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # the snapshot view's case
    assert liveness.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert liveness.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert liveness.watchdog_interval() is None


def _collect_pings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, probed: Path) -> list[bytes]:
    address = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", address)

    async def main() -> None:
        with trio.move_on_after(0.35):
            await liveness.ping_while_serving(probed, 0.1)

    trio.run(main)
    messages = []
    while True:
        try:
            messages.append(receiver.recv(100))
        except BlockingIOError:
            break
    receiver.close()
    return messages


def test_pings_while_the_path_answers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    messages = _collect_pings(monkeypatch, tmp_path, tmp_path)
    assert 3 <= len(messages) <= 4 and set(messages) == {b"WATCHDOG=1"}


def test_no_ping_when_the_probe_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _collect_pings(monkeypatch, tmp_path, tmp_path / "gone") == []
