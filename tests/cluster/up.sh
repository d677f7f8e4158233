#!/usr/bin/env bash
# Starts the test cluster: a control plane (the real etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) and one real node (containerd, runc, the CNI plugins, kubelet, kube-proxy and
# kube-router enforcing NetworkPolicy), all built from the Go modules of this folder
# (build.sh), with generated certificates. Pods run for real on a bridge of the cluster's own
# (mcpw0, 10.88.0.0/16; the node and the API server use 10.88.0.1); Services work through
# kube-proxy from the host and from pods. Needs root (it is the node).
#
#   eval "$(tests/cluster/up.sh)"     # builds on first use, starts, exports KUBECONFIG
#   tests/cluster/down.sh             # stops the processes by PID (add --wipe to delete state)
#
# Only the export lines go to stdout: KUBECONFIG, MCP_WARDEN_AUDIT_LOG (the API server's audit
# log, JSON lines), MCP_WARDEN_NODE_IP and MCP_WARDEN_CONTAINERD (the socket `images.sh` imports
# images through). Progress goes to stderr. Everything lives under target/cluster/ (binaries in
# bin/, the running cluster in run/, the node's state in run/node/); a second `up.sh` while the
# cluster runs only starts what is missing and prints the exports again.
#
# Settings (environment): MCP_WARDEN_CLUSTER_DIR (default target/cluster), APISERVER_PORT
# (default 16443), ETCD_PORT (default 12379; the peer port is ETCD_PORT+1), KCM_PORT (default
# 10257), KUBELET_SYNC_SECONDS (the kubelet's syncFrequency, default 1; a kubelet's own default
# is 60), CLUSTER_EXTRA_APISERVER_FLAGS (appended to kube-apiserver's flags).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${MCP_WARDEN_CLUSTER_DIR:-$root/target/cluster}"
bin="$dir/bin"
run="$dir/run"
api_port="${APISERVER_PORT:-16443}"
etcd_port="${ETCD_PORT:-12379}"
kcm_port="${KCM_PORT:-10257}"
sync_seconds="${KUBELET_SYNC_SECONDS:-1}"
node_name=mcpw-node
node_ip=10.88.0.1
bridge=mcpw0
pod_cidr=10.88.0.0/16
service_cidr=10.0.0.0/24
k8s_version="v1.36.3"

