#!/usr/bin/env bash
# The API's contract (issue 11): schemathesis `--checks all` against a real `baton serve` with
# real agents on loopback (crates/cli/tests/contract.rs; settings in scripts/schemathesis.toml).
# Installs schemathesis in a venv under target/ when missing (python3 and python3-venv from
# Debian's packages when those are missing). Exit 0 only when schemathesis finds no failure.
#   bash scripts/schemathesis.sh [MAX_EXAMPLES]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/schemathesis-venv"
version="4.32.5"
if [ ! -x "$venv/bin/st" ] || ! "$venv/bin/st" --version | grep -q "$version"; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
cd "$root"
# An argument caps the cases per operation (schemathesis' --max-examples; default 100).
if [ -n "${1:-}" ]; then
  export BATON_SCHEMATHESIS_MAX_EXAMPLES="$1"
fi
BATON_SCHEMATHESIS="$venv/bin/st" cargo test -p baton-cli --test contract -- --ignored --nocapture
