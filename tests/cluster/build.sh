#!/usr/bin/env bash
# Builds the test cluster from Go modules into target/cluster/bin: the control plane (etcd,
# kube-apiserver, kube-controller-manager, kubectl), the node (kube-scheduler, kubelet, kube-proxy
# from the same k8s.io/kubernetes release; containerd, runc, the CNI plugins, crictl and kube-router
# from the tools-only modules under node/) and a current Helm 3. A stamp of the module files and
# flags makes a second run free; Go's own caches make a rebuild after a change incremental.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${MCP_WARDEN_CLUSTER_DIR:-$root/target/cluster}/bin"
k8s_version="v1.36.3"
mkdir -p "$bin"

version_flags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=36"
  version_flags+=" -X $pkg.gitTreeState=clean"
done

build() { # module dir, stamp name, linker flags, packages... (environment: BUILD_TAGS, OUT)
  local mod=$1 name=$2 ldflags=$3; shift 3
  local stamp
  stamp=$( (cat "$mod/go.mod" "$mod/go.sum" "$here/build.sh"; find "$mod" -name "*.go" | sort | xargs cat) | sha256sum | cut -c1-16)
  if [ "$(cat "$bin/.$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "build: $name is up to date"
    return
  fi
  echo "build: $name (the first build takes a while; Go caches it)"
  local t0=$SECONDS
  mkdir -p "${OUT:-$bin}"
  (cd "$mod" && go build -tags "${BUILD_TAGS:-}" -ldflags "$ldflags" -o "${OUT:-$bin}/" "$@")
  echo "$stamp" > "$bin/.$name.stamp"
  echo "build: $name took $((SECONDS - t0))s"
}

build "$here" control-plane "$version_flags" go.etcd.io/etcd/server/v3 k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
# etcd's main package is named after its module.
[ -x "$bin/server" ] && mv -f "$bin/server" "$bin/etcd"
helm_version=$(cd "$here/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v3)
build "$here/helm" helm "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" helm.sh/helm/v3/cmd/helm

# The node's runtime and network: each from a module of its own under node/, whose go.mod lists
# the commands as `tool` lines and whose go.sum holds their hashes.
node="$here/node"
CGO_ENABLED=0 BUILD_TAGS="no_btrfs no_devmapper no_zfs" build "$node/containerd" containerd "-s -w" tool
# runc needs cgo and libseccomp (Debian's libseccomp-dev) for seccomp profiles.
CGO_ENABLED=1 BUILD_TAGS="seccomp" build "$node/runc" runc "-s -w" tool
CGO_ENABLED=0 OUT="$bin/cni" build "$node/cni" cni "-s -w" tool
CGO_ENABLED=0 build "$node/crictl" crictl "-s -w" tool
CGO_ENABLED=0 build "$node/kube-router" kube-router "-s -w" tool
