#!/usr/bin/env bash
# Stops the test control plane started by up.sh, by PID. `--wipe` also deletes its state
# (etcd data, certificates, logs), so the next up.sh starts an empty cluster.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
run="${MCP_WARDEN_CLUSTER_DIR:-$root/target/cluster}/run"

for name in kube-controller-manager kube-apiserver svcproxy etcd; do
  f="$run/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "cluster: stopped $name ($pid)" >&2
  fi
  rm -f "$f"
done
if [ "${1:-}" = "--wipe" ]; then
  rm -rf "$run"
  echo "cluster: state deleted" >&2
fi
