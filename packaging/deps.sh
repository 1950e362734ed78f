#!/usr/bin/env bash
# Installs what oncache needs to build, run and be tested, where it is missing (Debian/Ubuntu).
# Idempotent; run as root. Used by install.sh, tests/run.sh and CI.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have dockerd || need+=(docker.io)
have containerd || need+=(containerd)
have iptables || need+=(iptables)
have ip || need+=(iproute2)
have nsenter || need+=(util-linux)
have cc || need+=(gcc libc6-dev)
have pkg-config || need+=(pkg-config)
if [ "${1:-}" = "--test" ]; then
    # The test image is a busybox rootfs with iperf3 and sockperf for traffic tests.
    dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
    have iperf3 || need+=(iperf3)
    have sockperf || need+=(sockperf)
    have tcpdump || need+=(tcpdump)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "oncache: installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! have cargo; then
    for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do [ -x "$d/cargo" ] && export PATH="$d:$PATH"; done
fi
have cargo || { echo "oncache: cargo not found; install Rust with rustup first" >&2; exit 1; }
