#!/usr/bin/env bash
# The main job on the local cluster (after `make up deploy`): push the example app
# with the CLI a developer uses, then ask it what it answers.
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
eval "$("$HACK_DIR/cluster.sh" env)"
aether="$REPO_ROOT/target/debug/aether"
cd "$REPO_ROOT/examples/express-api"
log "aether push (examples/express-api, namespace default)"
url="$("$aether" push -n default)"
log "curl $url"
curl -sS --max-time 10 "$url"
log "aether status express-api"
"$aether" status express-api -n default --events 5