say() { echo "cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

exports() {
  echo "export KUBECONFIG=$run/admin.kubeconfig"
  echo "export MCP_WARDEN_AUDIT_LOG=$run/audit.log"
  echo "export MCP_WARDEN_NODE_IP=$node_ip"
  echo "export MCP_WARDEN_CONTAINERD=$run/node/containerd.sock"
}

components="etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy kube-router"

alive() { [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }

all_alive() { for c in $components; do alive "$c" || return 1; done; }
if all_alive; then
  say "already running"
  exports
  exit 0
fi
[ "$(id -u)" = 0 ] || die "the test node needs root (it creates a bridge, cgroups and mounts)"

# 1. Binaries: rebuilt only when the module, the flags or a binary changed.
"$here/build.sh" >&2

# 2. Certificates and keys (kept between runs; made once per state directory).
mkdir -p "$run"
pki="$run/pki"
if [ ! -f "$pki/done-node" ]; then
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
      "subjectAltName=IP:127.0.0.1,IP:$node_ip,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth"
    leaf admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
    leaf kcm "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
    leaf scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
    leaf proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
    # kube-router enforces NetworkPolicy for the whole cluster: it reads pods, namespaces,
    # policies and nodes everywhere (a test component, so the admins' group).
    leaf router "/O=system:masters/CN=kube-router" "extendedKeyUsage=clientAuth"
    leaf node "/O=system:nodes/CN=system:node:$node_name" "extendedKeyUsage=clientAuth"
    leaf kubelet "/CN=$node_name" "subjectAltName=IP:$node_ip,DNS:$node_name
extendedKeyUsage=serverAuth"
    leaf apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    touch done-node
  )
fi

kubeconfig() { # file, user cert name
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: mcp-warden-test
  cluster:
    server: https://$node_ip:$api_port
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
KC
}
for user in admin kcm scheduler proxy router node; do kubeconfig "$run/$user.kubeconfig" "$user"; done

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

# 3. The node's network, first: the API server and the kubelet listen on the bridge's address,
# which pods reach directly. Bridged traffic goes through netfilter (br_netfilter), so
# kube-proxy's Service rules and kube-router's NetworkPolicy rules see pod-to-pod packets.
if ! ip link show "$bridge" >/dev/null 2>&1; then
  ip link add "$bridge" type bridge
  ip addr add "$node_ip/16" dev "$bridge"
fi
ip link set "$bridge" up
# The host reaches Services from the bridge's address, so the pods behind them can answer it
# (the API server calling a webhook Service, a test's client on a ClusterIP).
ip route replace "$service_cidr" dev "$bridge" src "$node_ip"
modprobe br_netfilter 2>/dev/null || true
sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 net.ipv4.ip_forward=1

# 4. etcd (fsync off: the data is thrown away, and tests run faster).
start etcd "$bin/etcd" --name default --data-dir "$run/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
  --initial-cluster "default=http://127.0.0.1:$((etcd_port + 1))" \
  --listen-metrics-urls "" --unsafe-no-fsync --log-level warn
wait_ok etcd 60 curl -sf "http://127.0.0.1:$etcd_port/health"

# The API server's audit log records every call but the control plane's and the node's own, so
# tests/it/rbac.rs can compare the calls the controller made with what its RBAC grants.
cat > "$run/audit-policy.yaml" <<AP
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  userGroups: ["system:serviceaccounts:kube-system", "system:nodes"]
- level: None
  users: ["system:kube-controller-manager", "system:kube-scheduler", "system:kube-proxy", "kube-router", "system:apiserver"]
- level: Metadata
AP

# 5. kube-apiserver on the bridge's address (the `kubernetes` Service's endpoint, so pods reach
# it at 10.0.0.1:443 through kube-proxy): RBAC and the Node authorizer, the admission plugins the
# operator depends on, ServiceAccount tokens signed by sa.key, and the kubelet's API for logs,
# exec and port-forward. Webhooks called through a Service reach its ClusterIP via kube-proxy.
# shellcheck disable=SC2086
start kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address "$node_ip" --secure-port "$api_port" --advertise-address "$node_ip" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range "$service_cidr" \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,ResourceQuota,DefaultTolerationSeconds,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,PodSecurity,NodeRestriction \
  --allow-privileged=true \
  --kubelet-client-certificate "$pki/apiserver-kubelet.crt" --kubelet-client-key "$pki/apiserver-kubelet.key" \
  --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
  --cert-dir "$run/apiserver-certs" \
  --profiling=false \
  --audit-policy-file "$run/audit-policy.yaml" --audit-log-path "$run/audit.log" \
  --audit-log-format json --audit-log-maxsize 0 \
  ${CLUSTER_EXTRA_APISERVER_FLAGS:-}
api() { curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "https://$node_ip:$api_port$1"; }
wait_ok kube-apiserver 120 api /readyz

# 6. kube-controller-manager: ReplicaSets, Deployments, EndpointSlices, garbage collection,
# namespace deletion, ServiceAccounts and their tokens, the root CA ConfigMap.
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig "$run/kcm.kubeconfig" \
  --authentication-kubeconfig "$run/kcm.kubeconfig" --authorization-kubeconfig "$run/kcm.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$kcm_port" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --use-service-account-credentials \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --leader-elect=false \
  --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ephemeral-volume,-pvc-protection,-pv-protection,-ttl'
wait_ok kube-controller-manager 60 curl -skf "https://127.0.0.1:$kcm_port/healthz"
# The default ServiceAccount appears when the controller-manager works.
wait_ok kube-controller-manager 60 api /api/v1/namespaces/default/serviceaccounts/default

# 7. kube-scheduler.
start kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig "$run/scheduler.kubeconfig" \
  --authentication-kubeconfig "$run/scheduler.kubeconfig" --authorization-kubeconfig "$run/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false
wait_ok kube-scheduler 60 curl -skf "https://127.0.0.1:10259/healthz"

# 8. The node. Its state lives in run/node/; the settings below are the ones these machines
# need (cgroup v1, no CAP_SYS_RESOURCE, no registry): see DESIGN §14.
node="$run/node"
mkdir -p "$node/cni/net.d" "$node/cni/ipam" "$node/kubelet" "$node/containerd"
# containerd: CRI with runc on cgroupfs; oom_score_adj below 0 cannot be set here
# (restrict_oom_score_adj); the sandbox ("pause") image is built locally by images.sh.
cat > "$node/containerd.toml" <<CT
version = 3
root = "$node/containerd/root"
state = "$node/containerd/state"
[grpc]
  address = "$node/containerd.sock"
[ttrpc]
  address = "$node/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$bin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$bin/cni"]
    conf_dir = "$node/cni/net.d"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "localhost/pause:1"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
