"""Alert state survives a daemon restart: an alert still active after a restart does not
run the hook again; one that cleared while the daemon was down fires "cleared" once."""

from __future__ import annotations

from pathlib import Path

from dpmsfs import report_extras
from tests.mount.conftest import CliMount, wait_for
from tests.mount.test_monitoring import fired_events, status, write_config


def test_restart_with_the_same_alert_fires_once(workdir: Path, store_dir: Path) -> None:
    conf, fired = workdir.parent / "dpmsfs.toml", workdir.parent / "fired.jsonl"
    write_config(conf, fired)
    args = ("--store", str(store_dir), "--config", str(conf))

    def evaluations() -> int:
        return int(status(workdir, store_dir)[1]["alerts"]["evaluations"])

    mount = CliMount(workdir, *args)
    try:
        report_extras.record_verify(store_dir, ok=False, read_data=False,
                                    summary="DAMAGED: test", damaged=1, problems=0,
                                    finished_ns=1)  # fmt: skip
        wait_for(lambda: fired_events(fired) == [("verify_failed", "raised")], timeout=15,
                 what="the alert command")  # fmt: skip
    finally:
        mount.stop()
    assert (store_dir / "alerts-state.json").exists()

    mount = CliMount(workdir, *args)  # the same alert is still active
    try:
        wait_for(lambda: evaluations() > 5, timeout=15, what="evaluations after the restart")
        assert [a["name"] for a in status(workdir, store_dir)[1]["alerts"]["active"]] == [
            "verify_failed"
        ]
        assert fired_events(fired) == [("verify_failed", "raised")]  # not twice
    finally:
        mount.stop()

    # cleared while the daemon was down: the next daemon says so, once
    report_extras.record_verify(store_dir, ok=True, read_data=False, summary="OK: test",
                                damaged=0, problems=0, finished_ns=2)  # fmt: skip
    mount = CliMount(workdir, *args)
    try:
        wait_for(lambda: len(fired_events(fired)) >= 2, timeout=15, what="cleared")
        wait_for(lambda: evaluations() > 5, timeout=15, what="more evaluations")
        assert fired_events(fired) == [("verify_failed", "raised"), ("verify_failed", "cleared")]
    finally:
        mount.stop()
