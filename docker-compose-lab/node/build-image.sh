#!/bin/sh
# Build the lab node image offline from Debian packages and import it as oncache-lab-node:latest.
#
#   docker-compose-lab/node/build-image.sh
#
# Steps: debootstrap a minimal Debian 12 rootfs (mirror: MIRROR, default deb.debian.org as in
# /etc/apt/sources.list.d), chroot-install docker.io & tools, copy in the oncache binary of this
# checkout (ONCACHE_BIN, or a release build), the entrypoint, packaging/ (the node installs the managed plugin
# at start) and the workload image tarball (tests/image), then
# `tar | docker import` (the FROM scratch equivalent). The debootstrap result is cached in
# WORK (default /var/tmp/oncache-lab-build/base); delete it to start from scratch.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=${WORK:-/var/tmp/oncache-lab-build}
IMAGE=${IMAGE:-oncache-lab-node:latest}
PKGS="docker.io iproute2 iptables iperf3 sockperf busybox-static procps ca-certificates"

command -v debootstrap >/dev/null || apt-get install -y debootstrap
mkdir -p "$WORK"
base="$WORK/base"
if [ ! -e "$base/.done" ]; then
    rm -rf "$base"
    debootstrap --variant=minbase bookworm "$base" "$MIRROR"
    cp /etc/resolv.conf "$base/etc/resolv.conf"
    mount -t proc proc "$base/proc"
    trap 'umount "$base/proc" 2>/dev/null || true' EXIT
    chroot "$base" sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PKGS && apt-get clean && rm -rf /var/lib/apt/lists/*"
    umount "$base/proc"; trap - EXIT
    touch "$base/.done"
fi

# The oncache of this checkout: ONCACHE_BIN if given (the benchmark passes the binary cargo just
# built), else a release build, brought up to date so the image never carries a stale binary.
if [ -n "${ONCACHE_BIN:-}" ]; then
    bin=$ONCACHE_BIN
else
    (cd "$repo" && cargo build --release -p oncache --bin oncache)
    bin="$repo/target/release/oncache"
fi

root="$WORK/rootfs"
rm -rf "$root"
cp -a "$base" "$root"
rm -f "$root/.done"
install -m 0755 "$bin" "$root/usr/local/bin/oncache"
install -m 0755 "$here/entrypoint.sh" "$root/usr/local/bin/entrypoint.sh"
# What `install.sh plugin` needs to make the managed plugin inside the node.
mkdir -p "$root/opt/oncache/packaging"
cp "$repo/packaging/install.sh" "$root/opt/oncache/packaging/"
cp -r "$repo/packaging/plugin" "$root/opt/oncache/packaging/plugin"
mkdir -p "$root/opt/lab"
# The workload image, imported as oncache-test:latest by each node's entrypoint.
# Built inside the node rootfs, so it holds the node's own Debian binaries and libraries.
cp "$repo/tests/image/build-rootfs.sh" "$root/tmp/build-rootfs.sh"
chroot "$root" sh /tmp/build-rootfs.sh /opt/lab/oncache-test.tar
rm -f "$root/tmp/build-rootfs.sh"
: > "$root/etc/resolv.conf"
echo oncache-lab-node > "$root/etc/hostname"

tar --numeric-owner -C "$root" -c . | docker import \
    -c 'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]' \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$IMAGE"
rm -rf "$root"
echo "built $IMAGE"
