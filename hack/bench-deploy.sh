#!/usr/bin/env bash
# Push → serving on the cluster in KUBECONFIG (default: the local one, with Aether
# deployed by `make deploy`), as `aether push -o json` reports it, for the three cases
# the Dockerfile baseline was measured on (../shared/LOCAL-CLUSTER.md: 18 s cold CI
# build, 2.25 s warm code-only change):
#   first   empty local cache, new namespace (storage may already hold the deps layer:
#           blobs are content-addressed and shared)
#   warm    one source line changed, same machine (RUNS times, median printed)
#   clean   one source line changed from an empty local cache with the same lockfile
#           (a fresh CI runner): the deps layer comes from the cluster, nothing installs
# Uses the namespace aether-bench (deleted first) and a copy of examples/express-api.
source "$(dirname "$0")/lib.sh"
[[ -n "${KUBECONFIG:-}" ]] || eval "$("$HACK_DIR/cluster.sh" env)"
runs="${RUNS:-5}"
ns="aether-bench"
aether="$REPO_ROOT/target/debug/aether"
cargo build -q -p aether-cli
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
kubectl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$ns" >/dev/null
kubectl -n "$ns" create rolebinding aether-operator --clusterrole aether-operator-namespace \
  --serviceaccount aether-system:aether-operator >/dev/null
mkdir -p "$work/app"
(cd "$REPO_ROOT/examples/express-api" && tar --exclude node_modules --exclude .aether -cf - .) | tar -xf - -C "$work/app"

push() { # CACHE_DIR → JSON line of what the push printed
  (cd "$work/app" && AETHER_CACHE_DIR="$1" "$aether" push -n "$ns" -o json) \
    | jq -c '{total: .timingsMs.total, pack: .timingsMs.pack, upload: .timingsMs.upload, verify: .timingsMs.verify, deploy: .timingsMs.deploy, readyAfterMs: .deploy.readyAfterMs, bytesUploaded, depsSource}'
}
change() { sed -i "s/^exports.greeting = .*/exports.greeting = () => 'bench $1 $RANDOM\\\\n';/" "$work/app/lib/greeting.js"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

change first
printf 'first  %s\n' "$(push "$work/cache-first")"
warm=()
for i in $(seq "$runs"); do
  change "warm$i"
  line="$(push "$work/cache-first")"; printf 'warm   %s\n' "$line"
  warm+=("$(jq .total <<<"$line")")
done
clean=()
for i in $(seq "$runs"); do
  change "clean$i"
  line="$(push "$work/cache-clean-$i")"; printf 'clean  %s\n' "$line"
  clean+=("$(jq .total <<<"$line")")
done
printf 'median total: warm %s ms (Dockerfile baseline 2250), clean machine %s ms (baseline 18000)\n' \
  "$(printf '%s\n' "${warm[@]}" | median)" "$(printf '%s\n' "${clean[@]}" | median)"
kubectl delete namespace "$ns" --wait=false >/dev/null
