#!/usr/bin/env bash
# Runs the zero-downtime proof N times (default 5, needs root) and prints the medians of what
# BENCHMARKS.md records: requests, failed, longest gap, rollout_s / ideal_s, and each phase's
# median per-node time.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-5}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for i in $(seq "$runs"); do
  "$root/lab/zero-downtime" > "$out/run$i.jsonl"
  tail -n 1 "$out/run$i.jsonl"
done
python3 - "$out" "$runs" <<'PY'
import json, statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
rows, phases = [], {}
for i in range(1, n + 1):
    lines = [json.loads(l) for l in open(f"{d}/run{i}.jsonl") if l.startswith("{")]
    rows.append(lines[-1])
    for l in lines:
        if "phase_ms" in l:
            for p, ms in l["phase_ms"].items():
                phases.setdefault(p, []).append(ms)
med = lambda k: statistics.median(r[k] for r in rows)
print(f"runs {n}: requests {med('requests'):.0f}, failed max {max(r['failed'] for r in rows)}, "
      f"lost_writes max {max(r['lost_writes'] for r in rows)}, quorum_lost any {any(r['quorum_lost'] for r in rows)}, "
      f"campaigns {sorted(set(r['campaign'] for r in rows))}")
print(f"longest_gap_ms median {med('longest_gap_ms'):.0f} (max {max(r['longest_gap_ms'] for r in rows)})")
ratios = [r["rollout_s"] / r["ideal_s"] for r in rows]
print(f"rollout_s median {med('rollout_s'):.2f}, ideal_s median {med('ideal_s'):.2f}, "
      f"rollout/ideal median {statistics.median(ratios):.3f} (max {max(ratios):.3f})")
for p in ["draining", "updating", "rebooting", "verifying", "restoring"]:
    v = phases.get(p, [0])
    print(f"{p}: median {statistics.median(v):.0f} ms per node, max {max(v)} ms ({len(v)} node-runs)")
PY
