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
    have bpftool || need+=(bpftool)
    # The benchmark turns its SVG chart into PNG.
    have rsvg-convert || need+=(librsvg2-bin)
    # The docker-compose lab: Debian's docker-compose, and debootstrap for its node image.
    have docker-compose || need+=(docker-compose)
    have debootstrap || need+=(debootstrap)
    # tests/cni.rs: a real CNI client (podman with its CNI backend) and Debian's CNI plugins
    # (portmap, chained after oncache), in /usr/lib/cni.
    have podman || need+=(podman)
    [ -x /usr/lib/cni/portmap ] || need+=(containernetworking-plugins)
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

# eBPF toolchain, for plugin/build.rs: it builds bpf/oncache-ebpf for bpfel-unknown-none with
# `-Z build-std=core` (core from source: the rust-src component) on the stable toolchain, linked
# by bpf-linker. 0.10.3 uses the Rust toolchain's own LLVM; newer releases need a system LLVM 23.
if have rustup && ! rustup component list --installed 2>/dev/null | grep -qx 'rust-src'; then
    echo "oncache: adding the rust-src component"
    rustup component add rust-src
fi
if ! have bpf-linker && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/bpf-linker" ]; then
    echo "oncache: installing bpf-linker 0.10.3"
    cargo install bpf-linker@0.10.3 --locked
fi
if [ "${1:-}" = "--test" ]; then
    # tests/fuzz.sh: cargo-fuzz needs the nightly toolchain, and plugin/build.rs then builds the
    # eBPF object with nightly too (-Z build-std=core: nightly's rust-src).
    if have rustup; then
        if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
            echo "oncache: installing the nightly toolchain (for cargo-fuzz)"
            rustup toolchain install nightly --profile minimal
        fi
        if ! rustup component list --installed --toolchain nightly 2>/dev/null | grep -qx 'rust-src'; then
            echo "oncache: adding the rust-src component to nightly"
            rustup component add rust-src --toolchain nightly
        fi
    else
        echo "oncache: no rustup: install a nightly toolchain with rust-src for tests/fuzz.sh" >&2
    fi
    if ! have cargo-fuzz && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-fuzz" ]; then
        echo "oncache: installing cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
fi
