#!/usr/bin/env bash
# Change → served: Aether beside a Dockerfile pipeline (hack/bench-baseline.sh) on the
# same cluster (KUBECONFIG; default the local one, with Aether from `make deploy`), the
# same app (a copy of examples/express-api) and the same clock. A sample runs from the
# command's start until the app's Service, polled on its ClusterIP from this host with
# curl, answers the new body.
#   warm   code-only change, warm caches: `aether push` | `buildah bud --layers` +
#          `buildah push` + `kubectl set image`
#   fresh  the same change on a fresh CI runner (what that means for each: bench_fresh)
#   deps   one dependency added (ms, used by the code), caches otherwise warm
#   dev    save → served with `aether dev`; no Dockerfile equivalent. Runs only when
#          the CLI has the command (see the hook below), else "—" / null.
# RUNS (3) samples per case and pipeline, the two alternating inside a run so both
# see the same machine state; RUNS_DEV (20) saves for dev. Prints a table of medians
# and ratios and writes every sample, the medians and the versions to BENCH_JSON
# (target/bench/deploy.json). Namespaces: aether-bench and aether-bench-docker,
# deleted at the end, with everything the baseline started or stored.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=bench-baseline.sh
source "$HACK_DIR/bench-baseline.sh"
[[ -n "${KUBECONFIG:-}" ]] || eval "$("$HACK_DIR/cluster.sh" env)"

RUNS="${RUNS:-3}"
RUNS_DEV="${RUNS_DEV:-20}"
BENCH_JSON="${BENCH_JSON:-$REPO_ROOT/target/bench/deploy.json}"
# Between two requests. Each curl costs ~12 ms of CPU, the same for both pipelines.
POLL_SECONDS="${POLL_SECONDS:-0.03}"
SERVE_TIMEOUT="${SERVE_TIMEOUT:-300}"   # seconds a deploy may take to serve
DEV_TIMEOUT="${DEV_TIMEOUT:-30}"        # seconds a save may take to serve
AETHER="${AETHER_BIN:-$REPO_ROOT/target/debug/aether}"
APP="express-api"                       # the example's package name: app, Deployments, Services
NS="aether-bench"
DOCKER_NS="aether-bench-docker"

work="$(mktemp -d)"
samples="$work/samples.jsonl"
dev_pid=""

cleanup() {
  local rc=$?
  set +e
  [[ -n "$dev_pid" ]] && stop_dev
  log "cleaning up: namespaces, registry, buildah storage, bench images"
  kubectl delete namespace "$NS" "$DOCKER_NS" --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1
  baseline_cleanup
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ helpers --

now_us() { echo "${EPOCHREALTIME/./}"; }

# served URL WANT T0_US TIMEOUT_S [PID]: poll URL until it answers WANT; set
# served_ms to the milliseconds since T0_US. Fails at the timeout, or as soon as PID
# (the pipeline, or the dev session) exits unsuccessfully; a PID that exits with 0
# is waited for (pid_done=1) and the polling goes on: `kubectl set image` returns at
# once. Not in a subshell: it must be able to wait for PID.
served() {
  local url="$1" want="$2" t0="$3" timeout="$4" pid="${5:-}" body t1 rc
  local deadline=$(( t0 + timeout * 1000000 ))
  pid_done=0
  while :; do
    body="$(curl -s --max-time 1 "$url" || true)"
    t1="$(now_us)"
    if [[ "$body" == "$want" ]]; then served_ms=$(( (t1 - t0) / 1000 )); return 0; fi
    if [[ -n "$pid" ]] && ! alive "$pid"; then
      rc=0; wait "$pid" || rc=$?
      (( rc == 0 )) || { log "exited with $rc before serving '$want'"; return 1; }
      pid=""; pid_done=1
    fi
    if (( t1 >= deadline )); then
      log "'$want' not served after ${timeout}s (last answer: '${body:0:80}'); pods and node taints:"
      kubectl get pods -A -o wide 2>&1 | grep -E "^NAMESPACE|^($NS|$DOCKER_NS) " >&2 || true
      kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}: {.spec.taints}{"\n"}{end}' >&2 || true
      return 1
    fi
    sleep "$POLL_SECONDS"
  done
}

