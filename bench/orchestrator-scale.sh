#!/usr/bin/env bash
# One orchestrator against N hollow agents (issue 14): `baton hollow` stands up N real agents
# in one process (own port, mutual TLS, journal each; the host is simulated: an action takes
# ACTION, a reboot REBOOT), a real `baton serve` drives a campaign across them with a dashboard
# stream open, and one JSON line says how it went:
#   nodes, events (journal entries), wall_s (first node started to last node done, from the
#   run report), ideal_s (`baton simulate`'s makespan of the same campaign with the same
#   out-of-service times), orchestrator_rss_mib (peak, VmHWM, from its start to the campaign's
#   end), rss_with_report_mib (the same peak once the run report has been built and fetched,
#   which replays the whole journal), orchestrator_cpu_s,
#   decision_p50_ms / decision_p99_ms (an agent's report to the commands that follow it, from
#   the baton_decision_seconds histogram: each figure is its bucket's upper edge, ×1.25 apart),
#   stream_bytes (what the /v1/stream subscriber received), journal_events_per_s.
#
#   bash bench/orchestrator-scale.sh N [--keep]
# Environment: ACTION (default 20s..30s), REBOOT (500ms..1s), PARALLEL (max_parallel,
# default 5%), BATON (a baton binary; default: build target/release/baton).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
N="${1:?usage: bench/orchestrator-scale.sh N [--keep]}"
KEEP=0; [ "${2:-}" = "--keep" ] && KEEP=1
ACTION="${ACTION:-20s..30s}"
REBOOT="${REBOOT:-500ms..1s}"
PARALLEL="${PARALLEL:-5%}"
need=()
for tool in curl python3; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
if [ -z "${BATON:-}" ]; then
  (cd "$root" && cargo build --release -q -p baton-cli)
  BATON="$root/target/release/baton"
