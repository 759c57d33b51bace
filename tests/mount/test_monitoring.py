"""Monitoring against a real mount: `dpmsfs status` exit codes (daemon up, down, killed),
`--all`, the daemon's alert hook firing once per change of state, /metrics scraped and
parsed, and progress bars only on a terminal."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dpmsfs import mountinfo, report_extras
from tests.mount.conftest import CliMount, cli_snapshot, run_cli, wait_for


def status(workdir: Path, store: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = run_cli("status", str(workdir), "--store", str(store), "--json", *extra)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def scrape(listen: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def write_config(path: Path, fired: Path) -> None:
    # Thresholds of 0 %: the test machine's disk never raises the free-space alert.
    path.write_text(
        "[alerts]\n"
        "store_free_warning_percent = 0\n"
        "store_free_critical_percent = 0\n"
        "evaluate_interval_seconds = 0.2\n"
        f'command = "cat >> {fired}; echo >> {fired}"\n'
    )


def fired_events(fired: Path) -> list[tuple[str, str]]:
    if not fired.exists():
        return []
    return [(e["name"], e["state"]) for e in map(json.loads, fired.read_text().splitlines())]


def test_status_alerts_and_metrics_of_a_running_mount(workdir: Path, store_dir: Path) -> None:
    conf, fired = workdir.parent / "dpmsfs.toml", workdir.parent / "fired.jsonl"
    write_config(conf, fired)
    (workdir / "pgm.c").write_bytes(b"int main(void) { return 0; }\n" * 100)
    mount = CliMount(workdir, "--store", str(store_dir), "--config", str(conf),
                     "--metrics", "127.0.0.1:0")  # fmt: skip
    try:
        cli_snapshot(workdir, store_dir)
        code, report = status(workdir, store_dir, "--config", str(conf))
        assert code == 0, report["health"]
        assert report["health"] == {"level": 0, "state": "healthy", "alerts": []}
        assert report["store_total_bytes"] > 0 and report["store_free_bytes"] >= 0
        assert report["compression_ratio"] is not None and report["overall_ratio"] is not None
        assert report["last_verify"] is None
        listen = report["metrics"]["listen"]
        assert listen.startswith("127.0.0.1:") and not listen.endswith(":0")

        m = scrape(listen)
        assert m["dpmsfs_up"] == [({}, 1.0)]
        assert m["dpmsfs_files"] == [({}, 1.0)]
        assert m["dpmsfs_logical_bytes"] == [({}, 2900.0)]
        assert m["dpmsfs_captured_bytes_total"][0][1] == 2900.0
        assert m["dpmsfs_last_snapshot_timestamp_seconds"][0][1] > 1.7e9
        assert m["dpmsfs_store_bytes"][0][1] > 0
        assert "dpmsfs_alert_active" not in m

        # A damaged store (as a failed verify records it): critical, the hook fires once.
        report_extras.record_verify(store_dir, ok=False, read_data=True, summary="DAMAGED: test",
                                    damaged=1, problems=0, finished_ns=1)  # fmt: skip
        wait_for(lambda: fired_events(fired) == [("verify_failed", "raised")], timeout=15,
                 what="the alert command")  # fmt: skip
        code, report = status(workdir, store_dir, "--config", str(conf))
        assert code == 2
        assert [a["name"] for a in report["health"]["alerts"]] == ["verify_failed"]
        assert "DAMAGED: test" in run_cli("status", str(workdir), "--store", str(store_dir)).stdout
        m = scrape(listen)
        assert m["dpmsfs_alert_active"] == [({"name": "verify_failed", "severity": "critical"},
                                             1.0)]  # fmt: skip
        assert m["dpmsfs_last_verify_ok"] == [({}, 0.0)]

        # A real verify passes: the alert clears, once; nothing fires in between.
        verified = run_cli("verify", str(workdir), "--store", str(store_dir))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "\r" not in verified.stderr  # no progress bar without a terminal
        wait_for(lambda: len(fired_events(fired)) >= 2, timeout=15, what="cleared")
        evaluations = report["alerts"]["evaluations"]
        wait_for(lambda: status(workdir, store_dir)[1]["alerts"]["evaluations"] > evaluations + 3,
                 timeout=15, what="more evaluations")  # fmt: skip
        assert fired_events(fired) == [("verify_failed", "raised"), ("verify_failed", "cleared")]
        code, report = status(workdir, store_dir, "--config", str(conf))
        assert code == 0 and report["last_verify"]["ok"] is True
        assert report["alert_delivery"]["delivered"] == 2

        # kill -9: status still answers, from the store, with a critical exit code.
        os.kill(mount.proc.pid, signal.SIGKILL)
        mount.proc.wait(10)
        wait_for(lambda: not mountinfo.is_dpmsfs_mount(workdir), timeout=10, what="fail-open")
        code, report = status(workdir, store_dir, "--config", str(conf))
        assert code == 2
        assert report["daemon"].startswith("not running")
        names = {a["name"] for a in report["health"]["alerts"]}
        assert names == {"daemon_down", "not_mounted"}
        assert report["captured_files"] == 1 and report["last_verify"]["ok"] is True
        text = run_cli("status", str(workdir), "--store", str(store_dir))
        assert text.returncode == 2 and "CRITICAL daemon_down" in text.stdout
    finally:
        mount.stop()


def test_status_all_lists_this_workdir_and_exits_with_the_worst(
    mounted: CliMount, store_dir: Path
) -> None:
    cli_snapshot(mounted.workdir, store_dir)
    result = run_cli("status", "--all", "--json")
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)
    mine = [r for r in doc["workdirs"] if r["workdir"] == str(mounted.workdir)]
    assert len(mine) == 1 and mine[0]["daemon"] == "running"
    assert doc["level"] == max(r["health"]["level"] for r in doc["workdirs"])
    assert result.returncode == doc["level"]
    both = run_cli("status", "--all", str(mounted.workdir))
    assert both.returncode == 2 and "--all takes no WORKDIR" in both.stderr


def test_status_help_documents_the_exit_codes() -> None:
    result = run_cli("status", "--help")
    assert result.returncode == 0
    for line in ("0  healthy", "1  warning", "2  critical"):
        assert line in result.stdout


def run_on_terminal(*args: str) -> tuple[int, str]:
    """`dpmsfs ARGS` with stderr on a pseudo-terminal (stdout a pipe): what a user sees."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "dpmsfs.cli.main", *args],
                            stdout=subprocess.DEVNULL, stderr=follower)  # fmt: skip
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(60)
    os.close(leader)
    return proc.returncode, seen.decode(errors="replace")


