#!/usr/bin/env bash
# examples/http under wrk, an HTTP load generator from outside the process: one second of
# `wrk --latency` at a time, so that each second gets its requests, non-2xx responses, socket
# errors and p50 / p99 / max. First a baseline with no swap, then as long while the shop plugin
# is swapped (100 swaps, then a rollback). Exits non-zero if any request failed.
#
#   scripts/http-wrk.sh [seconds per phase, default 5] [connections, default 32]
#
# Installs wrk (Debian's package) if it is missing. PORT (default 18080) picks the port.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
conns=${2:-32}
port=${PORT:-18080}
command -v wrk >/dev/null || apt-get install -y wrk
cargo build --release --quiet -p http-host
log="$(mktemp)"
# One second of warm-up, then the baseline; the swaps start after both (with a second to
# spare, as each wrk run takes a little over its second), and 100 of them fill one phase. A
# second counts as swapping if a swap happened in it, as baseline if none had happened yet.
every=$(( secs * 1000 / 101 ))
target/release/http-host --serve "$port" --swap-after-s $(( secs + 2 )) --swap-every-ms "$every" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 600); do grep -q '^ready' "$log" && break; sleep 0.1; done
grep -q '^ready' "$log" || { cat "$log"; echo "the server did not start"; exit 1; }
url="http://127.0.0.1:$port/price/42?qty=5"

# wrk prints latencies as 230.00us, 4.12ms or 1.02s: in microseconds.
to_us='function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1000000; return v }'
printf '%4s %-9s %6s %9s %7s %7s %9s %9s %9s\n' s phase swaps requests non2xx socket "p50 µs" "p99 µs" "max µs"
rows=()
s=0
while :; do
  before=$(grep -c '^swap ' "$log" || true)
  out=$(wrk -t2 -c"$conns" -d1s --latency "$url")
  after=$(grep -c '^swap ' "$log" || true)
  row=$(awk "$to_us"'
    /^ +Latency +[0-9]/ { max = us($4) }
    /^ +50% / { p50 = us($2) }
    /^ +99% / { p99 = us($2) }
    /requests in/ { req = $1 }
    /Socket errors/ { gsub(/,/, ""); sock = $4 + $6 + $8 + $10 }
    /Non-2xx/ { bad = $5 }
    END { printf "%d %d %d %d %d %d", req, bad + 0, sock + 0, p50, p99, max }' <<<"$out")
  if [ "$s" -eq 0 ]; then phase=warm-up
  elif [ "$after" -gt "$before" ]; then phase=swapping
  elif [ "$before" -eq 0 ]; then phase=baseline
  else phase=after
  fi
  read -r req bad sock p50 p99 max <<<"$row"
  printf '%4s %-9s %6s %9s %7s %7s %9s %9s %9s\n' "$s" "$phase" $(( after - before )) "$req" "$bad" "$sock" "$p50" "$p99" "$max"
  rows+=("$phase $req $bad $sock $p99")
  s=$(( s + 1 ))
  # Done once the rollback is in and one second ran after it (or after 4 phases' worth).
  if grep -q '^rollback' "$log" && [ "$phase" = after ]; then break; fi
  [ "$s" -gt $(( 4 * secs + 4 )) ] && break
done
printf '%s\n' "${rows[@]}" | awk '
  $1 == "baseline" { bn++; br += $2; if ($5 > bp) bp = $5 }
  $1 == "swapping" { sn++; sr += $2; if ($5 > sp) sp = $5 }
  { failed += $3 + $4 }
  END {
    br /= bn; sr /= sn
    printf "\nbaseline: %.0f req/s over %d s, worst p99 of a second %d µs\n", br, bn, bp
    printf "swapping: %.0f req/s over %d s, worst p99 of a second %d µs\n", sr, sn, sp
    printf "throughput while swapping: %.1f%% of the baseline; worst p99 %.2fx\n", 100 * sr / br, sp / bp
    printf "failed requests: %d (every second, warm-up included)\n", failed
    exit (failed > 0)
  }'
echo "swaps done: $(grep -c '^swap ' "$log"), $(grep -c '^rollback' "$log") rollback"
