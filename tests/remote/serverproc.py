"""A real dpmsfs-server child process on loopback, and the tokens the tests use.

Servers listen on port 0 and report their URL through `--ready-file`, so tests never race
for a free port. Every process started here is stopped (terminate, then kill) at teardown.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import xxhash

REPO = Path(__file__).resolve().parents[2]

ADMIN = "admin-" + secrets.token_hex(16)
TOOL_A = "toola-" + secrets.token_hex(16)
TOOL_B = "toolb-" + secrets.token_hex(16)
TOOL_ANY = "toolany-" + secrets.token_hex(16)  # a tool role over every namespace
REPLICATE = "replicate-" + secrets.token_hex(16)  # what an HA server pushes to its peer with
NS_A = "toola"
NS_B = "toolb"


def key_of(data: bytes) -> str:
    return str(xxhash.xxh3_128_hexdigest(data))


def write_tokens(path: Path) -> Path:
    doc = {
        "tokens": {
            ADMIN: {"role": "admin", "namespaces": "*"},
            TOOL_A: {"role": "tool", "namespaces": [NS_A]},
            TOOL_B: {"role": "tool", "namespaces": [NS_B]},
            TOOL_ANY: {"role": "tool", "namespaces": "*"},
            REPLICATE: {"role": "replicate", "namespaces": "*"},
        }
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def server_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "remote.server_main", *args]


@dataclass
class ServerProcess:
    """One dpmsfs-server child process over a data directory."""

    data: Path
    tokens: Path
    extra: tuple[str, ...] = ()
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)
    _starts: int = 0

    def start(self) -> ServerProcess:
        self._starts += 1
        ready = self.data.parent / f"{self.data.name}.ready{self._starts}"
        log_path = self.data.parent / f"{self.data.name}.log{self._starts}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            server_cmd(
                "--data",
                str(self.data),
                "--listen",
                "127.0.0.1:0",
                "--tokens",
                str(self.tokens),
                "--ready-file",
                str(ready),
                *self.extra,
            ),
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {log_path.read_text()}")
            time.sleep(0.02)
        self.url = json.loads(ready.read_text())["url"]
        return self

    def kill(self) -> None:
        """SIGKILL on POSIX, TerminateProcess on Windows: no cleanup runs."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close_log()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
