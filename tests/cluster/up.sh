#!/usr/bin/env bash
# Starts the test control plane: the real etcd, kube-apiserver and kube-controller-manager, built
# from this folder's Go module, on loopback with generated certificates. No scheduler and no
# kubelet: pods stay Pending and tests read their stored spec.
#
#   eval "$(tests/cluster/up.sh)"     # builds on first use, starts, exports KUBECONFIG
#   tests/cluster/down.sh             # stops the processes by PID (add --wipe to delete state)
#
# Only the export lines go to stdout: KUBECONFIG, MCP_WARDEN_SERVICE_ROUTES (the file where
# a test maps a Service's CLUSTER_IP:PORT to the loopback address serving it; see svcproxy/), and
# MCP_WARDEN_AUDIT_LOG (the API server's audit log, JSON lines).
# Progress goes to stderr. Everything lives under target/cluster/ (binaries in bin/, the running
# cluster in run/); a second `up.sh` while the cluster runs only prints the exports again.
#
# Settings (environment): MCP_WARDEN_CLUSTER_DIR (default target/cluster), APISERVER_PORT
# (default 16443), SVCPROXY_PORT (default 16444), ETCD_PORT (default 12379; the peer port is
# ETCD_PORT+1), KCM_PORT (default 10257), CLUSTER_EXTRA_APISERVER_FLAGS (appended to
# kube-apiserver's flags).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${MCP_WARDEN_CLUSTER_DIR:-$root/target/cluster}"
bin="$dir/bin"
run="$dir/run"
api_port="${APISERVER_PORT:-16443}"
etcd_port="${ETCD_PORT:-12379}"
kcm_port="${KCM_PORT:-10257}"
proxy_port="${SVCPROXY_PORT:-16444}"
k8s_version="v1.36.3"

say() { echo "cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

exports() {
  echo "export KUBECONFIG=$run/admin.kubeconfig"
  echo "export MCP_WARDEN_SERVICE_ROUTES=$run/service-routes"
  echo "export MCP_WARDEN_AUDIT_LOG=$run/audit.log"
}

alive() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

if alive kube-apiserver && alive etcd && alive kube-controller-manager && alive svcproxy; then
  say "already running"
  exports
  exit 0
fi

# 1. Binaries: rebuilt only when the module, the flags or a binary changed.
"$here/build.sh" >&2

# 2. Certificates and keys (kept between runs; made once per state directory).
mkdir -p "$run"
pki="$run/pki"
if [ ! -f "$pki/done" ]; then
  say "generating certificates"
  rm -rf "$pki" && mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=mcp-warden-test-ca" 2>/dev/null
    leaf() { # name, subject, extensions
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" \
        -days 3650 -extfile "$1.ext" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    leaf apiserver "/CN=kube-apiserver" \
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
    leaf admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
    leaf kcm "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
    leaf svcproxy "/CN=svcproxy" "subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth"
    leaf egress "/CN=kube-apiserver-egress" "extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    touch done
  )
fi

kubeconfig() { # file, user cert name
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mcp-warden-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: mcp-warden-test
  context: {cluster: mcp-warden-test, user: $2}
current-context: mcp-warden-test
EOF
}
kubeconfig "$run/admin.kubeconfig" admin
kubeconfig "$run/kcm.kubeconfig" kcm

start() { # name, command...
  local name=$1; shift
  if alive "$name"; then return; fi
  say "starting $name (log: $run/$name.log)"
  setsid "$@" >"$run/$name.log" 2>&1 < /dev/null &
  echo $! > "$run/$name.pid"
}

wait_ok() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      say "$what did not become ready in ${secs}s; last lines of its log:"
      tail -n 30 "$run/$what.log" >&2 || true
      "$here/down.sh" >&2 || true
      die "$what is not ready"
    fi
    alive "$what" || { tail -n 30 "$run/$what.log" >&2; "$here/down.sh" >&2 || true; die "$what exited"; }
    sleep 0.5
  done
}

# 3. etcd (fsync off: the data is thrown away, and tests run faster).
start etcd "$bin/etcd" --name default --data-dir "$run/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "default=http://127.0.0.1:$((etcd_port + 1))" \
  --listen-metrics-urls "" --unsafe-no-fsync --log-level warn
wait_ok etcd 60 curl -sf "http://127.0.0.1:$etcd_port/health"

# 4. The API server's "cluster" egress (webhooks called through a Service) goes to svcproxy,
# which tunnels to loopback backends that tests register in the routes file.
touch "$run/service-routes"
start svcproxy "$bin/svcproxy" --listen "127.0.0.1:$proxy_port" --routes "$run/service-routes" \
  --cert "$pki/svcproxy.crt" --key "$pki/svcproxy.key" --client-ca "$pki/ca.crt"
wait_ok svcproxy 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$proxy_port"
cat > "$run/egress.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      tcp:
        url: https://127.0.0.1:$proxy_port
        tlsConfig:
          caBundle: $pki/ca.crt
          clientCert: $pki/egress.crt
          clientKey: $pki/egress.key
EOF

# The API server's audit log records every call but the control plane's own, so tests/rbac.rs
# can compare the calls the controller made with what its RBAC grants.
cat > "$run/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  userGroups: ["system:serviceaccounts:kube-system", "system:nodes"]
- level: None
  users: ["system:kube-controller-manager", "system:apiserver"]
- level: Metadata
EOF

# 5. kube-apiserver: RBAC, the admission plugins the operator depends on, and ServiceAccount
# tokens signed by sa.key. The Service IP range is never routed (no kube-proxy).
# shellcheck disable=SC2086
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --secure-port "$api_port" --advertise-address 127.0.0.1 \
  --endpoint-reconciler-type none \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.0.0.0/24 \
  --authorization-mode RBAC \
  --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,ResourceQuota,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,PodSecurity \
  --allow-privileged=true \
  --cert-dir "$run/apiserver-certs" \
  --egress-selector-config-file "$run/egress.yaml" \
  --profiling=false \
  --audit-policy-file "$run/audit-policy.yaml" --audit-log-path "$run/audit.log" \
  --audit-log-format json --audit-log-maxsize 0 \
  ${CLUSTER_EXTRA_APISERVER_FLAGS:-}
api() { curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "https://127.0.0.1:$api_port$1"; }
wait_ok kube-apiserver 120 api /readyz

# 6. kube-controller-manager: ReplicaSets, garbage collection, namespace deletion,
# ServiceAccounts and their tokens, the root CA ConfigMap.
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$run/kcm.kubeconfig" \
  --authentication-kubeconfig "$run/kcm.kubeconfig" --authorization-kubeconfig "$run/kcm.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --leader-elect=false \
  --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ephemeral-volume,-pvc-protection,-pv-protection,-ttl'
wait_ok kube-controller-manager 60 curl -skf "https://127.0.0.1:$kcm_port/healthz"
# The default ServiceAccount appears when the controller-manager works.
wait_ok kube-controller-manager 60 api /api/v1/namespaces/default/serviceaccounts/default

say "ready: Kubernetes $k8s_version at https://127.0.0.1:$api_port"
exports
