"""A booted Debian 12 systemd in a container (systemd-nspawn), for the service tests.

The root comes from scripts/service-test-root.sh (built once, cached outside the clone);
each test session boots an ephemeral copy of it (`--ephemeral`: changes vanish at the
end), with /dev/fuse, the checkout (read-only, at /src) and the host's pip configuration
bound in. The host runs no systemd, hence `--register=no --keep-unit`. Commands run
inside with `nsenter -a` into the container's PID 1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("DPMSFS_TEST_CACHE", "/var/cache/dpmsfs-test"))
BOOT_TIMEOUT = 60.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# pip inside uses the host's configuration (its indexes and wheel directories): bound in
# read-only where they exist; the wheel cache is shared so a session installs quickly.
PIP_FILES = ("/etc/pip.conf", "/etc/xdg/pip", "/opt/wheels", "/opt/pypi", "/opt/pypi-more")
# The host's CA bundle (it may hold the certificate of a TLS-inspecting proxy that the
# container's own bundle lacks), for pip only: the container's system store is untouched.
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
HOST_CA_INSIDE = "/run/dpmsfs-test/host-ca-certificates.crt"


def missing_prerequisite() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/setup.sh installs it)"
    return None


def build_root() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "service-test-root.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


class Container:
    def __init__(self, root: Path, log_path: Path) -> None:
        self.root = root
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def boot(self) -> None:
        pip_cache = CACHE / "pip"
        pip_cache.mkdir(parents=True, exist_ok=True)
        binds = [
            "--bind=/dev/fuse",
            f"--bind-ro={REPO}:/src",
            f"--bind={pip_cache}:/root/.cache/pip",
            *(f"--bind-ro={p}" for p in PIP_FILES if os.path.exists(p)),
            *([f"--bind-ro={HOST_CA}:{HOST_CA_INSIDE}"] if os.path.exists(HOST_CA) else []),
        ]
        command = [
            "systemd-nspawn", "-q", "-D", str(self.root), "--ephemeral", "-b",
            "--register=no", "--keep-unit", "--console=passive", *binds,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nspawn exited: {self.log_path.read_text()[-2000:]}")
            self.init_pid = self._find_init()
            if self.init_pid:
                state = self.run(["systemctl", "is-system-running", "--wait"], check=False)
                if state.stdout.strip() in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"container did not boot in {BOOT_TIMEOUT} s")

    def _find_init(self) -> int:
        """The container's systemd: the child of nspawn that runs /sbin/init (systemd)."""
        assert self.process is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.process.pid and "systemd" in stat.split("(", 1)[1].split(")")[0]:
                return int(entry.name)
        return 0

    def command(self, argv: Sequence[str]) -> list[str]:
        env = ["env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8"]
        env += [f"{k}={v}" for k, v in os.environ.items() if k.startswith("PIP_")]
        if os.path.exists(HOST_CA):
            env.append(f"PIP_CERT={HOST_CA_INSIDE}")
        return ["nsenter", "-t", str(self.init_pid), "-a", *env, *argv]

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            umask=0o022,  # not the test process's (mount tests in it set 0)
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def sh(self, script: str, check: bool = True, timeout: float = 120.0) -> str:
        return self.run(["bash", "-c", script], check=check, timeout=timeout).stdout

    def popen(self, script: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(["bash", "-c", script]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            umask=0o022,
        )

    def unit_property(self, unit: str, name: str) -> str:
        return self.run(["systemctl", "show", "-P", name, unit]).stdout.strip()

    def shutdown(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if self.init_pid:
            self.run(["systemctl", "poweroff"], check=False, timeout=10)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
