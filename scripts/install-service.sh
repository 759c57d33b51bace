#!/usr/bin/env bash
# Install and start the systemd service protecting WORKDIR (as root).
#   bash scripts/install-service.sh /data/tool [--store /disk2/dpmsfs/data-tool]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
workdir="${1:?usage: install-service.sh WORKDIR [--store DIR]}"
shift
bash "$repo/scripts/setup.sh"
name="$(systemd-escape --path "$workdir")"
conf="/etc/dpmsfs/${name}.toml"
mkdir -p /etc/dpmsfs
if [ "${1:-}" = "--store" ] && [ -n "${2:-}" ] && [ ! -f "$conf" ]; then
    printf 'store = "%s"\n' "$2" >"$conf"
fi
sed "s|@REPO@|$repo|g" "$repo/scripts/systemd/dpmsfs@.service" >/etc/systemd/system/dpmsfs@.service
systemctl daemon-reload
systemctl enable --now "dpmsfs@${name}.service"
systemctl --no-pager status "dpmsfs@${name}.service" | head -n 5
