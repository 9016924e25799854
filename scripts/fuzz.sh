#!/usr/bin/env bash
# Fuzzes everything swapkit parses from outside (fuzz/fuzz_targets): each target for SECONDS
# (default 15, what .ci/run uses; the documented long run is `scripts/fuzz.sh 600`), starting
# from the seed corpus in fuzz/seeds/<target>, and prints how many inputs each ran. A crash
# fails the script and leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-15}
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=(native_header manifest wire live_data admin signature)
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    log=$(mktemp)
    if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/"
        exit 1
    fi
    runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | grep -o '[0-9]*' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    summary+=("$t: ${runs:-?} inputs in ${seconds}s, coverage ${cov:-?} edges, no crash")
    rm -f "$log"
done
printf 'fuzz: %s\n' "${summary[@]}"
