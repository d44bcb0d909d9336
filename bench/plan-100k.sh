#!/usr/bin/env bash
# The whole `baton plan` command on a generated 100k-node fleet with 1M service memberships:
# CPU (user + sys) and peak RSS, medians over RUNS runs, against a baseline measured in the same
# run: Python's json.load of the same file (the cost of merely parsing the input).
#   bash bench/plan-100k.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-7}
cargo build --release -q -p baton-cli
B=target/release/baton
F=$(mktemp --suffix=.json)
trap 'rm -f "$F"' EXIT
$B gen-fleet --nodes 100000 --memberships 10 --service-size 100 > "$F"
echo "fleet: $(du -h "$F" | cut -f1), $(grep -o '"n[0-9]*"' "$F" | wc -l) node references"
measure() { # label, command...
  local label=$1; shift
  local cpu=() rss=()
  for _ in $(seq "$RUNS"); do
    local out
    out=$( { /usr/bin/time -f "%U %S %M" "$@" > /dev/null; } 2>&1 | tail -1)
    read -r u s m <<< "$out"
    cpu+=("$(python3 -c "print($u + $s)")"); rss+=("$m")
  done
  python3 - "$label" "${cpu[*]}" "${rss[*]}" <<'PY'
import statistics, sys
label, cpu, rss = sys.argv[1], [float(x) for x in sys.argv[2].split()], [int(x) for x in sys.argv[3].split()]
print(f"{label:<28} cpu median {statistics.median(cpu):.3f} s (min {min(cpu):.3f}, max {max(cpu):.3f})  peak RSS median {statistics.median(rss)/1024:.0f} MiB")
PY
}
measure "baseline: python json.load" python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$F"
measure "baton plan --format json" $B plan --fleet "$F" --campaign examples/large/campaign.toml --format json
measure "baton plan (text)" $B plan --fleet "$F" --campaign examples/large/campaign.toml
