#!/bin/sh
# Build the rootfs tarball of the test image (imported with `docker import` as oncache-test:latest).
#
#   tests/image/build-rootfs.sh OUT.tar
#
# Contents: /bin/busybox (busybox-static) with a symlink for every applet it has, iperf3 and
# sockperf with the shared libraries ldd names (and the dynamic loader), /etc/passwd, /etc/group,
# placeholder /etc/hosts and /etc/resolv.conf (docker bind-mounts its own over them), /tmp.
# Needs: busybox-static (or any static busybox), iperf3, sockperf, ldd, tar. No network.
set -eu

out=${1:?usage: build-rootfs.sh OUT.tar}

die() { echo "build-rootfs.sh: $*" >&2; exit 1; }

busybox=""
for b in /bin/busybox /usr/bin/busybox; do
    if [ -x "$b" ]; then busybox=$b; break; fi
done
[ -n "$busybox" ] || die "busybox not found (apt-get install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked; install busybox-static"
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/oncache-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT INT TERM

mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" \
         "$root/proc" "$root/sys" "$root/dev" "$root/root" "$root/var/www" "$root/run"
mkdir -p "$root/tmp" && chmod 1777 "$root/tmp"

cp "$busybox" "$root/bin/busybox"
# One symlink per applet this busybox has (sh, ping, sleep, ip, nc, wget, httpd, sha256sum, ...).
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# Copy a file to the same path inside the rootfs, following symlinks.
copy_file() {
    src=$1
    [ -e "$src" ] || die "missing $src"
    dst="$root$src"
    [ -e "$dst" ] && return 0
    mkdir -p "$(dirname "$dst")"
    cp -L "$src" "$dst"
}

for prog in iperf3 sockperf; do
    path=$(command -v "$prog" 2>/dev/null) || die "$prog not found (apt-get install $prog)"
    copy_file "$path"
    # ldd lines: "libx.so => /lib/.../libx.so (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)",
    # "linux-vdso.so.1 (0x..)" (virtual, no file).
    for lib in $(ldd "$path" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }'); do
        copy_file "$lib"
    done
done

cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
printf '127.0.0.1\tlocalhost\n' > "$root/etc/hosts"
: > "$root/etc/resolv.conf"
echo oncache-test > "$root/etc/hostname"

# Check the binaries run inside the rootfs when we can (needs chroot; skip silently otherwise).
if command -v chroot >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    chroot "$root" /usr/bin/iperf3 --version >/dev/null 2>&1 || die "iperf3 does not run in the rootfs"
    chroot "$root" /usr/bin/sockperf --version >/dev/null 2>&1 || die "sockperf does not run in the rootfs"
fi

tmp_out="$out.tmp.$$"
tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$tmp_out" .
mv -f "$tmp_out" "$out"
