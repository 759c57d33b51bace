"""A real mount with sync on, configured through a TOML file (short RPO timers)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dpmsfs import control
from dpmsfs.config import Config
from dpmsfs.errors import UnavailableError
from tests.mount.conftest import CliMount, run_cli


def sync_config(path: Path, store: Path, urls: list[str], token: str, tool: str,
                **extra: Any) -> Path:  # fmt: skip
    token_file = path.with_suffix(".token")
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    values: dict[str, Any] = {
        "store": str(store), "tool_id": tool, "server": urls, "token_file": str(token_file),
        "sync_snapshot_idle_seconds": 1.0, "sync_snapshot_min_seconds": 2.0,
        "quiet_seconds": 1.0, **extra,
    }  # fmt: skip
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


class SyncMount(CliMount):
    def __init__(self, workdir: Path, config_file: Path) -> None:
        self.config_file = config_file
        super().__init__(workdir, "--config", str(config_file))
        # The foreground mount is visible before the daemon's control socket listens (the
        # services start once the mount serves): wait for it, as `dpmsfs mount` does.
        deadline = time.monotonic() + 30
        while True:
            try:
                self.status()
                return
            except UnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        sock = Config(workdir=self.workdir, store=Path("/")).control_socket
        return dict(control.call(sock, {"cmd": "status"}, timeout=30)["status"])

    def sync_status(self) -> dict[str, Any]:
        return dict(self.status()["sync"])

    def cli(self, *args: str, timeout: float = 300) -> Any:
        return run_cli(*args, "--config", str(self.config_file), str(self.workdir),
                       timeout=timeout)  # fmt: skip
