#!/usr/bin/env bash
# Fuzzes oncache: builds the cargo-fuzz targets in fuzz/ (http: raw bytes into the HTTP server;
# driver: sequences of driver calls) and runs each for SECONDS (default 600, the issue's ten
# minutes) on the real kernel, in a network namespace of its own (oncache::testbed). Exits
# non-zero if either finds a crash (a panic, a malformed answer, a link or firewall rule left
# behind) or a hang; the input is then in fuzz/artifacts/<target>/. Installs nothing:
# packaging/deps.sh --test does (cargo-fuzz, the nightly toolchain with rust-src). Run as
# root. CI: tests/fuzz.sh 20.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: tests/fuzz.sh [SECONDS per target, default 600]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "fuzz.sh: the targets create a network namespace: run as root" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
missing() { echo "fuzz.sh: $1 is missing; run packaging/deps.sh --test" >&2; exit 1; }
command -v cargo >/dev/null || missing cargo
command -v python3 >/dev/null || missing python3
cargo fuzz --version >/dev/null 2>&1 || missing "cargo-fuzz (cargo install cargo-fuzz --locked)"
rustup toolchain list 2>/dev/null | grep -q '^nightly' || missing "the nightly toolchain (rustup toolchain install nightly --profile minimal)"
# plugin/build.rs builds the eBPF object with the same (nightly) toolchain and -Z build-std.
rustup component list --installed --toolchain nightly 2>/dev/null | grep -qx 'rust-src' \
    || missing "rust-src of nightly (rustup component add rust-src --toolchain nightly)"

# No sanitizer: the code under test is safe Rust (the unsafe FFI is the fast path, off in the
# testbed), and the time goes into the kernel; libFuzzer's coverage and panic hook still apply.
fuzz=(cargo +nightly fuzz)
opts=(--sanitizer none)
python3 fuzz/seeds.py
start=$SECONDS
"${fuzz[@]}" build "${opts[@]}"
echo "fuzz.sh: built in $((SECONDS - start)) s"

# Testbed state (a temporary sled store) goes here, and with it whatever a crash leaves.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=()
for target in http driver; do
    mkdir -p "fuzz/corpus/$target"
    log="fuzz/target/fuzz-$target.log"
    echo "fuzz.sh: fuzzing $target for $secs s (log: $log)"
    # New inputs go to the first folder (fuzz/corpus, ignored by git); the seeds are read only.
    if TMPDIR="$tmp" "${fuzz[@]}" run "${opts[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$secs" -timeout=60 -max_len=16384 -dict="fuzz/seeds/$target.dict" \
        -print_final_stats=1 >"$log" 2>&1; then
        echo "fuzz.sh: $target: no crash"
    else
        failed+=("$target")
        echo "fuzz.sh: $target FAILED; its log:" >&2
        grep -v '^#[0-9]' "$log" | tail -n 80 >&2
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)' "$log" | sed "s/^/fuzz.sh: $target: /" || true
    n=$(grep -c 'not done within' "$log" || true)
    [ "$n" = 0 ] || echo "fuzz.sh: $target: $n connections timed out (not findings)"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}; inputs in fuzz/artifacts/ (replay one: cargo +nightly fuzz run --sanitizer none TARGET FILE; ONCACHE_FUZZ_TRACE=1 prints every call)" >&2
    exit 1
fi
echo "fuzz.sh: no crash in ${secs} s per target"
