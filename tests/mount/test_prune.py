"""`dpmsfs prune`, `pin`, `unpin` on a real mount: prune in a loop while an import
writes through the mount, a restore runs and `.snapshots` is read, then verify."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

from tests.mount.conftest import CliMount, cli_snapshot, run_cli, wait_for

BLOBS = [random.Random(i).randbytes(150_000 + i * 1000) for i in range(12)]


def cli(*args: str) -> str:
    result = run_cli(*args)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def test_prune_while_capturing_restoring_and_reading(mounted: CliMount, store_dir: Path) -> None:
    work = mounted.workdir
    store = ["--store", str(store_dir)]
    (work / "pgm").mkdir()
    (work / "pgm" / "flow.tp").write_bytes(BLOBS[0])
    (work / "results").mkdir()
    names = []
    for day in range(6):
        (work / "results" / f"day{day}.log").write_bytes(BLOBS[1 + day])
        names.append(cli_snapshot(work, store_dir, label="pre-restore" if day == 2 else ""))
        (work / "results" / f"day{day}.log").unlink()
    assert cli("pin", str(work), *store, names[0], "--reason", "golden").strip() == (
        f"pinned {names[0]}"
    )
    listing = json.loads(cli("snapshots", str(work), *store, "--json"))
    assert [s["pinned"] for s in listing] == [True] + [False] * 5

    # dry run: says what goes, changes nothing
    dry = json.loads(cli("prune", str(work), *store, "--keep-last", "1", "--dry-run", "--json"))
    assert dry["removed"] == [names[1], names[3], names[4]]
    assert dry["collect"]["reclaimed_bytes"] > 2 * 150_000
    assert len(json.loads(cli("snapshots", str(work), *store, "--json"))) == 6

    mounted.wait_for_view()
    stop = threading.Event()
    errors: list[str] = []
    kept_view = mounted.view / names[2]

    def importer() -> None:  # new files through the mount, reusing forgotten contents
        n = 0
        while not stop.is_set():
            (work / "results" / f"live{n}.log").write_bytes(BLOBS[1 + n % 11])
            n += 1

    def view_reader() -> None:
        while not stop.is_set():
            try:
                if (kept_view / "pgm" / "flow.tp").read_bytes() != BLOBS[0]:
                    errors.append("view: wrong bytes")
                if (kept_view / "results" / "day2.log").read_bytes() != BLOBS[3]:
                    errors.append("view: wrong bytes of day2.log")
            except OSError as exc:
                errors.append(f"view: {exc}")

    threads = [threading.Thread(target=importer), threading.Thread(target=view_reader)]
    for thread in threads:
        thread.start()
    reports = []
    try:
        for round_ in range(4):
            out = work.parent / f"restored{round_}"
            restore = run_cli("restore", str(work), *store, "--snapshot", names[2], "--to",
                              str(out))  # fmt: skip
            assert restore.returncode == 0, restore.stderr
            assert (out / "results" / "day2.log").read_bytes() == BLOBS[3]
            reports.append(json.loads(cli("prune", str(work), *store, "--keep-last", "1",
                                          "--json")))  # fmt: skip
            cli_snapshot(work, store_dir)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors[:5]
    first = reports[0]
    assert first["forgotten"] == [names[1], names[3], names[4]]
    reasons = {k["name"]: k["reasons"] for k in first["kept"]}
    assert reasons[names[0]] == ["pinned"] and reasons[names[2]] == ["label pre-restore"]
    assert first["collect"]["reclaimed_bytes"] > 0
    assert all(r["forgotten"] for r in reports[1:])  # each round's older snapshot went

    status = json.loads(run_cli("status", str(work), *store, "--json").stdout)
    assert status["prune"]["last_removed_snapshots"] == 1
    assert status["prune"]["last_error"] == ""
    text = run_cli("status", str(work), *store).stdout
    assert "prune           last" in text

    # capture caught up: verify (data, and the capture state's references) is clean
    cli_snapshot(work, store_dir)
    verify = run_cli("verify", str(work), *store, "--read-data")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    latest = json.loads(cli("snapshots", str(work), *store, "--json"))[-1]["name"]
    files = sorted(os.listdir(mounted.view / latest / "results"))
    assert files == sorted(os.listdir(work / "results"))
    for name in files:
        assert (mounted.view / latest / "results" / name).read_bytes() == (
            work / "results" / name
        ).read_bytes()

    # errors are one clear line
    bad = run_cli("pin", str(work), *store, "2000-01-01T000000Z")
    assert bad.returncode == 3 and "no snapshot named" in bad.stderr
    bad = run_cli("prune", str(work), *store, "--keep-within", "soon")
    assert bad.returncode == 2 and "bad duration" in bad.stderr and "Traceback" not in bad.stderr


def test_prune_and_pin_offline(workdir: Path, store_dir: Path) -> None:
    store = ["--store", str(store_dir)]
    mount = CliMount(workdir, *store)
    try:
        names = []
        for i in range(3):
            (workdir / f"f{i}").write_bytes(BLOBS[i])
            names.append(cli_snapshot(workdir, store_dir))
    finally:
        mount.stop()
    wait_for(lambda: not (workdir / ".snapshots").exists(), what="unmounted")
    cli("pin", str(workdir), *store, names[1])
    assert "yes" in cli("snapshots", str(workdir), *store).splitlines()[2]
    out = cli("prune", str(workdir), *store, "--keep-last", "1")
    assert f"keep    {names[1]}" in out and f"remove  {names[0]}" in out
    assert "reclaimed" in out
    cli("unpin", str(workdir), *store, names[1])
    bad = run_cli("unpin", str(workdir), *store, names[1])
    assert bad.returncode == 3 and "not pinned" in bad.stderr
    report = json.loads(cli("prune", str(workdir), *store, "--keep-last", "1", "--json"))
    assert report["forgotten"] == [names[1]]
    status = json.loads(run_cli("status", str(workdir), *store, "--json").stdout)
    assert status["prune"]["last_removed_snapshots"] == 1
    verify = run_cli("verify", str(workdir), *store, "--read-data")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_daemon_prunes_on_its_schedule(workdir: Path, store_dir: Path) -> None:
    config = workdir.parent / "tool.toml"
    config.write_text(
        f'store = "{store_dir}"\nprune_interval_hours = 0.0005\n[retention]\nkeep_last = 1\n'
    )
    mount = CliMount(workdir, "--config", str(config))
    try:
        names = []
        for i in range(3):
            (workdir / f"f{i}").write_bytes(BLOBS[i])
            names.append(cli_snapshot(workdir, store_dir))

        def pruned() -> bool:
            status = json.loads(run_cli("status", str(workdir), "--config", str(config),
                                        "--json").stdout)  # fmt: skip
            return bool(status["prune"]["last_removed_snapshots"])

        wait_for(pruned, timeout=60, what="a scheduled prune")
        listing = json.loads(cli("snapshots", str(workdir), "--config", str(config), "--json"))
        assert names[0] not in [s["name"] for s in listing]
        assert "prune" in mount.log()
    finally:
        mount.stop()
