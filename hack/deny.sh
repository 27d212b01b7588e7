#!/usr/bin/env bash
# make lint's supply-chain check: cargo-deny on licenses, bans (duplicate versions
# reported), sources and, where GitHub is reachable, the RustSec advisories (deny.toml).
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
install_cargo_deny
"$CARGO_DENY" deny --log-level error check licenses bans sources
# The advisory database is a Git repository on GitHub. Where GitHub cannot be
# reached (this project's build machines), the check cannot run: say so loudly
# rather than pass silently.
if timeout 15 git ls-remote -q https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  "$CARGO_DENY" deny --log-level error check advisories
else
  log "WARNING: advisories NOT checked: github.com/rustsec/advisory-db is unreachable from here"
fi
