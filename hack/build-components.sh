#!/usr/bin/env bash
# Build (once) the Kubernetes server components, etcd, CoreDNS and Garage into the
# version-keyed cache. Every step is skipped when its output already exists.
#   hack/build-components.sh [kubernetes|etcd|coredns|garage|traefik|gateway-api|cert-manager]...   (default: all)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

# A wrapper module requiring k8s.io/kubernetes at the tag. Upstream's go.mod
# points the staging modules (k8s.io/api, client-go, ...) at ./staging with
# v0.0.0 requirements; replace each with its published v0.x.y twin.
build_kubernetes() {
  local have=1 c
  for c in "${K8S_CMDS[@]}"; do [[ -x "$K8S_BIN/$c" ]] || have=0; done
  if (( have )); then log "kubernetes $K8S_VERSION: cached in $K8S_BIN"; return; fi

  local work="$AETHER_CACHE/src/kubernetes-$K8S_VERSION"
  local staging_version="v0.${K8S_VERSION#v1.}"
  mkdir -p "$work" "$K8S_BIN"
  local gomod
  gomod="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
  local gover
  gover="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
  {
    echo "module aether.local/kubernetes-build"
    echo
    echo "go $gover"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    sed -n 's/^\s*\(k8s\.io\/[a-z0-9./-]*\) v0\.0\.0$/\1/p' "$gomod" | sort -u |
      while read -r m; do echo "replace $m => $m $staging_version"; done
  } > "$work/go.mod"
  echo 'package main' > "$work/main.go"; echo 'func main() {}' >> "$work/main.go"

  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  local pkgs=()
  for c in "${K8S_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$work" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$K8S_BIN/" "${pkgs[@]}")
  "$K8S_BIN/kube-apiserver" --version
}

# etcd's own main module carries replace directives, so `go install` refuses it;
# a two-line wrapper around etcdmain builds the same server.
build_etcd() {
  if [[ -x "$ETCD_BIN/etcd" ]]; then log "etcd $ETCD_VERSION: cached in $ETCD_BIN"; return; fi
  local work="$AETHER_CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$work" "$ETCD_BIN"
  cat > "$work/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  printf 'module aether.local/etcd-build\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$work/go.mod"
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN/etcd" .)
  "$ETCD_BIN/etcd" --version
}

# CoreDNS's own main links every plugin it ships (cloud DNS providers and their
# SDKs included); a wrapper around coremain with just the plugins the local
# Corefile uses builds in a fraction of the time. Plugins register themselves in
# init(); the order they run in is fixed by dnsserver's directive list, not here.
COREDNS_PLUGINS=(bind cache errors forward kubernetes ready)
build_coredns() {
  if [[ -x "$COREDNS_BIN/coredns" ]]; then log "coredns $COREDNS_VERSION: cached in $COREDNS_BIN"; return; fi
  local work="$AETHER_CACHE/src/coredns-$COREDNS_VERSION" p
  mkdir -p "$work" "$COREDNS_BIN"
  {
    printf 'package main\n\nimport (\n'
    for p in "${COREDNS_PLUGINS[@]}"; do printf '\t_ "github.com/coredns/coredns/plugin/%s"\n' "$p"; done
    printf '\n\t"github.com/coredns/coredns/coremain"\n)\n\nfunc main() { coremain.Run() }\n'
  } > "$work/main.go"
  printf 'module aether.local/coredns-build\n\ngo 1.26\n\nrequire github.com/coredns/coredns %s\n' "$COREDNS_VERSION" > "$work/go.mod"
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$COREDNS_BIN/coredns" .)
  "$COREDNS_BIN/coredns" -version
}

