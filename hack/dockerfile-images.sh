#!/usr/bin/env bash
# Build Aether's images from the Dockerfile, as an admin would for a registry, but with
# no registry or engine: buildah builds its `operator` and `runtime` targets on local
# stand-ins for the three base images, then exports each result as a `docker save`
# archive for `ctr images import` (hack/deploy.sh).
#   aether.local/rust:bookworm              like rust:<version>-bookworm: a debootstrapped
#                                           bookworm (gcc, libc6-dev) plus this machine's
#                                           Rust toolchain with the musl target, laid out
#                                           in /usr/local/rustup and /usr/local/cargo
#   aether.local/distroless-cc:nonroot      like gcr.io/distroless/cc-debian12:nonroot:
#                                           glibc, libgcc_s, users, /tmp, the CA bundle
#   aether.local/distroless-static:nonroot  the same without libraries
# Prints the two archives' paths (operator, runtime); everything else goes to stderr.
# Cached: the stand-ins by their inputs; the compile by buildah's layer cache and the
# Dockerfile's cache mounts (buildah keeps those in /var/tmp/buildah-cache).
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

RUST_BASE="aether.local/rust:bookworm"
CC_BASE="aether.local/distroless-cc:nonroot"
STATIC_BASE="aether.local/distroless-static:nonroot"
OPERATOR_IMAGE="aether.local/aether-operator:dev"
RUNTIME_IMAGE="aether.local/aether-runtime:dev"

DEBIAN_SUITE=bookworm                  # the suite rust:*-bookworm and distroless-debian12 use
DEBIAN_MIRROR=http://deb.debian.org/debian
# What the build stage needs besides the Rust toolchain: a C compiler and linker
# (ring, zstd-sys, and rustc's linker driver), and the CA bundle cargo and apt use.
BUILDER_PACKAGES=(gcc libc6-dev ca-certificates)
ROOTFS_VERSION=1                       # bump when builder_rootfs changes what it keeps
MUSL_TARGET="${RUNTIME_TARGET:-x86_64-unknown-linux-musl}"  # the Dockerfile's runtime target
CACHE_LABEL=dev.aether.local.cache-key # on the rust stand-in: the inputs it was made from
WORK_DIR="$AETHER_CACHE/dockerfile-images"
HOST_CA=/etc/ssl/certs/ca-certificates.crt

TMP=""
cleanup() {
  [[ -n "$TMP" && -d "$TMP" ]] || return 0
  # A failed debootstrap can leave proc/sys mounted in its target: never descend into them.
  local m
  for m in $(findmnt -rn -o TARGET | { grep -E "^$TMP/" || true; } | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$TMP"
}
trap cleanup EXIT

# image_id IMAGE: its full ID in buildah's storage, or nothing.
image_id() { buildah images --no-trunc --format '{{.ID}}' "$1" 2>/dev/null | head -n1 || true; }

# --------------------------------------------------------------- rust stand-in --

# builder_rootfs: a tarball of a minimal bookworm with BUILDER_PACKAGES, made once per
# package list (debootstrap takes ~1.5 min). Prints its path.
builder_rootfs() {
  local key; key="$(printf '%s\n' "$ROOTFS_VERSION" "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "${BUILDER_PACKAGES[@]}" | sha256sum | cut -c1-12)"
  local out="$WORK_DIR/rootfs-$DEBIAN_SUITE-$key.tar.gz"
  if [[ ! -f "$out" ]]; then
    rm -f "$WORK_DIR/rootfs-"*.tar.gz
    local root="$TMP/rootfs" list; list="$(IFS=,; echo "${BUILDER_PACKAGES[*]}")"
    log "debootstrap $DEBIAN_SUITE with $list (once per package list)"
    debootstrap --variant=minbase --include="$list" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" \
      >"$WORK_DIR/debootstrap.log" 2>&1 \
      || { tail -n 20 "$WORK_DIR/debootstrap.log" >&2; die "debootstrap failed (log: $WORK_DIR/debootstrap.log)"; }
    # What Debian's images leave out too: downloaded packages, package lists (the
    # Dockerfile runs apt-get update), documentation and translations.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
      "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
    tar --numeric-owner -C "$root" -czf "$out.tmp" .
    mv "$out.tmp" "$out"
    rm -rf --one-file-system "$root"
  fi
  echo "$out"
}