CT
# The pod network: one bridge, addresses from 10.88.1.1 on, and a route for the Service range
# only. A route for the pod range through the gateway would send pod-to-pod traffic through the
# host and around NetworkPolicy; pods on the bridge reach each other directly.
cat > "$node/cni/net.d/10-mcpw.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "mcpw",
  "plugins": [
    {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$node/cni/ipam",
              "ranges": [[{"subnet": "$pod_cidr", "rangeStart": "10.88.1.1", "rangeEnd": "10.88.255.254", "gateway": "$node_ip"}]],
              "routes": [{"dst": "$service_cidr"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
PATH="$bin:$PATH" start containerd "$bin/containerd" --config "$node/containerd.toml"
wait_ok containerd 60 "$bin/ctr" --address "$node/containerd.sock" version

# The pause image, before the kubelet makes its first sandbox.
"$here/images.sh" pause >&2

echo "nameserver 127.0.0.1" > "$node/resolv.conf"
cat > "$node/kubelet.yaml" <<KL
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$node/containerd.sock
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
syncFrequency: ${sync_seconds}s
resolvConf: $node/resolv.conf
failSwapOn: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
KL
start kubelet "$bin/kubelet" --config "$node/kubelet.yaml" --kubeconfig "$run/node.kubeconfig" \
  --root-dir "$node/kubelet" --hostname-override "$node_name" --node-ip "$node_ip" \
  --cert-dir "$node/kubelet/pki"
wait_ok kubelet 60 curl -sf "http://127.0.0.1:10248/healthz"

# 9. kube-proxy (nftables) makes ClusterIPs work from the host and from pods; traffic from
# outside the pod range (the host, the API server calling a webhook) is masqueraded.
start kube-proxy "$bin/kube-proxy" --kubeconfig "$run/proxy.kubeconfig" --proxy-mode nftables \
  --hostname-override "$node_name" --cluster-cidr "$pod_cidr" --conntrack-max-per-core 0 \
  --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256
wait_ok kube-proxy 60 curl -sf "http://127.0.0.1:10256/livez"

# 10. NetworkPolicy: kube-router's firewall alone (no routing, no service proxy, no CNI).
start kube-router "$bin/kube-router" --kubeconfig "$run/router.kubeconfig" \
  --hostname-override "$node_name" --run-firewall=true --run-router=false \
  --run-service-proxy=false --enable-cni=false --health-port 0 --metrics-port 0
sleep 1
alive kube-router || { tail -n 30 "$run/kube-router.log" >&2; die "kube-router exited"; }

node_ready() { api "/api/v1/nodes/$node_name" | tr -d ' \n' | grep -q '"type":"Ready","status":"True"'; }
wait_ok kubelet 90 node_ready

say "ready: Kubernetes $k8s_version at https://$node_ip:$api_port, node $node_name Ready"
exports
