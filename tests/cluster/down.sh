#!/usr/bin/env bash
# Stops the test cluster started by up.sh, by PID, and undoes what the node did to this machine:
# the pods' sandboxes and containers, their mounts, the kubelet's cgroups, kube-proxy's nftables
# table, kube-router's iptables chains and ipsets, and the bridge. `--wipe` also deletes the
# state (etcd data, certificates, images, logs), so the next up.sh starts an empty cluster.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${MCP_WARDEN_CLUSTER_DIR:-$root/target/cluster}"
bin="$dir/bin"
run="$dir/run"
node="$run/node"

stop() { # name
  local f="$run/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "cluster: stopped $1 ($pid)" >&2
  fi
  rm -f "$f"
}

# The kubelet first, so nothing restarts what goes next; then the pods, through containerd, so
# the CNI plugins give their addresses back.
stop kubelet
if [ -S "$node/containerd.sock" ] && [ -x "$bin/crictl" ]; then
  crictl=("$bin/crictl" --runtime-endpoint "unix://$node/containerd.sock" --timeout 10s)
  "${crictl[@]}" stopp $("${crictl[@]}" pods -q 2>/dev/null) >/dev/null 2>&1 || true
  "${crictl[@]}" rmp -f $("${crictl[@]}" pods -q 2>/dev/null) >/dev/null 2>&1 || true
fi
for name in kube-router kube-proxy containerd kube-scheduler kube-controller-manager kube-apiserver svcproxy etcd; do
  stop "$name"
done
# Shims of containers whose pods could not be removed outlive containerd: end them and theirs.
for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $node/containerd.sock" 2>/dev/null); do
  pkill -KILL -P "$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null
done
# Mounts under the node's state (volumes, rootfs, the kubelet's own bind mount), deepest first.
if [ -d "$run" ]; then
  findmnt -rn -o TARGET | grep -F "$run/" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  findmnt -rn -o TARGET | grep -qxF "$run" && umount -l "$run"
fi
# The kubelet's cgroups (/kubepods in each v1 hierarchy), leaves first.
for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
done
if command -v nft >/dev/null; then
  for t in "ip kube-proxy" "ip6 kube-proxy"; do nft delete table $t 2>/dev/null; done
fi
for ipt in iptables ip6tables; do
  command -v $ipt >/dev/null || continue
  for table in filter nat mangle; do
    $ipt -t $table -S 2>/dev/null | grep -E '^-A .*-j KUBE-|^-A KUBE-' | sed 's/^-A/-D/' |
      while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null; done
    for chain in $($ipt -t $table -S 2>/dev/null | awk '/^-N KUBE-/ {print $2}'); do
      $ipt -t $table -F "$chain" 2>/dev/null; $ipt -t $table -X "$chain" 2>/dev/null
    done
  done
done
if command -v ipset >/dev/null; then
  for s in $(ipset list -n 2>/dev/null | grep -E '^KUBE-|^kube-router'); do ipset destroy "$s" 2>/dev/null; done
fi
ip link del mcpw0 2>/dev/null && echo "cluster: removed the bridge mcpw0" >&2
if [ "${1:-}" = "--wipe" ]; then
  rm -rf "$run"
  echo "cluster: state deleted" >&2
fi
exit 0
