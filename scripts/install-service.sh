#!/usr/bin/env bash
# Install dpmsfs on a test tool and protect WORKDIR with the systemd service (as root).
#
#   bash scripts/install-service.sh WORKDIR [--store DIR] [--tool-id ID] [--no-start]
#
# Idempotent; run it again from a newer checkout to upgrade (the service is restarted).
#  1. system packages (FUSE 3, compilers for pyfuse3): scripts/setup.sh --system-only
#  2. the package into a virtualenv of its own, $DPMSFS_PREFIX/venv (default
#     /opt/dpmsfs), from a copy of this checkout in $DPMSFS_PREFIX/src: the checkout may
#     be read-only, removed or moved afterwards
#  3. /etc/dpmsfs/<instance>.toml (store, tool_id), only if it does not exist yet
#  4. /etc/systemd/system/dpmsfs@.service, enabled (and started unless --no-start)
# Exit status: 0 installed, 2 usage error, 1 anything else failed (the message says what).
set -euo pipefail
umask 022  # units, configuration and venv readable by all, writable by root only
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${DPMSFS_PREFIX:-/opt/dpmsfs}"
usage="usage: install-service.sh WORKDIR [--store DIR] [--tool-id ID] [--no-start]"

workdir="" store="" tool_id="" start=true
while [ $# -gt 0 ]; do
    case "$1" in
        --store) store="${2:?$usage}"; shift 2 ;;
        --tool-id) tool_id="${2:?$usage}"; shift 2 ;;
        --no-start) start=false; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        -*) echo "install-service: unknown option $1; $usage" >&2; exit 2 ;;
        *) [ -z "$workdir" ] || { echo "$usage" >&2; exit 2; }; workdir="$1"; shift ;;
    esac
done
[ -n "$workdir" ] || { echo "$usage" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "install-service: run as root" >&2; exit 1; }
case "$workdir" in /*) ;; *) echo "install-service: WORKDIR must be an absolute path" >&2; exit 2 ;; esac
[ -d "$workdir" ] || { echo "install-service: $workdir: no such directory" >&2; exit 1; }
command -v systemctl >/dev/null || { echo "install-service: systemd is required" >&2; exit 1; }
case "$tool_id$store" in *'"'*|*'\'*) echo "install-service: quotes and backslashes are not allowed in --store/--tool-id" >&2; exit 2 ;; esac

bash "$repo/scripts/install-package.sh" "$repo" "$prefix"

# The unit's instance is systemd's escape of the path (/data/my-tool -> data-my\x2dtool);
# the configuration file is named as the daemon looks it up (config.instance_name:
# /data/my-tool -> data-my-tool).
unit="$(systemd-escape --path --template=dpmsfs@.service "$workdir")"
name="$("$prefix/venv/bin/python" -c 'import sys; from pathlib import Path
from dpmsfs.config import instance_name
print(instance_name(Path(sys.argv[1])))' "$workdir")"
conf="/etc/dpmsfs/${name}.toml"
mkdir -p /etc/dpmsfs
if [ ! -f "$conf" ]; then
    {
        echo "# dpmsfs configuration of $workdir (docs/operations.md: configuration reference)"
        [ -n "$store" ] && printf 'store = "%s"\n' "$store"
        [ -n "$tool_id" ] && printf 'tool_id = "%s"\n' "$tool_id"
        true
    } >"$conf.tmp"
    mv "$conf.tmp" "$conf"
    echo "install-service: wrote $conf"
else
    echo "install-service: kept existing $conf"
fi
# The configuration must be one the daemon accepts before the unit is enabled.
"$prefix/venv/bin/python" -c 'import sys; from pathlib import Path
from dpmsfs import config
from dpmsfs.errors import DpmsError
try:
    config.load(Path(sys.argv[1]), Path(sys.argv[2]))
except DpmsError as exc:
    sys.exit(f"install-service: {exc}")' "$workdir" "$conf"

sed "s|@PREFIX@|$prefix|g" "$repo/scripts/systemd/dpmsfs@.service" >/etc/systemd/system/dpmsfs@.service.tmp
mv /etc/systemd/system/dpmsfs@.service.tmp /etc/systemd/system/dpmsfs@.service
systemctl daemon-reload
systemctl enable "$unit" 2>&1 | sed 's/^/install-service: /'
if $start; then
    # Type=notify: this returns once the mount serves (or fails, saying why).
    systemctl restart "$unit"
    echo "install-service: $unit running; $workdir is protected"
else
    echo "install-service: $unit enabled (not started)"
fi
