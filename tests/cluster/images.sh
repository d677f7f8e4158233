#!/usr/bin/env bash
# Builds the test node's images with buildah (daemonless; storage under target/images) and
# imports them into the running node's containerd (namespace k8s.io), so pods run them with no
# registry. No base image can be pulled here: every image is FROM scratch.
#
#   tests/cluster/images.sh pause          # the sandbox image (up.sh builds it)
#   tests/cluster/images.sh mcp-warden     # the product, with the README's build commands
#   tests/cluster/images.sh python         # MCP Python Interpreter on Python from Debian
#   tests/cluster/images.sh all
#   tests/cluster/images.sh --no-import python   # only build; the archive is left in target/images
#
# Each image is also written as a docker archive, target/images/NAME_TAG.tar (for `kind load
# image-archive`). A stamp of each image's inputs skips a rebuild; the import into containerd is
# always done (containerd's store is wiped with the cluster).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${MCP_WARDEN_CLUSTER_DIR:-$root/target/cluster}"
bin="$dir/bin"
work="$root/target/images"
sock="$dir/run/node/containerd.sock"
mkdir -p "$work"
say() { echo "images: $*" >&2; }

# buildah's storage under target/, through the standard variable, so the README's command runs
# unchanged here.
export CONTAINERS_STORAGE_CONF="$work/storage.conf"
cat > "$CONTAINERS_STORAGE_CONF" <<SC
[storage]
driver = "vfs"
graphroot = "$work/storage"
runroot = "$work/storage-run"
SC
command -v buildah >/dev/null || { say "buildah is required (Debian: apt-get install buildah)"; exit 1; }

stamp_ok() { [ "$(cat "$work/.$1.stamp" 2>/dev/null)" = "$2" ] && buildah inspect --type image "$3" >/dev/null 2>&1; }

import=1
import() { # image name
  local tar="$work/$(echo "$1" | tr '/:' '__').tar" t0=$SECONDS
  rm -f "$tar"
  buildah push --quiet "$1" "docker-archive:$tar:$1" >/dev/null
  if [ $import = 1 ]; then
    local err
    if ! err=$("$bin/ctr" --address "$sock" -n k8s.io images import "$tar" 2>&1 >/dev/null); then
      say "importing $1 failed: $err"
      exit 1
    fi
    say "$1 imported into the node ($(du -h "$tar" | cut -f1) archive, $((SECONDS - t0))s)"
  else
    say "$1 written to $tar ($(du -h "$tar" | cut -f1))"
  fi
}

pause() {
  local img=localhost/pause:1 s
  s=$(cat "$here/images/pause/"* | sha256sum | cut -c1-16)
  if ! stamp_ok pause "$s" "$img"; then
    mkdir -p "$work/pause"
    musl-gcc -static -Os -o "$work/pause/pause" "$here/images/pause/pause.c" 2>/dev/null ||
      gcc -static -Os -o "$work/pause/pause" "$here/images/pause/pause.c"
    strip "$work/pause/pause"
    buildah build --quiet -f "$here/images/pause/Containerfile" -t "$img" "$work/pause" >/dev/null
    echo "$s" > "$work/.pause.stamp"
  fi
  import "$img"
}

# The product: exactly the README's two commands (Install, "Build the image").
mcp_warden() {
  local version img t0=$SECONDS
  version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/mcp-warden/Chart.yaml")
  img="ghcr.io/mcp-warden/mcp-warden:$version"
  (
    cd "$root"
    cargo build --locked --profile image --target x86_64-unknown-linux-musl --bin mcp-warden
    buildah build -t "$img" .
  ) >&2
  say "$img built in $((SECONDS - t0))s"
  import "$img"
}

python() {
  local img=localhost/mcp-python-interpreter:1.2.3 s py="$work/python"
  local wheels="mcp-python-interpreter==1.2.3 mcp==1.30.0"
  s=$( (cat "$here/images/python/Containerfile"; echo "$wheels"; sed -n '/^python()/,/^}/p' "$0") | sha256sum | cut -c1-16)
  if ! stamp_ok python "$s" "$img"; then
    command -v mmdebstrap >/dev/null || { say "mmdebstrap is required (Debian: apt-get install mmdebstrap)"; exit 1; }
    local t0=$SECONDS
    rm -rf "$py" && mkdir -p "$py/root"
    # A minimal Debian root with python3 (the host's apt sources), docs and caches left out.
    mmdebstrap --quiet --variant=essential --include=python3,ca-certificates \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      "$(. /etc/os-release && echo "$VERSION_CODENAME")" "$py/root" >&2
    local pyver
    pyver=$(chroot "$py/root" /usr/bin/python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    # The server and its dependencies as wheels for that Python, installed by the host's pip.
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --root-user-action=ignore --no-compile --target "$py/root/opt/site" \
      --python-version "$pyver" --implementation cp --only-binary=:all: \
      --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform linux_x86_64 $wheels >&2
    rm -rf "$py/root/var/cache/apt"/* "$py/root/var/lib/apt/lists"/*
    tar -C "$py/root" -cf "$py/rootfs.tar" .
    cp "$here/images/python/Containerfile" "$py/"
    buildah build --quiet -t "$img" "$py" >/dev/null
    rm -rf "$py/root" "$py/rootfs.tar"
    echo "$s" > "$work/.python.stamp"
    say "$img built in $((SECONDS - t0))s"
  fi
  import "$img"
}

if [ "${1:-}" = --no-import ]; then import=0; shift; fi
for what in "${@:-all}"; do
  case $what in
    pause) pause ;;
    mcp-warden) mcp_warden ;;
    python) python ;;
    all) pause; mcp_warden; python ;;
    *) say "unknown image $what (pause, mcp-warden, python, all)"; exit 2 ;;
  esac
done