# build_rust_base: RUST_BASE from the rootfs and the toolchain rustup names here
# (only that one, without its HTML docs), where the official image keeps them:
# RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo with rustup and its
# proxies. Skipped when the image's label says it was made from the same inputs.
build_rust_base() {
  local rootfs toolchain tc
  rootfs="$(builder_rootfs)"
  toolchain="$(cd "$REPO_ROOT" && rustup show active-toolchain | cut -d' ' -f1)"
  tc="$(rustup show home)/toolchains/$toolchain"
  [[ -x "$tc/bin/rustc" ]] || die "no toolchain at $tc (rustup show active-toolchain: $toolchain)"
  # The image's `rustup target add` must find the target installed: no download there.
  [[ -d "$tc/lib/rustlib/$MUSL_TARGET" ]] || rustup target add --toolchain "$toolchain" "$MUSL_TARGET" >&2
  local rustup_bin; rustup_bin="$(readlink -f "$(command -v rustup)")"
  local key; key="$({ echo "$rootfs"; "$tc/bin/rustc" -vV; cat "$tc/lib/rustlib/components";
    cat "$rustup_bin" "$HOST_CA" "$0"; } | sha256sum | cut -c1-12)"
  local current; current="$(buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$CACHE_LABEL\"}}" "$RUST_BASE" 2>/dev/null || true)"
  [[ "$current" == "$key" ]] && return 0

  local version; version="$("$tc/bin/rustc" --version | cut -d' ' -f2)"
  log "making $RUST_BASE: $DEBIAN_SUITE + Rust $version ($toolchain)"
  local ctr mnt
  ctr="$(buildah from -q scratch)"
  mnt="$(buildah mount "$ctr")"
  tar --numeric-owner -xzf "$rootfs" -C "$mnt"
  # This machine's bundle: it holds the CA of the proxy that cargo and apt go through.
  install -m 0644 "$HOST_CA" "$mnt/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$mnt/usr/local/rustup/toolchains/$toolchain" "$mnt/usr/local/cargo/bin"
  tar -C "$tc" --exclude=./share/doc -cf - . | tar -C "$mnt/usr/local/rustup/toolchains/$toolchain" -xf -
  local settings_version; settings_version="$(grep -m1 '^version' "$(rustup show home)/settings.toml" || echo 'version = "12"')"
  printf '%s\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$settings_version" "$toolchain" \
    > "$mnt/usr/local/rustup/settings.toml"
  install -m 0755 "$rustup_bin" "$mnt/usr/local/cargo/bin/rustup"
  local b
  for b in "$tc"/bin/*; do ln -sf rustup "$mnt/usr/local/cargo/bin/${b##*/}"; done
  buildah umount "$ctr" >/dev/null
  buildah config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env "RUST_VERSION=$version" --cmd bash --label "$CACHE_LABEL=$key" "$ctr"
  buildah commit -q --rm "$ctr" "$RUST_BASE" >/dev/null
  # The previous one and the build stage's cached layers on it (~1.2 GB each time),
  # found by the label they inherited. The cache mounts keep the compiled crates.
  if [[ -n "$current" ]]; then
    local stale; stale="$(buildah images -a -q --filter "label=$CACHE_LABEL=$current" 2>/dev/null || true)"
    # shellcheck disable=SC2086  # one ID a word
    [[ -z "$stale" ]] || buildah rmi -f $stale >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------- distroless stand-ins --

# What gcr.io/distroless/cc-debian12 holds of glibc and gcc's runtime, at its paths.
# The operator links libc, libm and libgcc_s (ldd target/release/aether-operator);
# libdl, libpthread and librt are glibc 2.34+'s empty compatibility stubs.
CC_LIBS=(/lib64/ld-linux-x86-64.so.2 /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6
  /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libdl.so.2
  /lib/x86_64-linux-gnu/libpthread.so.0 /lib/x86_64-linux-gnu/librt.so.1)