fi
# Each agent holds a listener and a few connections; the orchestrator a few per agent.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
dir="$(mktemp -d /tmp/baton-scale.XXXXXX)"
# The agents' journals and certificates: on a real fleet each node has its own disk, so here
# they go to memory (tmpfs) rather than share the orchestrator's disk and its fsyncs.
hollow="$(mktemp -d /dev/shm/baton-hollow.XXXXXX 2>/dev/null || mktemp -d "$dir/hollow.XXXXXX")"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$hollow"
  if [ "$KEEP" = 1 ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

"$BATON" hollow --dir "$hollow" --nodes "$N" --action "$ACTION" --reboot "$REBOOT" \
  > "$dir/hollow.out" 2> "$dir/hollow.err" &
pids+=($!)
deadline=$((SECONDS + 600))
until grep -q '^ready ' "$dir/hollow.out" 2>/dev/null; do
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$dir/hollow.err" >&2; echo "baton hollow died" >&2; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "hollow agents not ready in 600 s" >&2; exit 1; }
  sleep 0.5
done
fleet="$dir/fleet.toml"
cp "$hollow/fleet.toml" "$fleet"

# Out of service per node, as the simulator counts it: the action, the agent's 300 ms before it
# exits to reboot, the reboot, and the health windows below.
cat > "$dir/campaign.toml" <<EOF
name = "scale-$N"
target_version = "1.1"
action = "upgrade"
strategy = "continuous"
max_parallel = "$PARALLEL"
max_failed_nodes = 0
health_wait = "0s"
health_stable = "1s"
reboot_timeout = "2m"
ready_timeout = "2m"
stop_grace = "10s"
EOF
range_ms() { # "20s..30s" -> "20000 30000"
  python3 - "$1" <<'PY'
import re, sys
def ms(t):
    m = re.fullmatch(r'(\d+(?:\.\d+)?)(ms|s|m)', t.strip())
    return float(m.group(1)) * {'ms': 1, 's': 1000, 'm': 60000}[m.group(2)]
a, _, b = sys.argv[1].partition('..')
print(int(ms(a)), int(ms(b or a)))
PY
}
read -r alo ahi < <(range_ms "$ACTION")
read -r rlo rhi < <(range_ms "$REBOOT")
lo=$((alo + 300 + rlo + 1000)); hi=$((ahi + 300 + rhi + 1000))
ideal=$("$BATON" simulate --fleet "$fleet" --campaign "$dir/campaign.toml" --duration "${lo}ms..${hi}ms" \
  --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["makespan_s"])')

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
api="http://127.0.0.1:$port"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/token"
chmod 600 "$dir/token"
"$BATON" serve --fleet "$fleet" --db "sqlite:$dir/baton.db" --listen "127.0.0.1:$port" \
  --pki "$hollow/pki" --token-file "$dir/token" > "$dir/serve.out" 2> "$dir/serve.err" &
serve=$!
pids+=($serve)
auth=(-H "Authorization: Bearer $(cat "$dir/token")")
until curl -sf "$api/healthz" >/dev/null; do
  kill -0 $serve 2>/dev/null || { tail "$dir/serve.err" >&2; exit 1; }
  sleep 0.2
done
curl -sN "${auth[@]}" "$api/v1/stream" > "$dir/stream.out" &
pids+=($!)
body=$(python3 -c 'import json,sys; print(json.dumps({"toml": open(sys.argv[1]).read(), "file": "campaign.toml"}))' "$dir/campaign.toml")
id=$(curl -sf "${auth[@]}" -H 'content-type: application/json' -d "$body" "$api/v1/campaigns" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -sf "${auth[@]}" -X POST "$api/v1/campaigns/$id/start" > /dev/null
echo "campaign $id: $N hollow agents, $ACTION per action, ideal ${ideal} s" >&2
deadline=$((SECONDS + 7200))
last=""
while :; do
  state=$(curl -sf "${auth[@]}" "$api/v1/campaigns/$id" \
    | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["phase"], v["active"], v["updated"], v["failed"], v["events"])')
  set -- $state
  if [ "$state" != "$last" ] && [ $((SECONDS % 10)) -eq 0 ]; then echo "  $1: $3 updated, $2 active, $4 failed, $5 events" >&2; fi
  last="$state"
  if [ "$1" != running ] && [ "$2" = 0 ]; then break; fi
  [ $SECONDS -lt $deadline ] || { echo "campaign did not end in 2 h" >&2; exit 1; }
  sleep 1
done
[ "$1" = completed ] && [ "$3" = "$N" ] || { echo "campaign ended $1 with $3 of $N updated, $4 failed" >&2; exit 1; }
rss_kib=$(awk '/^VmHWM:/ {print $2}' /proc/$serve/status)
curl -sf "${auth[@]}" "$api/v1/campaigns/$id/report" > "$dir/report.json"
curl -sf "${auth[@]}" "$api/metrics" > "$dir/metrics.txt"
rss_report_kib=$(awk '/^VmHWM:/ {print $2}' /proc/$serve/status)
ticks=$(getconf CLK_TCK)
cpu=$(awk -v t="$ticks" '{print ($14 + $15) / t}' /proc/$serve/stat)
sleep 0.5
stream_bytes=$(stat -c %s "$dir/stream.out")
python3 - "$N" "$ideal" "$rss_kib" "$cpu" "$stream_bytes" "$5" "$dir" "$rss_report_kib" <<'PY'
import json, sys
n, ideal, rss, cpu, stream, events, d, rss_report = sys.argv[1:]
report = json.load(open(d + "/report.json"))
wall = (report["ended_ms"] - report["started_ms"]) / 1000
buckets = []
for line in open(d + "/metrics.txt").read().splitlines():
    if line.startswith("baton_decision_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), int(float(line.rsplit(" ", 1)[1]))))
total = buckets[-1][1] if buckets else 0
def pct(p):
    for le, c in buckets:
        if total and c >= p * total:
            return round(le * 1000, 3)
    return None
print(json.dumps({
    "nodes": int(n), "events": int(events), "wall_s": round(wall, 1), "ideal_s": float(ideal),
    "wall_over_ideal": round(wall / float(ideal), 3),
    "orchestrator_rss_mib": round(int(rss) / 1024, 1),
    "rss_with_report_mib": round(int(rss_report) / 1024, 1), "orchestrator_cpu_s": round(float(cpu), 1),
    "decisions": total, "decision_p50_ms": pct(0.5), "decision_p99_ms": pct(0.99),
    "stream_bytes": int(stream), "journal_events_per_s": round(int(events) / wall, 1),
}))
PY