# timed URL WANT CMD...: run CMD in the background from now; set served_ms to the
# milliseconds until URL answers WANT. CMD's stdout is kept in $work/cmd.out; it
# must succeed.
timed() {
  local url="$1" want="$2"; shift 2
  local t0 pid rc=0
  t0="$(now_us)"
  "$@" > "$work/cmd.out" 2> "$work/cmd.err" &
  pid=$!
  served "$url" "$want" "$t0" "$SERVE_TIMEOUT" "$pid" || { tail -n 30 "$work/cmd.err" >&2; return 1; }
  (( pid_done )) || wait "$pid" || rc=$?
  (( rc == 0 )) || { tail -n 30 "$work/cmd.err" >&2; log "$* failed (exit $rc) after serving"; return 1; }
}

# settle NS: rollout finished and the replaced pod gone, so every sample starts alike.
settle() {
  local ns="$1" deadline=$((SECONDS + 120))
  kubectl -n "$ns" rollout status "deployment/$APP" --timeout=300s >/dev/null
  until [[ "$(kubectl -n "$ns" get pods -o name | wc -l)" -eq 1 ]]; do
    (( SECONDS < deadline )) || die "$ns: old pods still there after 120s"
    sleep 0.5
  done
}

service_url() { echo "http://$(kubectl -n "$1" get service "$APP" -o jsonpath='{.spec.clusterIP}')/"; }

# write_greeting TEXT [ms]: the code change. The app then answers TEXT (with ms:
# "TEXT 1m", through the added dependency).
write_greeting() {
  if [[ "${2:-}" == ms ]]; then
    printf '%s\n' "const ms = require('ms');" "exports.greeting = () => '$1 ' + ms(60000) + '\\n';"
  else
    printf '%s\n' "exports.greeting = () => '$1\\n';"
  fi > "$work/app/lib/greeting.js"
}

# record CASE RUN PIPELINE MS [DETAIL_FILE]
record() {
  local detail=null
  [[ -n "${5:-}" ]] && detail="$(jq -c . "$5" 2>/dev/null || echo null)"
  jq -cn --arg case "$1" --argjson run "$2" --arg pipeline "$3" --argjson ms "$4" \
    --argjson detail "$detail" '{case: $case, run: $run, pipeline: $pipeline, ms: $ms, detail: $detail}' >> "$samples"
  log "$1 #$2 $3: $4 ms"
}

# ---------------------------------------------------------------- pipelines --

aether_push() { # CACHE_DIR: `aether push -o json` of the app copy
  cd "$work/app" && AETHER_CACHE_DIR="$1" "$AETHER" push -n "$NS" -o json
}
docker_push() { # TAG [BUILDAH_BUD_FLAGS...]
  baseline_deploy "$work/app" "$DOCKER_NS" "$1" "$node_major" "${@:2}"
}

# sample CASE RUN PIPELINE WANT CMD...: one timed deploy, recorded, then settled.
sample() {
  local case="$1" run="$2" pipeline="$3" want="$4" ns url; shift 4
  if [[ "$pipeline" == aether ]]; then ns="$NS"; url="$aether_url"; else ns="$DOCKER_NS"; url="$docker_url"; fi
  timed "$url" "$want" "$@" || die "$case #$run: the $pipeline pipeline failed"
  record "$case" "$run" "$pipeline" "$served_ms" "$work/cmd.out"
  settle "$ns"
}

# both CASE RUN WANT AETHER_CACHE DOCKER_TAG [BUILDAH_BUD_FLAGS...]: the same change
# through both pipelines, Aether first in odd runs and second in even ones.
both() {
  local case="$1" run="$2" want="$3" cache="$4" tag="$5"; shift 5
  if (( run % 2 )); then
    sample "$case" "$run" aether "$want" aether_push "$cache"
    sample "$case" "$run" dockerfile "$want" docker_push "$tag" "$@"
  else
    sample "$case" "$run" dockerfile "$want" docker_push "$tag" "$@"
    sample "$case" "$run" aether "$want" aether_push "$cache"
  fi
}

