"""Permissions as an unprivileged user: the mount decides exactly as the native file system.

The daemon runs as root; the equipment software does not. A worker process running as
uid/gid 12345 (no supplementary groups) performs a matrix of operations on objects of
many modes and owners, once in a native directory and once through the mount, and every
outcome (success, or the errno) must be the same. Objects the user creates through the
mount must belong to the user, with the mode it asked for minus its own umask.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.mount.conftest import MountedPair

USER = 12345
OTHER = 23456
GROUP_OTHER = 4242
PYTHON = "/usr/bin/python3"  # readable by every user, unlike the venv's interpreter

pytestmark = pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"needs {PYTHON}")

# Runs as the unprivileged user: performs [op, args...] on paths under argv[1] and
# prints one outcome per operation ("ok", an errno name, or a stat summary).
_WORKER = textwrap.dedent(
    """
    import ctypes, errno, json, os, stat, subprocess, sys
    root = sys.argv[1]
    libc = ctypes.CDLL(None, use_errno=True)

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    def p(rel):
        return os.path.join(root, rel)

    def summary(rel):
        st = os.lstat(p(rel))
        return [st.st_uid, st.st_gid, oct(st.st_mode)]

    def run(op, *args):
        if op == "read":
            fd = os.open(p(args[0]), os.O_RDONLY)
            try:
                return os.read(fd, 100).decode()
            finally:
                os.close(fd)
        if op == "write":
            fd = os.open(p(args[0]), os.O_WRONLY)
            try:
                return os.write(fd, b"w")
            finally:
                os.close(fd)
        if op == "exec":
            return subprocess.run([p(args[0])], capture_output=True).returncode
        if op == "list":
            return sorted(os.listdir(p(args[0])))
        if op == "search":
            return os.stat(p(args[0])).st_size
        if op == "create":
            fd = os.open(p(args[0]), os.O_CREAT | os.O_EXCL | os.O_WRONLY, int(args[1], 8))
            os.close(fd)
            return summary(args[0])
        if op == "mkdir":
            os.mkdir(p(args[0]), int(args[1], 8))
            return summary(args[0])
        if op == "mkfifo":
            os.mkfifo(p(args[0]), int(args[1], 8))
            return summary(args[0])
        if op == "symlink":
            os.symlink("target", p(args[0]))
            return summary(args[0])
        if op == "unlink":
            return os.unlink(p(args[0]))
        if op == "rmdir":
            return os.rmdir(p(args[0]))
        if op == "rename":
            return os.rename(p(args[0]), p(args[1]))
        if op == "chmod":
            os.chmod(p(args[0]), int(args[1], 8))
            return summary(args[0])
        if op == "chown":
            os.chown(p(args[0]), args[1], args[2], follow_symlinks=False)
            return summary(args[0])
        if op == "utime":
            os.utime(p(args[0]), ns=(10**18, 10**18))
            return os.stat(p(args[0])).st_mtime_ns
        if op == "utime_now":
            times = (Timespec * 2)(Timespec(0, (1 << 30) - 1), Timespec(0, (1 << 30) - 1))
            if libc.utimensat(-100, p(args[0]).encode(), times, 0) != 0:
                raise OSError(ctypes.get_errno(), "utimensat")
            return "now"
        if op == "truncate":
            return os.truncate(p(args[0]), 1)
        if op == "setxattr":
            return os.setxattr(p(args[0]), "user.k", b"v")
        if op == "stat":
            return summary(args[0])
        raise ValueError(op)

    results = []
    for op in json.load(sys.stdin):
        try:
            results.append(run(*op))
        except OSError as exc:
            results.append(errno.errorcode.get(exc.errno, str(exc.errno)))
    json.dump(results, sys.stdout)
    """
)


def as_user(root: Path, ops: list[list[Any]], umask: int = 0o022) -> list[Any]:
    out = subprocess.run(
        [PYTHON, "-I", "-c", _WORKER, str(root)],
        input=json.dumps(ops),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        user=USER,
        group=USER,
        extra_groups=[],
        umask=umask,
    ).stdout
    return list(json.loads(out))


def in_both(env: MountedPair, name: str) -> tuple[Path, Path]:
    native, mounted = env.native / name, env.mount / name
    for d in (native, mounted):
        d.mkdir()
        os.chmod(d, 0o755)
    return native, mounted


def compare(env: MountedPair, name: str, ops: list[list[Any]], umask: int = 0o022) -> list[Any]:
    """Run `ops` as the user below both directories; the outcomes must be identical."""
    native = as_user(env.native / name, ops, umask)
    env.churn()
    mounted = as_user(env.mount / name, ops, umask)
    differences = [(op, n, m) for op, n, m in zip(ops, native, mounted, strict=True) if n != m]
    assert not differences, "(operation, native, mount): " + repr(differences)
    return native


def make(path: Path, mode: int, uid: int, gid: int, *, is_dir: bool = False) -> None:
    if is_dir:
        path.mkdir()
    else:
        path.write_bytes(b"#!/bin/sh\nexit 7\n")
    os.chown(path, uid, gid)
    os.chmod(path, mode)


MODES = [0o000, 0o400, 0o600, 0o644, 0o700, 0o711, 0o755, 0o777, 0o4755, 0o2755]


def test_matrix_on_files_and_directories(env: MountedPair) -> None:
    dirs = in_both(env, "matrix")
    ops: list[list[Any]] = []
    for root in dirs:
        for owner in (USER, OTHER):
            for mode in MODES:
                tag = f"{owner}-{mode:o}"
                for op in (
                    "read",
                    "write",
                    "exec",
                    "chmod",
                    "chown",
                    "utime",
                    "utime_now",
                    "truncate",
                    "setxattr",
                    "chgrp",
                ):
                    make(root / f"f-{tag}-{op}", mode, owner, owner)
                os.makedirs(root / "inner", exist_ok=True)
                for op in (
                    "list",
                    "search",
                    "create",
                    "unlink",
                    "rename",
                    "mkdir",
                    "rmdir",
                    "chmod",
                    "utime",
                    "utime_now",
                ):
                    d = root / f"d-{tag}-{op}"
                    make(d, 0o755, owner, owner, is_dir=True)
                    make(d / "victim", 0o644, OTHER, OTHER)
                    (d / "sub").mkdir()
                    os.chmod(d, mode)
    for owner in (USER, OTHER):
        for mode in MODES:
            tag = f"{owner}-{mode:o}"
            ops += [
                ["read", f"f-{tag}-read"],
                ["write", f"f-{tag}-write"],
                ["exec", f"f-{tag}-exec"],
                ["chmod", f"f-{tag}-chmod", "640"],
                ["chmod", f"f-{tag}-chmod", "4777"],
                ["chown", f"f-{tag}-chown", USER, -1],
                ["chown", f"f-{tag}-chown", OTHER, -1],
                ["chown", f"f-{tag}-chgrp", -1, GROUP_OTHER],
                ["chown", f"f-{tag}-chgrp", -1, USER],
                ["utime", f"f-{tag}-utime"],
                ["utime_now", f"f-{tag}-utime_now"],
                ["truncate", f"f-{tag}-truncate"],
                ["setxattr", f"f-{tag}-setxattr"],
                ["stat", f"f-{tag}-write"],  # writing clears set-id bits natively
                ["list", f"d-{tag}-list"],
                ["search", f"d-{tag}-search/victim"],
                ["create", f"d-{tag}-create/new", "666"],
                ["unlink", f"d-{tag}-unlink/victim"],
                ["rename", f"d-{tag}-rename/victim", f"d-{tag}-rename/moved"],
                ["rename", f"d-{tag}-rename/sub", "inner/moved-{tag}"],
                ["mkdir", f"d-{tag}-mkdir/newdir", "777"],
                ["rmdir", f"d-{tag}-rmdir/sub"],
                ["chmod", f"d-{tag}-chmod", "700"],
                ["utime", f"d-{tag}-utime"],
                ["utime_now", f"d-{tag}-utime_now"],
            ]
    results = compare(env, "matrix", ops)
    # The matrix really exercises both outcomes.
    assert "EACCES" in results and "EPERM" in results and None in results
    assert any(isinstance(r, list) for r in results)


def test_sticky_directory(env: MountedPair) -> None:
    for root in in_both(env, "sticky"):
        make(root / "tmp", 0o1777, 0, 0, is_dir=True)
        for name, owner in (("others", OTHER), ("mine", USER), ("others2", OTHER)):
            make(root / "tmp" / name, 0o666, owner, owner)
        make(root / "tmp" / "others_dir", 0o777, OTHER, OTHER, is_dir=True)
        make(root / "mine_sticky", 0o1777, USER, USER, is_dir=True)
        make(root / "mine_sticky" / "others", 0o644, OTHER, OTHER)
    results = compare(
        env,
        "sticky",
        [
            ["unlink", "tmp/others"],
            ["rename", "tmp/others2", "tmp/renamed"],
            ["rmdir", "tmp/others_dir"],
            ["write", "tmp/others"],
            ["rename", "tmp/mine", "tmp/others2"],  # replacing another's file
            ["unlink", "tmp/mine"],
            ["create", "tmp/new", "644"],
            ["unlink", "tmp/new"],
            ["unlink", "mine_sticky/others"],  # the directory's owner may
        ],
    )
    assert results[0] == "EPERM" and results[5] is None


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_created_objects_belong_to_the_caller(env: MountedPair, umask: int) -> None:
    name = f"owner-{umask:o}"
    for root in in_both(env, name):
        make(root / "open", 0o777, 0, 0, is_dir=True)
    ops: list[list[Any]] = [
        ["create", "open/file666", "666"],
        ["create", "open/file4755", "4755"],
        ["create", "open/file2755", "2755"],
        ["create", "open/file1700", "1700"],
        ["mkdir", "open/dir777", "777"],
        ["mkdir", "open/dir3777", "3777"],
        ["mkfifo", "open/fifo", "666"],
        ["symlink", "open/link"],
    ]
    results = compare(env, name, ops, umask=umask)
    assert results[0] == [USER, USER, oct(stat.S_IFREG | (0o666 & ~umask))]
    for rel in ("open/file666", "open/dir777", "open/link"):
        st = os.lstat(env.under / name / rel)
        assert (st.st_uid, st.st_gid) == (USER, USER), rel


def test_setgid_directory(env: MountedPair) -> None:
    for root in in_both(env, "setgid"):
        make(root / "shared", 0o2777, OTHER, GROUP_OTHER, is_dir=True)
    ops: list[list[Any]] = [
        ["create", "shared/file", "644"],
        ["create", "shared/exe-setgid", "2755"],  # not a member: native drops S_ISGID
        ["create", "shared/exe-setuid", "4755"],
        ["mkdir", "shared/dir", "755"],
        ["create", "shared/dir/nested", "600"],
        ["mkdir", "shared/dir/nested_dir", "700"],
        ["mkfifo", "shared/fifo", "600"],
        ["symlink", "shared/link"],
        ["chmod", "shared/file", "2755"],  # not in the file's group: S_ISGID dropped
        ["chown", "shared/file", -1, USER],
    ]
    results = compare(env, "setgid", ops)
    assert results[0][1] == GROUP_OTHER
    assert results[3][1] == GROUP_OTHER and int(results[3][2], 8) & stat.S_ISGID
    assert results[5][1] == GROUP_OTHER and int(results[5][2], 8) & stat.S_ISGID
