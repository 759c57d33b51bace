"""One booted container per test session, with dpmsfs installed by the project's own
install script and protecting /data/tool (see container.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.container import Container, build_root, missing_prerequisite

WORKDIR = "/data/tool"
STORE = "/var/lib/dpmsfs-test-store/data-tool"
UNIT = "dpmsfs@data-tool.service"
DPMSFS = "/opt/dpmsfs/venv/bin/dpmsfs"


@pytest.fixture(scope="session")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    reason = missing_prerequisite()
    if reason:
        pytest.skip(f"service tests: {reason}")
    root = build_root()
    log = Path(tmp_path_factory.mktemp("container")) / "nspawn.log"
    box = Container(root, log)
    try:
        box.boot()
        box.sh(f"mkdir -p {WORKDIR}/programs && echo 'original' > {WORKDIR}/programs/main.c")
        box.sh(
            f"bash /src/scripts/install-service.sh {WORKDIR} --store {STORE} --tool-id tester-01",
            timeout=900,
        )
        yield box
    finally:
        box.shutdown()


@pytest.fixture
def service(container: Container) -> Iterator[Container]:
    """The tool's service running (started if a test left it stopped)."""
    started = container.run(["systemctl", "start", UNIT], check=False)
    if started.returncode != 0:
        journal = container.sh(f"journalctl -b -u {UNIT} -o short-precise | tail -40")
        raise AssertionError(f"systemctl start {UNIT} failed: {started.stderr}\n{journal}")
    yield container
    container.run(["systemctl", "reset-failed", UNIT], check=False)
