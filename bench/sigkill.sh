#!/usr/bin/env bash
# SIGKILL torture: real `baton serve` processes driving real agents over mutual TLS, the
# orchestrator killed with SIGKILL at random moments (50-1500 ms apart) and restarted on the same
# journal, campaign after campaign. Prints one JSON line: runs, kills, kills with nodes in flight,
# steps run twice, budget violations, campaigns not completed (the last three must be 0).
#   bash bench/sigkill.sh [RUNS]     # RUNS campaigns of 3 nodes; 60 give well over 100 kills
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-60}
log=$(mktemp)
BATON_SIGKILL_RUNS=$RUNS cargo test --release -q -p baton-cli --test live \
  the_orchestrator_survives_sigkill_at_random_points -- --nocapture >"$log" 2>&1 || { tail -40 "$log"; exit 1; }
grep '^sigkill:' "$log" | sed 's/^sigkill: //'
rm -f "$log"