# -------------------------------------------------------------------- setup --

setup() {
  baseline_packages
  [[ -n "${AETHER_BIN:-}" ]] || cargo build -q -p aether-cli
  local ns
  for ns in "$NS" "$DOCKER_NS"; do
    kubectl delete namespace "$ns" --ignore-not-found --wait=true --timeout=180s >/dev/null
    kubectl create namespace "$ns" >/dev/null
  done
  kubectl -n "$NS" create rolebinding aether-operator --clusterrole aether-operator-namespace \
    --serviceaccount aether-system:aether-operator >/dev/null
  mkdir -p "$work/app" "$work/orig"
  (cd "$REPO_ROOT/examples/express-api" && tar --exclude node_modules --exclude .aether -cf - .) | tar -xf - -C "$work/app"
  cp "$work/app/package.json" "$work/app/package-lock.json" "$work/orig/"
  registry_start
  baseline_storage_reset

  # First deploys, from empty caches (recorded, not in the table).
  write_greeting "bench first"
  local t0 image
  t0="$(now_us)"
  aether_push "$work/cache" > "$work/cmd.out" || die "the first aether push failed"
  record first 1 aether $(( ($(now_us) - t0) / 1000 )) "$work/cmd.out"
  aether_url="$(service_url "$NS")"
  # The Dockerfile's base is the Node image Aether's pods run (the major Aether chose).
  image="$(kubectl -n "$NS" get deployment "$APP" -o jsonpath='{.spec.template.spec.containers[?(@.name=="app")].image}')"
  [[ "$image" =~ :([0-9]+) ]] || die "cannot tell the Node major from the app's image '$image'"
  node_major="${BASH_REMATCH[1]}"
  log "Dockerfile base: aether.local/node:$node_major + npm (Aether's pods run $image)"
  baseline_base_image "$node_major"
  t0="$(now_us)"
  baseline_create "$work/app" "$DOCKER_NS" first "$node_major"
  record first 1 dockerfile $(( ($(now_us) - t0) / 1000 ))
  prev_tag=first   # the image the Dockerfile Deployment runs before the next sample
  docker_url="$(service_url "$DOCKER_NS")"
  settle "$NS"; settle "$DOCKER_NS"
  local url answer
  for url in "$aether_url" "$docker_url"; do
    answer="$(curl -s --max-time 2 "$url" || true)"
    [[ "$answer" == "bench first" ]] || {
      kubectl get pods -A -o wide 2>&1 | grep -E "^NAMESPACE|^($NS|$DOCKER_NS) " >&2 || true
      die "after the first deploys $url answers '${answer:0:80}', not 'bench first'"
    }
  done
}

# -------------------------------------------------------------------- cases --

bench_warm() {
  local i want
  for i in $(seq "$RUNS"); do
    want="bench warm $i $RANDOM"; write_greeting "$want"
    both warm "$i" "$want" "$work/cache" "warm-$i"
    baseline_drop "$prev_tag"; prev_tag="warm-$i"
  done
}

# A fresh CI runner has the checkout and nothing else. For Aether: an empty
# AETHER_CACHE_DIR; the lockfile is unchanged, so the deps layer comes from the
# cluster (a Ready artifact with the same key) and nothing is installed. For the
# Dockerfile: the base image (a runner pulls or keeps it) but no layer cache
# (--no-cache), so `npm ci` runs and a new dependency layer (new digest: its files'
# times differ) is pushed and pulled by the node under a new tag. A registry-backed
# layer cache (--cache-from) would spare that; the standard pipeline has none.
bench_fresh() {
  local i want
  for i in $(seq "$RUNS"); do
    want="bench fresh $i $RANDOM"; write_greeting "$want"
    both fresh "$i" "$want" "$work/cache-fresh-$i" "fresh-$i" --no-cache
    rm -rf "$work/cache-fresh-$i"
    # A no-cache build's layers are of no use to later builds.
    baseline_drop "$prev_tag" "$([[ "$prev_tag" == fresh-* ]] && echo buildah)"; prev_tag="fresh-$i"
  done
}

