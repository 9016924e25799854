#!/usr/bin/env bash
# examples/http under wrk, updated three ways side by side: swapkit's swap through the admin
# socket (100 and a rollback), a restart, and a graceful restart that hands the listening
# socket over; at full speed and paced. Per second: requests, non-2xx and socket errors,
# p50 / p99 / max, and the longest time a probe (one request a millisecond) had no answer.
# Regenerates examples/http/under-load.svg and .csv, and prints the tables BENCHMARKS.md
# quotes. Exits non-zero if a swap lost a request.
#
#   scripts/http-wrk.sh [http-bench options: --connections N, --paced-ms N, --wasm, ...]
#
# Installs wrk (Debian's package) if it is missing. Takes about 75 s after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || apt-get install -y wrk
cargo build --release -p http-host -p http-bench
exec target/release/http-bench --svg examples/http/under-load.svg \
  --csv examples/http/under-load.csv "$@"
