#!/usr/bin/env bash
# Install everything, then run dpmsfs on an embedded default:
#   - a dpmsfs-server on loopback (127.0.0.1:8765, data in /var/lib/dpmsfs-demo/server)
#   - a demo work directory /srv/dpmsfs-demo/work filled with realistic tool data,
#     mounted by dpmsfs with its store in /var/lib/dpmsfs-demo/store, syncing to that server
# then edits a test program, takes snapshots and shows status, history and .snapshots.
# `bash scripts/demo.sh stop` unmounts and stops the server.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
base=/var/lib/dpmsfs-demo
work=/srv/dpmsfs-demo/work
store="$base/store"
dpmsfs=.venv/bin/dpmsfs

stop() {
    if [ -x "$dpmsfs" ] && grep -q " $work fuse.dpmsfs " /proc/self/mounts 2>/dev/null; then
        "$dpmsfs" umount "$work" || fusermount3 -u -z "$work" || true
    fi
    if [ -f "$base/server.pid" ]; then
        kill "$(cat "$base/server.pid")" 2>/dev/null || true
        rm -f "$base/server.pid"
    fi
}

if [ "${1:-}" = "stop" ]; then
    stop
    echo "demo stopped (data kept in $base and $work)"
    exit 0
fi

bash scripts/setup.sh
stop
mkdir -p "$base" "$work"

token_file="$base/demo-tool.token"
if [ ! -s "$token_file" ]; then
    echo "== creating a token for the tool demo-tool"
    mkdir -p "$base/server"
    (umask 077; .venv/bin/dpmsfs-server token create --data "$base/server" --tool demo-tool >"$token_file")
fi

echo "== starting dpmsfs-server on 127.0.0.1:8765"
rm -f "$base/server.ready"
nohup .venv/bin/dpmsfs-server --data "$base/server" --listen 127.0.0.1:8765 \
    --ready-file "$base/server.ready" >"$base/server.log" 2>&1 &
echo $! >"$base/server.pid"
for _ in $(seq 100); do [ -s "$base/server.ready" ] && break; sleep 0.1; done
curl -fsS http://127.0.0.1:8765/v2/health 2>/dev/null || python3 -c \
    "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8765/v2/health').read().decode())"
echo

if [ -z "$(ls -A "$work")" ]; then
    dataset="$repo/../shared/bench/mkdataset.py"
    if [ -f "$dataset" ]; then
        echo "== generating a 200 MB demo work directory"
        python3 "$dataset" init "$work" --size-mb 200 --seed 42 --tool 1 >/dev/null
    else
        mkdir -p "$work/pgm/demo" && echo 'int main() { return 0; }' >"$work/pgm/demo/main.cpp"
    fi
fi

echo "== mounting $work"
"$dpmsfs" mount "$work" --store "$store" --tool-id demo-tool \
    --server http://127.0.0.1:8765 --token-file "$token_file"
"$dpmsfs" snapshot "$work" --label "demo: imported"

program=$(find "$work/pgm" -name '*.cpp' -print -quit)
echo "== editing $program through the mount"
echo "// tuned limits $(date -u +%FT%TZ)" >>"$program"
"$dpmsfs" snapshot "$work" --label "demo: after edit"

echo "== dpmsfs sync --wait: every snapshot on the server"
"$dpmsfs" sync "$work" --wait --timeout 300

echo "== dpmsfs status"
"$dpmsfs" status "$work" || true
echo "== dpmsfs snapshots"
"$dpmsfs" snapshots "$work"
if [ -d "$work/.snapshots" ]; then
    echo "== ls $work/.snapshots"
    ls "$work/.snapshots"
fi
cat <<EOT

The demo is running: $work is mounted (edit files there as the equipment would),
dpmsfs-server listens on 127.0.0.1:8765 and receives every snapshot. Try:
  $dpmsfs status $work
  $dpmsfs snapshot $work --label "my label"
  ls $work/.snapshots/
  $dpmsfs snapshots --server http://127.0.0.1:8765 --tool demo-tool --token-file $token_file
Stop it with: bash scripts/demo.sh stop
EOT