# Each run adds `ms` to the original package.json and lockfile (untimed, like the
# developer's edit) under a root version no run used before, so no cache on either
# side (Aether's local cache and storage, buildah's layers, the registry, the node's
# images) has seen the lockfile: both install the new tree. The code uses ms.
add_dependency() {
  cp "$work/orig/package.json" "$work/orig/package-lock.json" "$work/app/"
  jq --arg v "1.0.$(date +%s)$1" '.version = $v' "$work/orig/package.json" > "$work/app/package.json"
  # npm follows this machine's npmrc, as when the committed lockfile was made.
  (cd "$work/app" && npm install --package-lock-only --no-audit --no-fund --loglevel=error ms@2.1.3 >/dev/null)
}

bench_deps() {
  local i want
  for i in $(seq "$RUNS"); do
    add_dependency "$i"
    want="bench deps $i $RANDOM"; write_greeting "$want" ms
    both deps "$i" "$want 1m" "$work/cache" "deps-$i"
    # Each run's lockfile is new: the last run's image helps no later build.
    baseline_drop "$prev_tag" "$([[ "$prev_tag" == warm-* ]] || echo buildah)"; prev_tag="deps-$i"
  done
}

# ---------------------------------------------------------- `aether dev` hook --
# `aether dev DIR --app NAME -n NS` stays in the foreground until SIGINT, watches DIR
# and serves every save without a new pod; it sets the AetherApp's spec.devHot, which
# rolls the pods once. Once that roll is over and one untimed save was served, each
# of RUNS_DEV saves is timed from the file write until the Service answers it. (A CLI
# without the command gets "—" / null.)
dev_available() { "$AETHER" dev --help >/dev/null 2>&1; }

# dev_ready: the app is in dev-hot mode, the operator has seen that, and the pods
# rolled for it (a save made during that roll need not reach the new pod).
dev_ready() {
  kubectl -n "$NS" get aetherapp "$APP" -o json | jq -e '.spec.devHot == true
    and .status.observedGeneration == .metadata.generation
    and any(.status.conditions[]?; .type == "Ready" and .status == "True")' >/dev/null || return 1
  kubectl -n "$NS" rollout status "deployment/$APP" --timeout=1s >/dev/null 2>&1 || return 1
  [[ "$(kubectl -n "$NS" get pods -o name | wc -l)" -eq 1 ]]
}

stop_dev() {
  local pid="$dev_pid"
  dev_pid=""
  alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -INT "$pid" 2>/dev/null || true
  # It records the last save, then rolls the pods off dev-hot mode.
  for _ in $(seq 900); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then log "aether dev did not stop within 90s of SIGINT; sending SIGTERM"; kill -TERM "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
  mkdir -p "$(dirname "$BENCH_JSON")"
  cp "$work/dev.log" "$(dirname "$BENCH_JSON")/aether-dev.log"
  log "aether dev stopped; its output: $(dirname "$BENCH_JSON")/aether-dev.log"
}

bench_dev() {
  # A script's background jobs ignore SIGINT unless it is reset for them.
  (cd "$work/app" && exec env --default-signal=INT "$AETHER" dev "$work/app" --app "$APP" -n "$NS") \
    > "$work/dev.log" 2>&1 &
  dev_pid=$!
  local i want t0 deadline=$((SECONDS + SERVE_TIMEOUT))
  until dev_ready; do
    if ! alive "$dev_pid" || (( SECONDS >= deadline )); then
      tail -n 30 "$work/dev.log" >&2; dev_error="the session did not put the app in dev-hot mode"; return 1
    fi
    sleep 0.5
  done
  want="bench dev warm-up $RANDOM"; write_greeting "$want"
  if ! served "$aether_url" "$want" "$(now_us)" "$SERVE_TIMEOUT" "$dev_pid" || (( pid_done )); then
    tail -n 30 "$work/dev.log" >&2; dev_error="the session did not serve its first save"; return 1
  fi
  for i in $(seq "$RUNS_DEV"); do
    want="bench dev $i $RANDOM"
    t0="$(now_us)"
    write_greeting "$want"
    if ! served "$aether_url" "$want" "$t0" "$DEV_TIMEOUT" "$dev_pid" || (( pid_done )); then
      tail -n 30 "$work/dev.log" >&2; dev_error="save $i was not served within ${DEV_TIMEOUT}s (or the session ended)"; return 1
    fi
    record dev "$i" aether "$served_ms"
    sleep 0.2   # saves a developer makes, not a burst the watcher may coalesce
  done
  stop_dev
}

