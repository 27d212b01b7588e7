#!/usr/bin/env bash
# Run a command with the operator running out of cluster (development mode), using
# the current environment (KUBECONFIG, AETHER_S3_*, AWS_*): hack/with-operator.sh CMD...
# The operator is stopped by its PID when the command ends.
source "$(dirname "$0")/lib.sh"
cargo build -q -p aether-operator -p aether-cli
log_file="${TMPDIR:-/tmp}/aether-operator-e2e.log"
# Short-lived upload URLs, so tests can watch them expire and be renewed.
export AETHER_UPLOAD_URL_TTL_SECONDS="${AETHER_UPLOAD_URL_TTL_SECONDS:-20}"
"$REPO_ROOT/target/debug/aether-operator" > "$log_file" 2>&1 &
operator_pid=$!
trap 'kill "$operator_pid" 2>/dev/null || true; wait "$operator_pid" 2>/dev/null || true' EXIT
log "operator running (pid $operator_pid, log $log_file)"
set +e
"$@"
status=$?
if (( status != 0 )); then
  log "last operator log lines:"; tail -n 30 "$log_file" >&2
fi
exit "$status"
