# shellcheck shell=bash
# The Dockerfile pipeline `make bench` measures Aether against (hack/bench-deploy.sh):
# `buildah bud` of hack/bench/Dockerfile, `buildah push` to a plain-HTTP registry on
# 127.0.0.1:5000 (Debian's docker-registry, which containerd pulls from without extra
# configuration), `kubectl set image` on a plain Deployment (hack/bench/express-api.yaml).
# Sourced after lib.sh, never run. Everything it starts or stores lives under
# $STATE_DIR/bench (wiped by `hack/cluster.sh up` like the rest of the cluster state).

BASELINE_DIR="$STATE_DIR/bench"
REGISTRY_ADDR="127.0.0.1:5000"
REGISTRY_PID="$BASELINE_DIR/registry.pid"
BASELINE_REPO="$REGISTRY_ADDR/aether-bench/express-api"
BASE_IMAGE="localhost/aether-bench/node"   # :<major>, in buildah's storage only

# Only the bench needs these, so `hack/deps.sh` (make test, CI) does not install them.
baseline_packages() {
  apt_install buildah docker-registry || true
}

# buildah with its own storage: a bench run starts from an empty layer cache and
# leaves nothing in the machine's /var/lib/containers.
bah() {
  buildah --root "$BASELINE_DIR/buildah" --runroot "$RUN_DIR/bench-buildah" \
    --storage-driver overlay "$@"
}

# ----------------------------------------------------------------- registry --

registry_pid() { # the PID in our PID file, if that process still runs docker-registry
  local pid
  [[ -f "$REGISTRY_PID" ]] || return 1
  pid="$(cat "$REGISTRY_PID")"
  [[ -n "$pid" && "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$(readlink -f "$(command -v docker-registry)")" ]] || return 1
  echo "$pid"
}