def test_progress_on_a_terminal_only(workdir: Path, store_dir: Path) -> None:
    for i in range(200):
        (workdir / f"log{i:03d}.csv").write_bytes(os.urandom(20_000))
    code, terminal = run_on_terminal("snapshot", str(workdir), "--store", str(store_dir))
    assert code == 0, terminal
    assert "scanning" in terminal or "capturing" in terminal, terminal
    code, terminal = run_on_terminal("verify", str(workdir), "--store", str(store_dir),
                                     "--read-data")  # fmt: skip
    assert code == 0, terminal
    assert "packs" in terminal or "index" in terminal, terminal
    quiet = run_cli("verify", str(workdir), "--store", str(store_dir))
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_metrics_address_in_use_is_shown_and_the_mount_still_serves(
    workdir: Path, store_dir: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        mount = CliMount(workdir, "--store", str(store_dir), "--metrics", f"127.0.0.1:{port}")
        try:
            (workdir / "still.txt").write_text("works")
            _, report = status(workdir, store_dir)
            assert report["daemon"] == "running"
            expected = f"cannot serve metrics on 127.0.0.1:{port}"
            assert report["metrics"]["error"].startswith(expected)
            assert (workdir / "still.txt").read_text() == "works"
        finally:
            mount.stop()
    bad = run_cli("mount", str(workdir), "--metrics", "nowhere")
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_status_of_a_never_mounted_directory_is_one_clear_line(workdir: Path) -> None:
    result = run_cli("status", str(workdir), "--store", str(workdir.parent / "nostore"))
    assert result.returncode == 3
    assert result.stderr.startswith("dpmsfs: no store at") and "Traceback" not in result.stderr
