#!/usr/bin/env bash
# The property tests of DESIGN.md's safety rules (crates/sim/tests/properties.rs) and of the
# schedules' cron rules (crates/core/src/schedule.rs) at CASES cases
# each (default 1,000,000), release build. Prints each property's result line and the time;
# exits non-zero if any property fails (proptest then prints the minimal case and its seed).
#   bash bench/properties.sh [CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${1:-1000000}
log=$(mktemp)
start=$(date +%s)
rc=0
PROPTEST_CASES=$CASES cargo test --release -q -p baton-sim --test properties -- --test-threads 2 >"$log" 2>&1 || rc=$?
# The schedules' cron rules: the next time is the first time the rule fires (issue 12).
PROPTEST_CASES=$CASES cargo test --release -q -p baton-core --lib schedule::tests::props >>"$log" 2>&1 || rc=$?
grep -E '^test |test result|minimal failing|Test failed|cc [0-9a-f]{64}' "$log" || true
echo "cases per property: $CASES; wall: $(( $(date +%s) - start )) s; exit $rc"
rm -f "$log"
exit $rc
