#!/usr/bin/env bash
# Install dpmsfs-server on a Linux server as a systemd service (as root).
#
#   bash scripts/install-server.sh --data DIR [--listen HOST:PORT]
#        [--tls-cert FILE --tls-key FILE] [--no-start]
#
# DIR is the data directory on the server's RAID volume (e.g. /srv/dpmsfs); it and the
# tokens file in it (DIR/tokens.json, created with an admin token on first start) belong
# to the system user dpmsfs-server. Settings go to /etc/dpmsfs/server.env, which the unit
# reads; edit it and `systemctl restart dpmsfs-server` to change them. Idempotent.
# Exit status: 0 installed, 2 usage error, 1 anything else failed.
set -euo pipefail
umask 022  # units, configuration and venv readable by all, writable by root only
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${DPMSFS_PREFIX:-/opt/dpmsfs}"
usage="usage: install-server.sh --data DIR [--listen HOST:PORT] [--tls-cert FILE --tls-key FILE] [--no-start]"

data="" listen="0.0.0.0:8765" cert="" key="" start=true
while [ $# -gt 0 ]; do
    case "$1" in
        --data) data="${2:?$usage}"; shift 2 ;;
        --listen) listen="${2:?$usage}"; shift 2 ;;
        --tls-cert) cert="${2:?$usage}"; shift 2 ;;
        --tls-key) key="${2:?$usage}"; shift 2 ;;
        --no-start) start=false; shift ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) echo "install-server: unknown argument $1; $usage" >&2; exit 2 ;;
    esac
done
[ -n "$data" ] || { echo "$usage" >&2; exit 2; }
case "$data" in /*) ;; *) echo "install-server: --data must be an absolute path" >&2; exit 2 ;; esac
if [ -n "$cert$key" ] && { [ -z "$cert" ] || [ -z "$key" ]; }; then
    echo "install-server: --tls-cert and --tls-key go together" >&2; exit 2
fi
for value in "$data" "$listen" "$cert" "$key"; do
    case "$value" in *[[:space:]\"\'\\\$]*) echo "install-server: no spaces, quotes, \\ or \$ in paths and addresses" >&2; exit 2 ;; esac
done
[ "$(id -u)" -eq 0 ] || { echo "install-server: run as root" >&2; exit 1; }

bash "$repo/scripts/install-package.sh" "$repo" "$prefix"

if ! id dpmsfs-server >/dev/null 2>&1; then
    useradd --system --home-dir "$data" --no-create-home --shell /usr/sbin/nologin dpmsfs-server
fi
install -d -m 0750 -o dpmsfs-server -g dpmsfs-server "$data"
options=""
if [ -n "$cert" ]; then
    for f in "$cert" "$key"; do
        [ -r "$f" ] || { echo "install-server: $f: not readable" >&2; exit 1; }
    done
    # The service user must read the key; nobody else needs to.
    chgrp dpmsfs-server "$key" && chmod 0640 "$key"
    options="--tls-cert $cert --tls-key $key"
fi
mkdir -p /etc/dpmsfs
cat >/etc/dpmsfs/server.env.tmp <<ENV
# dpmsfs-server settings (scripts/install-server.sh; docs/operations.md)
DPMSFS_SERVER_DATA=$data
DPMSFS_SERVER_LISTEN=$listen
DPMSFS_SERVER_OPTIONS=$options
ENV
mv /etc/dpmsfs/server.env.tmp /etc/dpmsfs/server.env

sed "s|@PREFIX@|$prefix|g" "$repo/scripts/systemd/dpmsfs-server.service" \
    >/etc/systemd/system/dpmsfs-server.service.tmp
mv /etc/systemd/system/dpmsfs-server.service.tmp /etc/systemd/system/dpmsfs-server.service
systemctl daemon-reload
systemctl enable dpmsfs-server.service 2>&1 | sed 's/^/install-server: /'
if $start; then
    systemctl restart dpmsfs-server.service
    echo "install-server: dpmsfs-server running on $listen, data in $data"
else
    echo "install-server: dpmsfs-server enabled (not started)"
fi
