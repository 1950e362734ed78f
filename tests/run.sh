#!/usr/bin/env bash
# Runs the whole oncache test suite: unit tests, and integration tests against the real kernel
# and real dockerds in network namespaces the tests create and remove; then the benchmark's
# short mode. Run as root. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the tests create network namespaces and dockerds: run as root" >&2; exit 1; }
packaging/deps.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
# Fuzzing in its short mode (the full run is tests/fuzz.sh, 10 minutes per target): it must
# keep building and find nothing.
tests/fuzz.sh 20
# The benchmark must keep running on both labs and keep taking the fast path (no speed is
# asserted; the full run is `cargo bench -p oncache --bench lab`).
cargo bench -p oncache --bench lab --locked -- --lab netns --short
# The compose lab's also with the ends pinned (--pin; it needs two CPUs): containers' cpusets inside the nodes' dockerds.
pin=$([ "$(nproc)" -ge 2 ] && echo --pin || true)
cargo bench -p oncache --bench lab --locked -- --lab compose --short $pin
# The control-plane benchmark likewise (the full run: `cargo bench -p oncache --bench control`).
cargo bench -p oncache --bench control --locked -- --short
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