# Traefik's go.mod carries replace directives, so `go install` refuses it: its
# module source is built as the main module it is.
build_traefik() {
  if [[ -x "$TRAEFIK_BIN/traefik" ]]; then log "traefik $TRAEFIK_VERSION: cached in $TRAEFIK_BIN"; return; fi
  local work="$AETHER_CACHE/src/traefik-$TRAEFIK_VERSION" dir
  dir="$(GOFLAGS=-mod=mod go mod download -json "github.com/traefik/traefik/v3@$TRAEFIK_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir" ]] || die "could not download traefik $TRAEFIK_VERSION"
  rm -rf "$work"; mkdir -p "$(dirname "$work")" "$TRAEFIK_BIN"
  cp -r "$dir" "$work"; chmod -R u+w "$work"
  (cd "$work" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$TRAEFIK_BIN/traefik" ./cmd/traefik)
  rm -rf "$work"
  "$TRAEFIK_BIN/traefik" version
}

# Gateway API's standard-channel CRDs, copied out of its Go module (whole, or not
# at all: an interrupted copy must not pass for the cache).
build_gateway_api() {
  if [[ -d "$GATEWAY_API_CRDS" ]]; then log "gateway-api $GATEWAY_API_VERSION: cached in $GATEWAY_API_CRDS"; return; fi
  local dir
  dir="$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir/config/crd/standard" ]] || die "could not download gateway-api $GATEWAY_API_VERSION"
  rm -rf "$GATEWAY_API_CRDS.tmp"; mkdir -p "$GATEWAY_API_CRDS.tmp"
  cp "$dir"/config/crd/standard/*.yaml "$GATEWAY_API_CRDS.tmp/"
  chmod u+w "$GATEWAY_API_CRDS.tmp"/*.yaml
  mv "$GATEWAY_API_CRDS.tmp" "$GATEWAY_API_CRDS"
}

# cert-manager's controller binary is its own module, which the module proxy does
# not serve; a wrapper around the controllers a CA ClusterIssuer needs (they
# register themselves in init()) builds from the published main module.
CERT_MANAGER_CONTROLLERS=(
  clusterissuers
  certificates-trigger certificates-issuing certificates-key-manager
  certificates-request-manager certificates-readiness certificates-revision-manager
  certificaterequests-approver certificaterequests-issuer-ca
)
build_cert_manager() {
  # The wrapper is this repository's: a changed one is built again.
  local stamp
  stamp="$(cat "$REPO_ROOT/hack/cert-manager/main.go" <(printf '%s\n' "${CERT_MANAGER_CONTROLLERS[@]}") | sha256sum | cut -c1-16)"
  if [[ -x "$CERT_MANAGER_BIN/cert-manager-controller" && "$(cat "$CERT_MANAGER_BIN/stamp" 2>/dev/null)" == "$stamp" ]]; then
    log "cert-manager $CERT_MANAGER_VERSION: cached in $CERT_MANAGER_BIN"; return
  fi
  local work="$AETHER_CACHE/src/cert-manager-$CERT_MANAGER_VERSION" c
  mkdir -p "$work" "$CERT_MANAGER_BIN/crds"
  cp "$REPO_ROOT/hack/cert-manager/main.go" "$work/main.go"
  {
    echo "// Code generated by hack/build-components.sh. DO NOT EDIT."
    echo
    echo "package main"
    echo
    printf 'var controllers = []string{\n'
    for c in "${CERT_MANAGER_CONTROLLERS[@]}"; do printf '\t"%s",\n' "$c"; done
    printf '}\n'
  } > "$work/controllers.go"
  printf 'module aether.local/cert-manager-build\n\ngo 1.26\n\nrequire github.com/cert-manager/cert-manager %s\n' "$CERT_MANAGER_VERSION" > "$work/go.mod"
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$CERT_MANAGER_BIN/cert-manager-controller" .)
  # The CRDs of that very version, for hack/cluster.sh to install.
  local dir
  dir="$(cd "$work" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)"
  cp "$dir"/deploy/crds/cert-manager.io_*.yaml "$CERT_MANAGER_BIN/crds/"
  echo "$stamp" > "$CERT_MANAGER_BIN/stamp"
}

# Garage is AGPL: it is only ever run as a separate program, never linked.
build_garage() {
  if [[ -x "$GARAGE_BIN/garage" ]]; then log "garage $GARAGE_VERSION: cached in $GARAGE_BIN"; return; fi
  local root="$AETHER_CACHE/garage-$GARAGE_VERSION"
  CARGO_TARGET_DIR="$AETHER_CACHE/src/garage-target" \
    cargo install garage --version "$GARAGE_VERSION" --locked --root "$root"
  rm -rf "$AETHER_CACHE/src/garage-target"
}

# Go's build cache for these builds is thrown away afterwards: the binaries are
# what is cached (by version), and the cache would hold ~4 GB of the disk that the
# Rust build and the cluster need next (CI's linker died of a full disk once).
export GOCACHE="$AETHER_CACHE/src/go-build"
trap 'rm -rf "$GOCACHE"' EXIT

targets=("$@")
(( ${#targets[@]} )) || targets=(kubernetes etcd coredns garage traefik gateway-api cert-manager)
for t in "${targets[@]}"; do
  case "$t" in
    kubernetes) phase "build kubernetes $K8S_VERSION" build_kubernetes ;;
    etcd) phase "build etcd $ETCD_VERSION" build_etcd ;;
    coredns) phase "build coredns $COREDNS_VERSION" build_coredns ;;
    garage) phase "build garage $GARAGE_VERSION" build_garage ;;
    traefik) phase "build traefik $TRAEFIK_VERSION" build_traefik ;;
    gateway-api) phase "gateway-api $GATEWAY_API_VERSION CRDs" build_gateway_api ;;
    cert-manager) phase "build cert-manager $CERT_MANAGER_VERSION" build_cert_manager ;;
    *) die "unknown component: $t (kubernetes|etcd|coredns|garage|traefik|gateway-api|cert-manager)" ;;
  esac
done
