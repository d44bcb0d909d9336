# Sourced by lab/zero-downtime and lab/faults: installs what the lab needs from Debian's
# packages when it is missing, and builds baton and baton-lab.
if [ "$(id -u)" != 0 ]; then
  echo "the lab makes network namespaces and needs root: run it with sudo" >&2
  exit 2
fi
need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} for the lab" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
fi
(cd "$root" && cargo build --release -q -p baton-cli -p baton-lab) >&2
