#!/usr/bin/env bash
# Runs the whole oncache test suite: unit tests, and integration tests against the real kernel
# and real dockerds in network namespaces the tests create and remove. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the tests create network namespaces and dockerds: run as root" >&2; exit 1; }
packaging/deps.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --workspace --locked "$@"
# The benchmark's short mode: it must keep running and keep taking the fast path (no speed is
# asserted; the full run is `cargo bench -p oncache --bench netns`).
cargo bench -p oncache --bench netns --locked -- --short
