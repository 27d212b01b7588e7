#!/usr/bin/env bash
# Deploy Aether into the local cluster (hack/cluster.sh up) the way a cluster admin
# would: images imported into its containerd, the
# kustomize/overlays/local overlay, the operator's storage Secret from the running
# cluster's credentials, the namespace `default` enabled for apps, and your signing
# key trusted. Idempotent; waits for the operator.
#   AETHER_IMAGES=debug (default)  images of debug builds (hack/images.sh aether): quick
#   AETHER_IMAGES=dockerfile       the release images the Dockerfile builds, as an admin
#                                  gets them (hack/dockerfile-images.sh); `make test`
#                                  runs the e2e suite on these
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
[[ -f "$KUBECONFIG_ADMIN" && -f "$STATE_DIR/garage/credentials" ]] \
  || die "the local cluster is not up: run hack/cluster.sh up"
export KUBECONFIG="$KUBECONFIG_ADMIN"

IMAGES_FROM="${AETHER_IMAGES:-debug}"
case "$IMAGES_FROM" in
  debug)
    build() {
      cargo build -q -p aether-operator -p aether-cli
      cargo build -q -p aether-runtime --target "$RUNTIME_TARGET"
    }
    phase "build operator, runtime and CLI" build
    images() { "$HACK_DIR/images.sh" aether; } ;;
  dockerfile)
    phase "build the CLI" cargo build -q -p aether-cli
    images() { "$HACK_DIR/dockerfile-images.sh"; } ;;
  *) die "AETHER_IMAGES is debug or dockerfile, not $IMAGES_FROM" ;;
esac

# IMAGE_KEYS: the archives' names, which change with their content; OPERATOR_IMAGE_ID:
# the operator image's config digest, which its pods report as their imageID.
import_images() {
  local tar tars
  tars="$(images)"   # a failed build stops here (a `for` list would not)
  for tar in $tars; do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --no-unpack=false "$tar" >/dev/null
    IMAGE_KEYS+="$(basename "$tar" .tar) "
    if tar -xOf "$tar" manifest.json | jq -e '.[0].RepoTags | index("aether.local/aether-operator:dev")' >/dev/null; then
      OPERATOR_IMAGE_ID="$(archive_image_id "$tar")"
    fi
  done
  [[ -n "$OPERATOR_IMAGE_ID" ]] || die "no archive of aether.local/aether-operator:dev"
}
IMAGE_KEYS="" OPERATOR_IMAGE_ID=""
phase "images ($IMAGES_FROM)" import_images

secret_from_env_file() { # NAME FILE
  kubectl -n aether-system create secret generic "$1" --from-env-file "$2" --dry-run=client -o yaml \
    | kubectl apply --server-side --field-manager aether-hack -f - >/dev/null
}

# The key `aether push` signs with; created if missing, then trusted cluster-wide
# (in a real cluster an admin adds CI's and developers' public keys the same way).
trust_signing_key() {
  local aether="$REPO_ROOT/target/debug/aether"
  local key="${AETHER_SIGNING_KEY:-$HOME/.config/aether/signing-key.pem}"
  [[ -f "$key" ]] || "$aether" -q keys generate --out "$key" >/dev/null
  local pub="${key%.pem}.pub.pem"
  [[ -f "$pub" ]] || die "$pub is missing (expected next to $key)"
  local id; id="$("$aether" keys show --key "$key" -o json | jq -r .keyId)"
  kubectl -n aether-system create configmap aether-trusted-keys --from-file "$id.pem=$pub" --dry-run=client -o yaml \
    | kubectl apply --server-side --field-manager aether-hack -f - >/dev/null
  log "trusting signing key $id ($pub) in aether-system/aether-trusted-keys"
}

# Let the operator manage apps in namespace $1 (a cluster admin's step; see
# config/tenant).
enable_namespace() {
  kubectl -n "$1" create rolebinding aether-operator --clusterrole aether-operator-namespace \
    --serviceaccount aether-system:aether-operator --dry-run=client -o yaml \
    | kubectl apply --server-side --field-manager aether-hack -f - >/dev/null
}

apply_all() {
  apply_owned -k "$REPO_ROOT/kustomize/overlays/local"
  secret_from_env_file aether-storage "$STATE_DIR/garage/credentials"
  # App pods hold no storage credentials any more (presigned download URLs instead).
  kubectl -n aether-system delete secret aether-storage-reader --ignore-not-found >/dev/null
  enable_namespace default
  trust_signing_key
  # Same tags, new content: roll the operator when an image or its settings changed
  # (it reads the ConfigMap at start).
  local config; config="$(kubectl kustomize "$REPO_ROOT/kustomize/overlays/local" | sha256sum | cut -c1-12)"
  kubectl -n aether-system patch deployment aether-operator --field-manager aether-hack --type merge \
    -p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"aether.dev/images\":\"${IMAGE_KEYS% }\",\"aether.dev/config\":\"$config\"}}}}}" >/dev/null
  kubectl -n aether-system rollout status deployment/aether-operator --timeout=180s >/dev/null
  wait_for "the operator just built to hold its leader Lease" 60 operator_leads || true
  # The leader runs what was just built (same tags, so compare the content).
  local holder running
  holder="$(kubectl -n aether-system get lease aether-operator -o jsonpath='{.spec.holderIdentity}')"
  running="$(kubectl -n aether-system get pod "$holder" -o jsonpath='{.status.containerStatuses[0].imageID}')"
  [[ "$running" == "$OPERATOR_IMAGE_ID" ]] || die "the operator runs $running, not the $IMAGES_FROM image $OPERATOR_IMAGE_ID"
  log "operator and runtime images: $IMAGES_FROM build (${IMAGE_KEYS% })"
}

# True when a Ready operator pod of the current template holds the Lease.
operator_leads() {
  local holder; holder="$(kubectl -n aether-system get lease aether-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)"
  [[ -n "$holder" ]] || return 1
  # The new pod: the old one holds the Lease until it has stopped.
  [[ "$(kubectl -n aether-system get pod "$holder" -o jsonpath='{.status.containerStatuses[0].imageID}' 2>/dev/null)" == "$OPERATOR_IMAGE_ID" ]] \
    || return 1
  kubectl -n aether-system get pod "$holder" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True \
    && [[ "$(kubectl -n aether-system get deployment aether-operator -o jsonpath='{.status.updatedReplicas}/{.status.replicas}')" == 1/1 ]]
}
phase "operator in aether-system" apply_all
