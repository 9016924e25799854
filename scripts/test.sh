#!/usr/bin/env bash
# The whole suite, on a fresh machine: the README's test command, and what .ci/run calls.
#
#   1. the wasm32 target the fixture plugins are built for, and Debian's etcd-server and
#      protobuf-compiler (the fleet's tests and its etcd client) and postgresql (the http
#      example's database, a throw-away cluster per run), if missing;
#   2. cargo test over the workspace: unit, integration (real fixture plugins on the native,
#      wasm and static backends), compile-fail and doc tests;
#   3. swapkit's own tests again, built with neither of its optional features (`wasm`, `ops`):
#      the part of the suite a host that only uses native plugins and patches builds;
#   4. the runtime's module graph has no cycles (scripts/layers.py);
#   5. the short form of the lock-free core's verification (scripts/verify-sync.sh): loom,
#      Miri with several seeds, ThreadSanitizer, and repeated stress runs with every core busy.
#      The long form is `scripts/verify-sync.sh all --full`.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-unknown-unknown
# The fleet's tests run a real etcd (Debian's etcd-server, 3.4), and etcd-client's build
# compiles etcd's protocol with protoc.
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# The http example's shop keeps its carts and visits in PostgreSQL; its tests and demo start
# a throw-away cluster with Debian's binaries (on PATH or in /usr/lib/postgresql/N/bin).
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
  missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then apt-get install -y "${missing[@]}"; fi
cargo test --workspace
cargo test -p swapkit --no-default-features
scripts/layers.py
scripts/verify-sync.sh all
