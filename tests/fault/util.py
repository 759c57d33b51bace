"""Helpers shared by the fault tests: the CLI, trees as digests, snapshots read back."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from pathlib import Path

from dpmsfs import config, control
from dpmsfs.browse.reader import SnapshotReader
from dpmsfs.errors import DpmsError
from dpmsfs.store.store import Store
from dpmsfs.store.tree import EntryType
from tests.mount.conftest import run_cli as dpmsfs

# A tree as compared by the tests: relative path -> ("d",) | ("l", target) | ("f", sha256, size)
Digest = tuple[object, ...]
TreeDigest = dict[str, Digest]


def file_digest(data: bytes) -> Digest:
    return ("f", hashlib.sha256(data).hexdigest(), len(data))


def real_tree(root: Path) -> tuple[TreeDigest, dict[str, bytes]]:
    """(digests, file contents) of a real directory, symlinks not followed."""
    digests: TreeDigest = {}
    contents: dict[str, bytes] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(root / rel if rel else root) as entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    digests[path] = ("d",)
                    stack.append(path)
                elif stat.S_ISLNK(st.st_mode):
                    digests[path] = ("l", os.readlink(entry.path))
                elif stat.S_ISREG(st.st_mode):
                    data = Path(entry.path).read_bytes()
                    contents[path] = data
                    digests[path] = file_digest(data)
                else:
                    digests[path] = ("other",)
    return digests, contents


def snapshot_tree(store_dir: Path, name: str) -> TreeDigest:
    """The digests of everything one snapshot holds (content read and hashed)."""
    with Store.open(str(store_dir), readonly=True) as store:
        reader = SnapshotReader(store)
        record = reader.snapshot(name)
        result: TreeDigest = {}
        for raw, entry in reader.walk(record.root_tree_id):
            path = os.fsdecode(raw)
            if entry.type == EntryType.FILE:
                h = hashlib.sha256()
                for chunk in reader.iter_content(entry):
                    h.update(chunk)
                result[path] = ("f", h.hexdigest(), entry.size)
            elif entry.type == EntryType.DIR:
                result[path] = ("d",)
            elif entry.type == EntryType.SYMLINK:
                result[path] = ("l", os.fsdecode(entry.target))
            else:
                result[path] = ("other",)
        return result


def root_tree_ids(store_dir: Path) -> dict[str, bytes]:
    with Store.open(str(store_dir), readonly=True) as store:
        return {r.name: r.root_tree_id for r in store.list_snapshots()}


def tree_diff(got: TreeDigest, want: TreeDigest, limit: int = 12) -> str:
    """A short description of how two trees differ ('' if equal)."""
    lines = []
    for path in sorted(set(got) | set(want)):
        a, b = got.get(path), want.get(path)
        if a != b:
            lines.append(f"  {path}: got {a}, expected {b}")
    more = f"\n  ... {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def wait_for_control(workdir: Path, store_dir: Path, timeout: float = 20.0) -> None:
    """Wait until the daemon answers on its control socket (a killed one leaves a stale
    socket file behind, so the file existing is not enough)."""
    cfg = config.load(workdir, store=str(store_dir))
    deadline = time.monotonic() + timeout
    while True:
        try:
            control.call(cfg.control_socket, {"cmd": "status"}, timeout=5)
            return
        except DpmsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def snapshot_cli(workdir: Path, store_dir: Path, label: str = "") -> str:
    result = dpmsfs("snapshot", str(workdir), "--store", str(store_dir), "--label", label)
    assert result.returncode == 0, f"snapshot failed ({result.returncode}): {result.stderr}"
    return result.stdout.strip()


def verify_cli(workdir: Path, store_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return dpmsfs("verify", *extra, "--store", str(store_dir), str(workdir))


def damage_lines(verify_output: str) -> list[str]:
    """Lines of `dpmsfs verify` output that report damage (the summary counts aside)."""
    return [
        line
        for line in verify_output.splitlines()
        if line.startswith(("damaged", "problem", "DAMAGED", "  affects"))
    ]


def fail_open_diagnostics(workdir: Path) -> str:
    """Who keeps a dead mount alive: the watchdog, holders of /dev/fuse or of files in it."""
    lines = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
            state = (pid_dir / "stat").read_text().split(") ", 1)[1].split()[0]
            targets = []
            for fd in (pid_dir / "fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target == "/dev/fuse" or target.startswith(str(workdir)):
                    targets.append(f"{fd.name}->{target}")
        except OSError:
            continue
        if targets or (str(workdir) in cmdline and "fusermount" in cmdline):
            lines.append(f"pid {pid_dir.name} [{state}] {cmdline}: {' '.join(targets)}")
            for task in (pid_dir / "task").iterdir():
                try:
                    stack = (task / "stack").read_text().split("\n")[:4]
                    wchan = (task / "wchan").read_text()
                except OSError:
                    continue
                lines.append(f"  task {task.name} wchan {wchan}: {' | '.join(stack)}")
    return "\n".join(lines)