# distroless_root ROOT: the users, groups, /tmp, home and CA bundle of distroless'
# nonroot images. (write_image stores every file as root's: /home/nonroot is not
# 65532's as in the original, and nothing here writes there.)
distroless_root() {
  local root="$1"
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/root" "$root/home/nonroot"
  chmod 1777 "$root/tmp"
  chmod 0700 "$root/root"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > "$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' > "$root/etc/group"
  echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
  install -m 0644 "$HOST_CA" "$root/etc/ssl/certs/ca-certificates.crt"
}

# build_distroless_base NAME TAG [LIB...]: the archive $IMAGES_DIR/NAME-<key>.tar,
# keyed by what goes in, pulled into buildah's storage unless the image there is it
# (an archive's image ID is its config's digest).
build_distroless_base() {
  local name="$1" tag="$2"; shift 2
  local key; key="$(cat "$0" "$HACK_DIR/lib.sh" "$HOST_CA" "$@" | sha256sum | cut -c1-12)"
  local out="$IMAGES_DIR/$name-$key.tar"
  if [[ ! -f "$out" ]]; then
    rm -f "$IMAGES_DIR/$name-"*.tar
    local root="$TMP/$name" lib
    distroless_root "$root"
    for lib in "$@"; do install -D -m 0755 "$lib" "$root$lib"; done
    write_image "$tag" "$root" "$out"
  fi
  local id; id="$(archive_image_id "$out")"
  [[ "$(image_id "$tag")" == "$id" ]] || buildah pull -q "docker-archive:$out" >/dev/null
}

# ------------------------------------------------------------------- the build --

# bud TARGET IMAGE: build the Dockerfile's TARGET as IMAGE on the stand-ins. The
# output goes to a log, shown only when the build fails.
bud() {
  local target="$1" image="$2" log_file="$WORK_DIR/bud-$1.log"
  buildah bud --layers --pull=never --network host -f "$REPO_ROOT/Dockerfile" --target "$target" \
    --build-arg "RUST_IMAGE=$RUST_BASE" --build-arg "CC_IMAGE=$CC_BASE" --build-arg "STATIC_IMAGE=$STATIC_BASE" \
    -t "$image" "$REPO_ROOT" >"$log_file" 2>&1 \
    || { tail -n 40 "$log_file" >&2; die "buildah bud --target $target failed (log: $log_file)"; }
}

# export_image NAME IMAGE: $IMAGES_DIR/NAME-dockerfile-<image ID>.tar, once per image.
export_image() {
  local name="$1" image="$2"
  local out; out="$IMAGES_DIR/$name-dockerfile-$(buildah images --format '{{.ID}}' "$image" | head -n1).tar"
  if [[ ! -f "$out" ]]; then
    rm -f "$IMAGES_DIR/$name-dockerfile-"*.tar
    buildah push -q "$image" "docker-archive:$out.tmp:$image" >/dev/null
    mv "$out.tmp" "$out"
  fi
  echo "$out"
}

apt_install buildah debootstrap jq || true
[[ -f "$HOST_CA" ]] || die "$HOST_CA is missing (package ca-certificates)"
mkdir -p "$WORK_DIR" "$IMAGES_DIR"
# One run at a time (buildah's tags, the cache mounts): a second one waits.
exec 9>"$WORK_DIR/lock"
flock -n 9 || { log "waiting for another hack/dockerfile-images.sh to finish"; flock 9; }
TMP="$(mktemp -d)"

base_images() {
  build_rust_base
  build_distroless_base distroless-cc "$CC_BASE" "${CC_LIBS[@]}"
  build_distroless_base distroless-static "$STATIC_BASE"
}

phase "base images" base_images
phase "buildah bud --target operator" bud operator "$OPERATOR_IMAGE"
phase "buildah bud --target runtime" bud runtime "$RUNTIME_IMAGE"
export_image aether-operator "$OPERATOR_IMAGE"
export_image aether-runtime "$RUNTIME_IMAGE"
