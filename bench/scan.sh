#!/usr/bin/env bash
# How long `baton scan` takes against N real agents (hollow: each a real agent with its own
# port, mutual TLS and journal, in one process; their hosts are simulated, so each agent's scan
# action is instant and the figure is baton's: connections, handshakes, answers). Three runs;
# one JSON line with each run's took_ms and the median.
#
#   bash bench/scan.sh N
# Environment: BATON (a baton binary; default: build target/release/baton).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
N="${1:?usage: bench/scan.sh N}"
if [ -z "${BATON:-}" ]; then
  (cd "$root" && cargo build --release -q -p baton-cli)
  BATON="$root/target/release/baton"
fi
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
dir="$(mktemp -d /tmp/baton-scan.XXXXXX)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
"$BATON" hollow --dir "$dir/hollow" --nodes "$N" > "$dir/hollow.out" 2> "$dir/hollow.err" &
pid=$!
deadline=$((SECONDS + 600))
until grep -q '^ready ' "$dir/hollow.out" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { cat "$dir/hollow.err" >&2; echo "baton hollow died" >&2; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "hollow agents not ready in 600 s" >&2; exit 1; }
  sleep 0.2
done
runs=()
for _ in 1 2 3; do
  out="$("$BATON" scan --fleet "$dir/hollow/fleet.toml" --target 1.1 --pki "$dir/hollow/pki" --format json)"
  took="$(printf '%s' "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); t=r["totals"]; assert t["unreachable"]==0, t; print(r["took_ms"])')"
  runs+=("$took")
done
median="$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p)"
echo "{\"nodes\": $N, \"took_ms\": [$(IFS=,; echo "${runs[*]}")], \"median_ms\": $median}"
