#!/usr/bin/env bash
# Build the images the local cluster needs without any registry, as tars in
# `docker save` layout under the cache, for `ctr images import`.
#   hack/images.sh          base images, imported by `hack/cluster.sh up`:
#     aether.local/pause:3.10          pause.c from the Kubernetes module, static
#     aether.local/node:<major>        the machine's own node binary and its libraries
#   hack/images.sh aether   Aether's own, from target/debug (hack/deploy.sh):
#     aether.local/aether-operator:dev the operator binary, stripped, and its libraries
#     aether.local/aether-runtime:dev  the in-pod runtime, likewise
# (Dockerfiles build the same images for real registries.)
# Prints the tar paths. Cached by content: rebuilt when an input changes.
source "$(dirname "$0")/lib.sh"

PAUSE_IMAGE="aether.local/pause:3.10"
NODE_BIN="$(readlink -f "$(command -v node)")"
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
NODE_IMAGE="aether.local/node:$NODE_MAJOR"
IMAGES_DIR="$AETHER_CACHE/images"

# write_image TAG ROOTFS OUT [CMD_JSON [ENTRYPOINT_JSON]]: a one-layer image archive
# from a folder.
write_image() {
  local tag="$1" rootfs="$2" out="$3" cmd="${4:-null}" entrypoint="${5:-null}"
  local tmp; tmp="$(mktemp -d)"
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

build_pause() {
  local src="$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
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

build_node() {
  local key; key="$(sha256sum "$NODE_BIN" | cut -c1-12)"
  local out="$IMAGES_DIR/node-$NODE_MAJOR-$key.tar"
  if [[ ! -f "$out" ]]; then
    local root; root="$(mktemp -d)"
    mkdir -p "$root/usr/bin" "$root/tmp" "$root/etc" "$root/app"
    chmod 1777 "$root/tmp"
    cp "$NODE_BIN" "$root/usr/bin/node"
    add_libs "$root" "$NODE_BIN"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnode:x:1000:1000:node:/app:/sbin/nologin\naether:x:10001:10001:aether:/app:/sbin/nologin\n' > "$root/etc/passwd"
    printf 'root:x:0:\nnode:x:1000:\naether:x:10001:\n' > "$root/etc/group"
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    write_image "$NODE_IMAGE" "$root" "$out" '["node"]'
    rm -rf "$root"
  fi
  echo "$out"
}

# add_libs ROOT BINARY: the dynamic loader and every library BINARY links against,
# at the same paths.
add_libs() {
  local root="$1" bin="$2" lib
  ldd "$bin" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
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
  base) build_pause; build_node ;;
  aether) build_binary_image aether-operator 65532; build_binary_image aether-runtime 10001 ;;
  *) die "usage: $0 [base|aether]" ;;
esac
