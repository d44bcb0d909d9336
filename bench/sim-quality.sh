#!/usr/bin/env bash
# How close `continuous` comes to its lower bound, and whether it is the fastest strategy, over
# many seeds of `baton simulate --compare --duration 10m..20m` on each example and on the fleet
# shapes in bench/fleets (two quorum services on a web tier; capacity-bound hosts).
#   bash bench/sim-quality.sh [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-50}
cargo build --release -q -p baton-cli
for ex in examples/hyperv-cluster examples/azure-fleet examples/etcd-quorum bench/fleets/quorum-web bench/fleets/capacity-bound; do
  for s in $(seq 1 "$SEEDS"); do
    target/release/baton simulate --fleet $ex/fleet.toml --campaign $ex/campaign.toml \
      --compare --duration 10m..20m --seed "$s" --format json
  done | python3 -c "
import json, statistics, sys
rows = [json.loads(line) for line in sys.stdin]
def line(key, label):
    ratios, fastest, viol = [], 0, 0
    for row in rows:
        runs = row[key]
        c = next(r for r in runs if r['strategy'] == 'continuous')
        ratios.append(c['makespan_s'] / c['lower_bound_s'])
        fastest += all(c['makespan_s'] <= r['makespan_s'] for r in runs)
        viol += sum(r['violations'] for r in runs)
    n = len(ratios)
    print(f'$ex ({label}): {n} seeds; continuous/lower bound median {statistics.median(ratios):.3f}, max {max(ratios):.3f}; '
          f'within 5%: {sum(r <= 1.05 for r in ratios)}/{n}; continuous fastest: {fastest}/{n}; violations: {viol}')
line('runs', 'first campaign')
line('learned', 'times learned')
"
done
