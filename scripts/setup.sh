#!/usr/bin/env bash
# Install everything dpmsfs needs on a Debian 12 machine, as root, idempotently:
# the apt packages (FUSE 3, its headers for building pyfuse3, fio for the benchmarks,
# chromium for the fleet page test, build-essential for the C build of bench_workloads.py)
# and a virtualenv at .venv/ in the repository root with the project installed.
# `setup.sh --system-only`: the apt packages and /dev/fuse only (the install scripts for
# tools and servers use it, then install the package into a venv of their own).
set -euo pipefail
system_only=false
[ "${1:-}" = "--system-only" ] && system_only=true
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

apt_packages=(fuse3 libfuse3-dev pkg-config gcc build-essential python3-dev python3-venv fio psmisc attr systemd-container debootstrap chromium)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing apt packages (${missing[*]}) and not root; run as root" >&2
        exit 1
    fi
    echo "setup: installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# /dev/fuse must exist for mounts; load the module where the kernel has it as one.
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi

if $system_only; then
    echo "setup: system packages ready"
    exit 0
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $("$python" --version)"
    "$python" -m venv .venv
fi
# Quiet unless something fails; a stamp avoids re-resolving on every run.
# Editable in "compat" mode: a plain path in a .pth file. The default mode installs an
# import finder that every Python start-up runs (importlib.util, pathlib, urllib...):
# 20-40 ms of a cold `dpmsfs restore` of one file, whose target is 0.1 s.
stamp=.venv/.dpmsfs-installed-compat
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
    touch "$stamp"
fi
echo "setup: ready ($(.venv/bin/dpmsfs --version))"
