#!/usr/bin/env bash
# make lint's supply-chain check: cargo-deny on licenses, bans (duplicate versions
# reported), sources and, where the RustSec advisory database can be reached, the
# advisories (deny.toml).
#   AETHER_ADVISORY_DB=URL   a mirror of github.com/rustsec/advisory-db (a Git URL
#                            whose host is a name) for machines that cannot reach
#                            GitHub
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
install_cargo_deny
"$CARGO_DENY" deny --log-level error check licenses bans sources
# The advisory database is a Git repository. Where it cannot be reached (this
# project's build machines cannot reach GitHub), the check cannot run: say so loudly
# rather than pass silently.
db="${AETHER_ADVISORY_DB:-https://github.com/rustsec/advisory-db}"
if ! timeout 15 git ls-remote -q "$db" HEAD >/dev/null 2>&1; then
  log "WARNING: advisories NOT checked: $db is unreachable from here (AETHER_ADVISORY_DB names a mirror)"
  exit 0
fi
config="$(mktemp)"
trap 'rm -f "$config"' EXIT
# deny.toml with the database's address (cargo-deny takes it from its config only).
awk -v db="$db" '{ print } /^\[advisories\]$/ { printf "db-urls = [\"%s\"]\n", db }' deny.toml >"$config"
"$CARGO_DENY" deny --log-level error --config "$config" check advisories
