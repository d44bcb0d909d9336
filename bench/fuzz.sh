#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target in fuzz/ for SECONDS each (default 60; BENCHMARKS.md records
# an hour each): the fleet and campaign loaders (and the planner behind them), the agent's
# config, the agent journal's replay, and what the API and the agent parse from the network.
# Installs cargo-fuzz and the nightly toolchain when missing. Seeds come from the repository's
# examples and fuzz/seeds; what the fuzzer learns stays in fuzz/corpus. Exit 1 on the first
# crash, with the input that caused it under fuzz/artifacts/TARGET/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${1:-60}"
targets="${FUZZ_TARGETS:-fleet campaign agent_config agent_journal api_bodies}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd "$root/fuzz"
seed() { # target, files...
  local t="$1"; shift
  mkdir -p "corpus/$t"
  for f in "$@"; do [ -f "$f" ] && cp "$f" "corpus/$t/seed-$(basename "$(dirname "$f")")-$(basename "$f")"; done
}
seed fleet "$root"/examples/*/fleet.toml
seed campaign "$root"/examples/*/campaign.toml
seed agent_config "$root"/dist/agent.toml
seed agent_journal seeds/agent_journal/*
seed api_bodies seeds/api_bodies/*
echo "building the targets (nightly, address sanitizer)"
cargo +nightly fuzz build --release >/dev/null
for t in $targets; do
  start=$(date +%s)
  log="$(mktemp)"
  if ! cargo +nightly fuzz run --release "$t" "corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz $t: CRASH after $(( $(date +%s) - start )) s; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo "?")
  echo "fuzz $t: ${secs} s, ${runs} runs, coverage ${cov} edges, 0 crashes, corpus $(ls "corpus/$t" | wc -l) inputs"
  rm -f "$log"
done