# ------------------------------------------------------------------ results --

versions() {
  jq -n \
    --arg kubernetes "$(kubectl version -o json 2>/dev/null | jq -r .serverVersion.gitVersion)" \
    --arg kubectl "$(kubectl version --client -o json 2>/dev/null | jq -r .clientVersion.gitVersion)" \
    --arg containerd "$(containerd --version | awk '{print $3}')" \
    --arg runc "$(runc --version | awk 'NR==1 {print $3}')" \
    --arg buildah "$(buildah --version | awk '{print $3}')" \
    --arg registry "$(docker-registry --version | awk '{print $3}')" \
    --arg node "$(node --version)" --arg npm "$(npm --version)" \
    --arg aether "$("$AETHER" --version)" \
    --arg operator "$(kubectl -n aether-system get deployment aether-operator -o jsonpath='{.spec.template.spec.containers[0].image}' 2>/dev/null)" \
    --arg commit "$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null)$([[ -n "$(git -C "$REPO_ROOT" status --porcelain 2>/dev/null)" ]] && echo "+dirty")" \
    --arg kernel "$(uname -r)" --argjson cpus "$(nproc)" --arg nodeImage "aether.local/node:$node_major" \
    '{kubernetes: $kubernetes, kubectl: $kubectl, containerd: $containerd, runc: $runc, buildah: $buildah,
      dockerRegistry: $registry, hostNode: $node, npm: $npm, aether: $aether, operatorImage: $operator,
      appNodeImage: $nodeImage, commit: $commit, kernel: $kernel, cpus: $cpus}'
}