registry_stop() {
  local pid
  if pid="$(registry_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -d "/proc/$pid" ]] || break; sleep 0.1; done
    if [[ -d "/proc/$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$REGISTRY_PID"
}

# A fresh, empty registry: its data is deleted first so every bench pushes the same.
registry_start() {
  registry_stop   # one an interrupted bench left behind (ours by its PID file)
  if ss -Hltn "sport = :${REGISTRY_ADDR##*:}" | grep -q .; then
    die "$REGISTRY_ADDR is taken by another program; the Dockerfile baseline needs it"
  fi
  rm -rf "$BASELINE_DIR/registry"
  mkdir -p "$BASELINE_DIR/registry/data"
  cat > "$BASELINE_DIR/registry/config.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $BASELINE_DIR/registry/data}
  delete: {enabled: true}
http:
  addr: $REGISTRY_ADDR
EOF
  setsid docker-registry serve "$BASELINE_DIR/registry/config.yml" \
    >>"$BASELINE_DIR/registry/registry.log" 2>&1 </dev/null &
  echo "$!" > "$REGISTRY_PID"
  wait_for "docker-registry on $REGISTRY_ADDR" 30 curl -fsS "http://$REGISTRY_ADDR/v2/"
}

# -------------------------------------------------------------- base image --

# baseline_storage_reset: an empty buildah storage (what an earlier bench left, mounts
# included, is removed).
baseline_storage_reset() {
  if [[ -d "$BASELINE_DIR/buildah" ]]; then
    bah rm --all >/dev/null 2>&1 || true
    bah rmi --all --force >/dev/null 2>&1 || true
  fi
  local m
  for m in $(findmnt -rn -o TARGET | { grep -E "^($BASELINE_DIR/buildah|$RUN_DIR/bench-buildah)(/|$)" || true; } | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$BASELINE_DIR/buildah" "$RUN_DIR/bench-buildah"
}

# baseline_base_image MAJOR: the image Aether's pods run for that Node major
# (aether.local/node:<major>, hack/images.sh; its cached archive is reused) plus
# this machine's npm, as $BASE_IMAGE:<major> in buildah's storage. Like
# node:<major>-slim, which has npm; the app's pods run the same node binary.
baseline_base_image() {
  local major="$1" version="" v archive
  for v in "${NODE_VERSIONS[@]}"; do [[ "${v%%.*}" == "$major" ]] && version="$v"; done
  [[ -n "$version" ]] || die "no local Node image for major $major (NODE_VERSIONS in hack/lib.sh)"
  archive="$("$HACK_DIR/images.sh" | grep "/node-$version-")" || die "hack/images.sh built no node $version image"
  bah pull -q "docker-archive:$archive" >/dev/null
  local ctr mnt npm_dir
  npm_dir="$(dirname "$(readlink -f "$(command -v npm)")")/.."
  ctr="$(bah from -q "aether.local/node:$major")"
  mnt="$(bah mount "$ctr")"
  mkdir -p "$mnt/usr/local/lib/node_modules" "$mnt/usr/local/bin"
  cp -a "$(readlink -f "$npm_dir")" "$mnt/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$mnt/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$mnt/usr/local/bin/npx"
  bah umount "$ctr" >/dev/null
  bah commit -q "$ctr" "$BASE_IMAGE:$major" >/dev/null
  bah rm "$ctr" >/dev/null
}

# --------------------------------------------------------------- pipeline --

# baseline_build DIR IMAGE MAJOR [BUILDAH_BUD_FLAGS...]: the Dockerfile build, with
# buildah's layer cache (--layers) unless the flags say --no-cache.
baseline_build() {
  local dir="$1" image="$2" major="$3"; shift 3
  bah bud -q --layers --network host --ignorefile "$HACK_DIR/bench/dockerignore" \
    -f "$HACK_DIR/bench/Dockerfile" --build-arg "BASE=$BASE_IMAGE:$major" \
    --build-arg "NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt" \
    --build-arg NPM_CONFIG_UPDATE_NOTIFIER=false -t "$image" "$@" "$dir"
}

# baseline_deploy DIR NS TAG MAJOR [BUILDAH_BUD_FLAGS...]: build DIR with the
# Dockerfile, push it as $BASELINE_REPO:TAG, point the Deployment in NS at it. Prints
# each step's milliseconds as JSON; the caller waits for the Service's new answer.
baseline_deploy() {
  local dir="$1" ns="$2" tag="$3" major="$4"; shift 4
  local image="$BASELINE_REPO:$tag" t0 t1 t2 t3
  t0="${EPOCHREALTIME/./}"
  baseline_build "$dir" "$image" "$major" "$@" >&2
  t1="${EPOCHREALTIME/./}"
  bah push -q --tls-verify=false "$image" >&2
  t2="${EPOCHREALTIME/./}"
  kubectl -n "$ns" set image deployment/express-api "app=$image" >&2
  t3="${EPOCHREALTIME/./}"
  jq -cn --arg image "$image" --argjson build $(( (t1 - t0) / 1000 )) \
    --argjson push $(( (t2 - t1) / 1000 )) --argjson setImage $(( (t3 - t2) / 1000 )) \
    '{image: $image, buildMs: $build, pushMs: $push, setImageMs: $setImage}'
}

# baseline_drop TAG [buildah]: forget an image no pod runs any more: in the node's
# containerd, and with "buildah" in buildah's storage too (not for images whose
# layers the next warm build reuses). Kubelet image GC is off on the local cluster,
# so without this every no-cache build would stay on disk until the bench ends.
baseline_drop() {
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images rm "$BASELINE_REPO:$1" >/dev/null 2>&1 || true
  if [[ "${2:-}" == buildah ]]; then
    bah rmi --force "$BASELINE_REPO:$1" >/dev/null 2>&1 || true
    bah rmi --prune >/dev/null 2>&1 || true
  fi
}

# baseline_create DIR NS TAG MAJOR: the first build and push, and the Deployment and
# Service running it (untimed setup).
baseline_create() {
  local dir="$1" ns="$2" tag="$3" major="$4"
  local image="$BASELINE_REPO:$tag"
  baseline_build "$dir" "$image" "$major" >/dev/null
  bah push -q --tls-verify=false "$image"
  sed "s|__IMAGE__|$image|" "$HACK_DIR/bench/express-api.yaml" | kubectl -n "$ns" apply -f - >/dev/null
  kubectl -n "$ns" rollout status deployment/express-api --timeout=300s >/dev/null
}

# baseline_cleanup: stop the registry and drop what the bench stored (registry data,
# buildah storage, the pulled images in the cluster's containerd).
baseline_cleanup() {
  registry_stop
  rm -rf "$BASELINE_DIR/registry/data"
  baseline_storage_reset
  local ref
  for ref in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q 2>/dev/null | grep "^${BASELINE_REPO}[:@]" || true); do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images rm "$ref" >/dev/null 2>&1 || true
  done
}
