#!/usr/bin/env bash
# Verifies swapkit's lock-free core (crates/swapkit-sync) the way arc-swap and crossbeam do:
#
#   miri    the crate's unit, hazard and stress tests under Miri, Stacked and Tree Borrows,
#           several seeds each (fences are plain fence(SeqCst) under cfg(miri)); and the
#           direct lane's unsafe helpers in swapkit-abi, under both models;
#   loom    the loom models in tests/loom.rs, over the real code (--cfg loom);
#   tsan    the hazard and stress tests under ThreadSanitizer (nightly, -Zbuild-std), with
#           --cfg swapkit_symmetric_fences, since TSan does not see membarrier;
#   stress  the hazard stress tests, run many times in a row in release while other
#           threads burn every core.
#
# Usage: scripts/verify-sync.sh [miri|loom|tsan|stress|all] [--full]
# The short form (the default) is what CI runs, in a few minutes. --full is the long form:
# 8 seeds per aliasing model, loom with a preemption bound of 5, 20 TSan runs, and 1,000 stress
# runs (about an hour and a half on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
full=false
[[ "${2:-}" == "--full" || "${1:-}" == "--full" ]] && full=true
[[ "$what" == "--full" ]] && what=all
export CARGO_TERM_COLOR=never

nightly_with() {
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    rustup component add --toolchain nightly "$@" >/dev/null
}

run_miri() {
    nightly_with miri rust-src
    local seeds=2
    $full && seeds=8
    for model in "" "-Zmiri-tree-borrows"; do
        for seed in $(seq 1 "$seeds"); do
            echo "== miri ${model:-stacked-borrows} seed $seed"
            MIRIFLAGS="-Zmiri-seed=$seed $model" \
                cargo +nightly miri test -q -p swapkit-sync --target-dir target/miri \
                --lib --test hazard --test stress
        done
        # The direct lane's unsafe helpers in the ABI crate: reading plain values from a
        # guest's bytes, and calling a native lane through its erased entry.
        echo "== miri ${model:-stacked-borrows}: swapkit-abi's lane"
        MIRIFLAGS="$model" cargo +nightly miri test -q -p swapkit-abi --target-dir target/miri \
            --lib lane
    done
}

run_loom() {
    if $full; then
        echo "== loom, preemption bound 5"
        RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=5 \
            cargo test -q --release -p swapkit-sync --target-dir target/loom --test loom
    else
        echo "== loom, preemption bound 3"
        RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 \
            cargo test -q --release -p swapkit-sync --target-dir target/loom --test loom
    fi
}

run_tsan() {
    nightly_with rust-src
    local host
    host="$(rustc -vV | sed -n 's/^host: //p')"
    local times=1
    $full && times=20
    echo "== thread sanitizer, $times run(s)"
    for _ in $(seq 1 "$times"); do
        RUSTFLAGS="-Zsanitizer=thread --cfg swapkit_symmetric_fences" \
        RUSTDOCFLAGS="-Zsanitizer=thread" TSAN_OPTIONS="halt_on_error=1" \
            cargo +nightly test -q -Zbuild-std --target "$host" -p swapkit-sync \
            --target-dir target/tsan --test hazard --test stress
    done
}

run_stress() {
    local runs=20
    $full && runs=1000
    # The test binaries, run directly so that each run costs the tests and nothing else.
    local bins
    bins=$(cargo test --release -p swapkit-sync --test stress --test hazard --no-run 2>&1 |
        sed -n 's/.*Executable .*(\(.*\))$/\1/p')
    # Burn both cores (and more) for the whole run: races that never show on an idle machine
    # show here.
    local burners=()
    for _ in $(seq 1 "$(nproc)"); do
        (while :; do :; done) &
        burners+=($!)
    done
    trap 'kill "${burners[@]}" 2>/dev/null || true' RETURN
    echo "== stress: $runs runs of $(echo "$bins" | wc -l) test binaries, $(nproc) burner threads on $(nproc) cores (load $(cut -d' ' -f1-3 /proc/loadavg))"
    local start=$SECONDS
    for i in $(seq 1 "$runs"); do
        for bin in $bins; do
            if ! SWAPKIT_SEED=$i "$bin" -q >/tmp/swapkit-stress.log 2>&1; then
                cat /tmp/swapkit-stress.log
                echo "stress run $i of $runs FAILED: $bin (SWAPKIT_SEED=$i)"
                return 1
            fi
        done
        if (( i % 50 == 0 )); then
            echo "  $i of $runs runs passed ($((SECONDS - start)) s, load $(cut -d' ' -f1-3 /proc/loadavg))"
        fi
    done
    echo "stress: $runs of $runs runs passed in $((SECONDS - start)) s (load $(cut -d' ' -f1-3 /proc/loadavg))"
    cargo test -q --release -p swapkit-sync --test seccomp
}

case "$what" in
    miri) run_miri ;;
    loom) run_loom ;;
    tsan) run_tsan ;;
    stress) run_stress ;;
    all) run_loom; run_miri; run_tsan; run_stress ;;
    *) echo "usage: $0 [miri|loom|tsan|stress|all] [--full]" >&2; exit 2 ;;
esac
