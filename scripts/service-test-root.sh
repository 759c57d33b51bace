#!/usr/bin/env bash
# Build, once, the Debian 12 root the service tests boot with systemd-nspawn, and print
# its path. Cached outside the clone (/var/cache/dpmsfs-test/root-<key>) where <key>
# hashes everything that goes in, so CI builds it once (about a minute) and then reuses
# it; a change of the package lists gives a new key and a new root.
#
# It holds systemd, D-Bus, FUSE 3 and Python, and the apt packages scripts/setup.sh
# installs, so the project's install script finds them present inside the container
# (no apt run per test session). dpmsfs itself is NOT in the root: each test session
# installs it with scripts/install-service.sh, the way a tool gets it.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${DPMSFS_TEST_CACHE:-/var/cache/dpmsfs-test}"
suite=bookworm
mirror="${DPMSFS_TEST_MIRROR:-http://deb.debian.org/debian}"

base_packages=(systemd systemd-sysv dbus fuse3 python3 ca-certificates procps curl)
# shellcheck disable=SC2207  # the list is space-separated package names
setup_packages=($(sed -n 's/^apt_packages=(\(.*\))$/\1/p' "$repo/scripts/setup.sh"))
if [ "${#setup_packages[@]}" -eq 0 ]; then
    echo "service-test-root: cannot read apt_packages from scripts/setup.sh" >&2
    exit 1
fi
packages=("${base_packages[@]}" "${setup_packages[@]}")
key="$(printf '%s\n' "$suite" "$mirror" "${packages[@]}" "layout-1" | sha256sum | cut -c1-16)"
root="$cache/root-$key"
if [ -f "$root/.dpmsfs-test-root-complete" ]; then
    echo "$root"
    exit 0
fi

for tool in debootstrap systemd-nspawn; do
    command -v "$tool" >/dev/null || {
        echo "service-test-root: $tool missing (apt-get install debootstrap systemd-container)" >&2
        exit 1
    }
done
mkdir -p "$cache"
exec 9>"$cache/.build-lock"
flock 9  # one builder at a time; the others find the finished root
if [ -f "$root/.dpmsfs-test-root-complete" ]; then
    echo "$root"
    exit 0
fi
building="$root.building"
rm -rf "$building"
# debootstrap resolves only a small --include well (it fails configuring -dev packages):
# the base system first, then apt inside the root (nspawn, not booted) for the rest.
include="$(IFS=,; echo "${base_packages[*]}")"
echo "service-test-root: building $root (bookworm: ${packages[*]})" >&2
debootstrap --variant=minbase --include="$include" "$suite" "$building" "$mirror" >&2
systemd-nspawn -q -D "$building" --register=no --keep-unit --pipe \
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${setup_packages[@]}" >&2
systemd-nspawn -q -D "$building" --register=no --keep-unit --pipe apt-get clean >&2

# A booted container needs an identity, no getty on a console nobody reads, and no
# services that wait for hardware it has not got.
: >"$building/etc/machine-id"
echo dpmsfs-test >"$building/etc/hostname"
for unit in console-getty.service getty@tty1.service systemd-timesyncd.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "$building/etc/systemd/system/$unit"
done
touch "$building/.dpmsfs-test-root-complete"
mv "$building" "$root"
echo "$root"
