#!/usr/bin/env bash
# Install the dpmsfs package from checkout REPO into PREFIX (as root), for the tool and
# server install scripts:  install-package.sh REPO PREFIX
#   PREFIX/src   a copy of the checkout (without .git and .venv): the installed sources
#   PREFIX/venv  a virtualenv with dpmsfs and dpmsfs-server (pip, the usual indexes)
# System packages come first from scripts/setup.sh --system-only.
set -euo pipefail
umask 022  # units, configuration and venv readable by all, writable by root only
repo="${1:?usage: install-package.sh REPO PREFIX}"
prefix="${2:?usage: install-package.sh REPO PREFIX}"
bash "$repo/scripts/setup.sh" --system-only
mkdir -p "$prefix"
rm -rf "$prefix/src.new"
mkdir "$prefix/src.new"
tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude='*.egg-info' --exclude=./build \
    --exclude='__pycache__' --exclude=.mypy_cache --exclude=.pytest_cache --exclude=.ruff_cache \
    -cf - . | tar -C "$prefix/src.new" -xf -
rm -rf "$prefix/src.old"
[ -d "$prefix/src" ] && mv "$prefix/src" "$prefix/src.old"
mv "$prefix/src.new" "$prefix/src"
rm -rf "$prefix/src.old"
if [ ! -x "$prefix/venv/bin/python" ]; then
    python3 -m venv "$prefix/venv"
fi
"$prefix/venv/bin/python" -m pip install -q --upgrade pip
# Not editable: the installed package must not depend on the sources staying as they are.
"$prefix/venv/bin/python" -m pip install -q --upgrade --force-reinstall --no-deps "$prefix/src"
"$prefix/venv/bin/python" -m pip install -q "$prefix/src"
echo "install-package: $("$prefix/venv/bin/dpmsfs" --version) in $prefix/venv"
