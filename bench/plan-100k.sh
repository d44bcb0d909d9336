#!/usr/bin/env bash
# The whole `baton plan` command on generated 100k-node fleets with 1M service memberships, the
# members dealt evenly (gen-fleet's default) and at random (--shuffle 1), with 20 update domains
# and with none, at max_parallel 5% and 10%: the waves against the lower bound, CPU (user + sys)
# and peak RSS, medians over RUNS runs, against a baseline measured in the same run: Python's
# json.load of the same file (the cost of merely parsing the input). Exits non-zero if a plan is
# above its bound where the services leave room (all but random members at 10%, where every
# service must put exactly its allowance in every wave).
#   bash bench/plan-100k.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-7}
cargo build --release -q -p baton-cli
B=target/release/baton
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
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
print(f"{label:<44} cpu median {statistics.median(cpu):.3f} s (min {min(cpu):.3f}, max {max(cpu):.3f})  peak RSS median {statistics.median(rss)/1024:.0f} MiB")
PY
}
rc=0
for deal in even random; do
for ud in 20 0; do
  F=$T/fleet-$deal-ud$ud.json
  extra=""; [ $deal = random ] && extra="--shuffle 1"
  # shellcheck disable=SC2086
  $B gen-fleet --nodes 100000 --memberships 10 --service-size 100 --update-domains $ud --fault-domains 0 $extra > "$F"
  echo "fleet, members dealt $deal, $ud update domains: $(du -h "$F" | cut -f1), $(grep -o '"n[0-9]*"' "$F" | wc -l) node references"
  measure "  baseline: python json.load" python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$F"
  for mp in 5% 10%; do
    C=$T/campaign-$mp.toml
    printf 'name = "to-1.1"\ntarget_version = "1.1"\nmax_parallel = "%s"\nmax_failed_nodes = 5\n' "$mp" > "$C"
    strict=1; [ $deal = random ] && [ $mp = 10% ] && strict=0
    $B plan --fleet "$F" --campaign "$C" --format json | python3 -c "
import json, sys
p = json.load(sys.stdin)
w, lb = len(p['waves']), p['lower_bound']
print(f'  max_parallel $mp: {w} waves, lower bound {lb} ({p[\"binding\"]})' + ('' if w == lb else '  ABOVE THE BOUND'))
sys.exit(0 if w == lb or not $strict else 1)" || rc=1
    measure "  baton plan --format json, max_parallel $mp" $B plan --fleet "$F" --campaign "$C" --format json
  done
done
done
exit $rc