# The JSON report: every sample, per case and pipeline the median (dev: p50 and p95)
# and the median of each step, the ratio Aether / Dockerfile and its goal.
report() {
  mkdir -p "$(dirname "$BENCH_JSON")"
  jq -s --argjson versions "$(versions)" --argjson runs "$RUNS" --argjson runsDev "$RUNS_DEV" \
    --argjson devRan "$1" --arg devError "${dev_error:-}" --arg at "$(date -u +%FT%TZ)" '
    def median: sort | if length == 0 then null
      elif length % 2 == 1 then .[length / 2 | floor]
      else ((.[length / 2 - 1] + .[length / 2]) / 2 | round) end;
    def p95: sort | if length == 0 then null else .[((0.95 * length) | ceil) - 1] end;
    def steps: if .pipeline == "aether" then
        (.detail.timingsMs // {} | {pack, upload, verify, deploy})
        + {rest: (.ms - ([.detail.timingsMs // {} | .pack, .upload, .verify, .deploy] | map(. // 0) | add))}
      else (.detail // {} | {build: .buildMs, push: .pushMs, setImage: .setImageMs})
        + {rollout: (.ms - ((.detail.buildMs // 0) + (.detail.pushMs // 0) + (.detail.setImageMs // 0)))} end;
    def side($s): ($s | map(.ms)) as $ms
      | {samplesMs: $ms, medianMs: ($ms | median),
         stepsMedianMs: ([$s[] | steps] as $st | ($st[0] // {} | keys_unsorted)
           | map({key: ., value: ([$st[][.]] | map(select(. != null)) | median)}) | from_entries)};
    def case($all; $c; $meta): ($all | map(select(.case == $c))) as $s
      | $meta + {aether: side($s | map(select(.pipeline == "aether"))),
                 dockerfile: side($s | map(select(.pipeline == "dockerfile"))), samples: $s}
      | .ratio = (if .aether.medianMs != null and (.dockerfile.medianMs // 0) > 0
          then (.aether.medianMs / .dockerfile.medianMs * 100 | round) / 100 else null end)
      | .met = (.ratio != null and .ratio <= .goal);
    def dev($all): ($all | map(select(.case == "dev")) | map(.ms)) as $ms
      | {label: "dev loop (save → served)", runs: $runsDev, samplesMs: $ms,
         p50Ms: ($ms | median), p95Ms: ($ms | p95), goal: {p50Ms: 500, p95Ms: 1000},
         error: (if $devError == "" then null else $devError end)}
      | .met = (.error == null and .p50Ms != null and .p50Ms <= 500 and .p95Ms <= 1000);
    . as $all
    | {generatedAt: $at, runs: $runs, versions: $versions,
       setup: {firstDeployMs: ($all | map(select(.case == "first")) | map({key: .pipeline, value: .ms}) | from_entries)},
       cases: {
         warm: case($all; "warm"; {label: "code-only change, warm caches", goal: 1.0}),
         fresh: case($all; "fresh"; {label: "code-only change, fresh CI runner", goal: 0.12}),
         deps: case($all; "deps"; {label: "one dependency added", goal: 0.35}),
         dev: (if $devRan then dev($all) else null end)}}
    ' "$samples" > "$BENCH_JSON"
}

table() {
  # shellcheck disable=SC2016 # jq, not shell
  local defs='def fix2: (. * 100 | round) as $c | "\($c / 100 | floor).\($c % 100 | tostring | if length < 2 then "0" + . else . end)";
    def sec: if . == null then "—" else "\(. / 1000 | fix2) s" end;
    def goal: "≤ \(.goal | fix2 | sub("0$"; ""))x";'
  echo
  echo "| case | Aether | Dockerfile pipeline | ratio | goal |"
  echo "|---|---|---|---|---|"
  jq -r "$defs"'
    .cases | (.warm, .fresh, .deps | "| \(.label) | \(.aether.medianMs | sec) | \(.dockerfile.medianMs | sec) | \(if .ratio == null then "—" else "\(.ratio | fix2)x" end) | \(goal)\(if .met then "" else " (missed)" end) |"),
    (if .dev == null then "| dev loop (save → served) | — | — | — | p50 ≤ 0.5 s, p95 ≤ 1 s |"
     else "| \(.dev.label) | \(if .dev.error then "failed" else "p50 \(.dev.p50Ms | sec), p95 \(.dev.p95Ms | sec)" end) | — | — | p50 ≤ 0.5 s, p95 ≤ 1 s\(if .dev.met then "" else " (missed)" end) |" end)
  ' "$BENCH_JSON"
  echo
  echo "Medians of the steps (ms): Aether's from \`aether push -o json\` timingsMs (rest: the sample"
  echo "minus those, i.e. connecting, and the Service answering after or before the push returned);"
  echo "the Dockerfile pipeline's rollout is the rest of its time (set image → the Service answers)."
  jq -r '.cases | (.warm, .fresh, .deps) | "  \(.label): aether \(.aether.stepsMedianMs | tostring), dockerfile \(.dockerfile.stepsMedianMs | tostring)"' "$BENCH_JSON"
  printf '\n%s runs per case, medians; every sample and the versions: %s\n' "$RUNS" "$BENCH_JSON"
}

# --------------------------------------------------------------------- main --

setup
bench_warm
bench_fresh
bench_deps
dev_ran=false dev_error=""
if dev_available; then
  log "aether dev: timing $RUNS_DEV saves"
  if ! bench_dev; then
    log "the dev case failed: $dev_error"
    [[ -z "$dev_pid" ]] || stop_dev
  fi
  dev_ran=true
else
  log "aether dev is not in this CLI yet: the dev case is skipped"
fi
report "$dev_ran"
table
[[ -z "$dev_error" ]]
