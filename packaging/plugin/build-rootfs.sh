#!/bin/sh
# Builds the rootfs of the managed Docker plugin (`docker plugin create oncache:latest DIR`, with
# DIR holding packaging/plugin/config.json and this rootfs), offline, from this machine's files.
#
#   packaging/plugin/build-rootfs.sh OUT_DIR [BINARY]
#
# OUT_DIR: the rootfs folder to create (must not exist, or be empty).
# BINARY:  the oncache binary to put in it [default: target/release/oncache of this checkout].
#
# Contents: /usr/local/bin/oncache; what the daemon executes (plugin/src: Command::new):
# iptables and ip6tables (the machine's own choice of backend: Debian's alternatives point them
# at xtables-nft-multi, which must match what dockerd on the host uses, or their rules land in
# different rulesets) with the extensions they dlopen (the xtables folder) and ip (iproute2:
# `features::vxlan_works` probes VXLAN with `ip link add`); the shared libraries ldd names for all
# of them (and the dynamic loader); /etc/protocols and /etc/ethertypes; minimal /etc/passwd and
# /etc/group; empty mount points the plugin's config.json binds over.
# Needs: iptables, iproute2, ldd, cp. No network. Checks, as root, that it runs in a chroot.
set -eu

die() { echo "build-rootfs.sh: $*" >&2; exit 1; }

root=${1:?usage: build-rootfs.sh OUT_DIR [BINARY]}
here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${2:-$here/target/release/oncache}
[ -x "$bin" ] || die "no oncache binary at $bin (cargo build --release -p oncache)"
if [ -e "$root" ] && [ -n "$(ls -A "$root")" ]; then die "$root exists and is not empty"; fi
mkdir -p "$root"

mkdir -p "$root/usr/local/bin" "$root/usr/sbin" "$root/usr/bin" "$root/etc" "$root/proc" \
         "$root/sys" "$root/dev" "$root/run/docker/plugins" "$root/var/lib/oncache" "$root/root" \
         "$root/host/proc/sys/net/netfilter"
mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"

# Copy a file to the same path inside the rootfs, following symlinks.
copy_file() {
    [ -e "$1" ] || die "missing $1"
    dst="$root$1"
    [ -e "$dst" ] && return 0
    mkdir -p "$(dirname "$dst")"
    cp -L "$1" "$dst"
}

# The shared libraries a binary or library loads (ldd lines: "libx.so => /lib/.../libx.so (0x..)",
# "/lib64/ld-linux-x86-64.so.2 (0x..)", "linux-vdso.so.1 (0x..)": virtual, no file), copied.
copy_libs() {
    for lib in $(ldd "$1" 2>/dev/null | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }'); do
        copy_file "$lib"
    done
}

cp -L "$bin" "$root/usr/local/bin/oncache"
chmod 0755 "$root/usr/local/bin/oncache"
copy_libs "$bin"

# iptables, ip6tables: the binary the machine's `iptables` resolves to (a multi-call binary:
# xtables-nft-multi or xtables-legacy-multi, dispatching on argv[0]), linked under its name.
for tool in iptables ip6tables; do
    path=$(command -v "$tool" 2>/dev/null) || die "$tool not found (apt-get install iptables)"
    real=$(readlink -f "$path")
    copy_file "$real"
    copy_libs "$real"
    [ "$(dirname "$real")" = /usr/sbin ] || ln -sf "$real" "$root/usr/sbin/$(basename "$real")"
    ln -sf "$(basename "$real")" "$root/usr/sbin/$tool"
done
# The extensions (-m conntrack, -j MARK, -j CT, ...) are dlopen'd from libxtables' folder.
libxt=$(ldd "$(readlink -f "$(command -v iptables)")" | awk '$1 ~ /^libxtables/ { print $3 }')
[ -n "$libxt" ] || die "iptables does not load libxtables?"
xtdir=${XTABLES_LIBDIR:-$(dirname "$(readlink -f "$libxt")")/xtables}
[ -d "$xtdir" ] || die "no xtables extensions folder $xtdir (set XTABLES_LIBDIR)"
mkdir -p "$root$xtdir"
for ext in "$xtdir"/*.so; do
    cp -L "$ext" "$root$xtdir/"
    copy_libs "$ext"
done

ip=$(command -v ip 2>/dev/null) || die "ip not found (apt-get install iproute2)"
ip=$(readlink -f "$ip")
cp -L "$ip" "$root/usr/sbin/ip"
copy_libs "$ip"

for f in /etc/protocols /etc/ethertypes; do
    [ -e "$f" ] && copy_file "$f"
done
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
# Docker binds the machine's own over these (network type host).
: > "$root/etc/hosts"
: > "$root/etc/resolv.conf"

# Prove it runs: the binaries, the libraries and the extensions all resolve inside the rootfs.
if command -v chroot >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    chk() { chroot "$root" "$@" >/dev/null 2>&1 || die "does not run in the rootfs: $*"; }
    chk /usr/local/bin/oncache --version
    chk /usr/sbin/iptables -V
    chk /usr/sbin/ip6tables -V
    chk /usr/sbin/iptables -m conntrack -j MARK -h
    chk /usr/sbin/iptables -j CT -h
    chk /usr/sbin/ip -V
fi
echo "build-rootfs.sh: rootfs in $root ($(du -sh "$root" | cut -f1))"
