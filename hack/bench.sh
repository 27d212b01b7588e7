#!/usr/bin/env bash
# Packing and unpacking speed on examples/express-api's production dependencies,
# side by side with `tar | zstd` and `zstd -dc | tar -x` (see artifact/examples/pack_bench.rs).
#   RUNS=7 (default)   BENCH_DIR=/dev/shm/aether-bench (default: tmpfs, like the
#   memory-backed volume the init container extracts into; point it at a disk folder
#   to measure that instead)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

example="$REPO_ROOT/examples/express-api"
lock_hash="$(sha256sum "$example/package-lock.json" | cut -c1-16)"
work="$AETHER_CACHE/bench/express-api-$lock_hash"
if [[ ! -f "$work/.installed" ]]; then
  rm -rf "$work"; mkdir -p "$work"
  cp "$example/package.json" "$example/package-lock.json" "$work/"
  phase "npm ci (benchmark workload)" bash -c "cd '$work' && npm ci --omit=dev --no-audit --no-fund --loglevel=error"
  touch "$work/.installed"
fi
export BENCH_DIR="${BENCH_DIR:-/dev/shm/aether-bench}"
trap 'rm -rf "$BENCH_DIR"' EXIT
# The CLI packs with this machine's build; pods verify and unpack with the runtime's
# static musl one (whose allocator and memcpy differ): both are measured.
log "this machine's build (what aether push packs with)"
cargo run -q --release -p aether-artifact --example pack_bench -- "$work" "${RUNS:-7}"
log "the $RUNTIME_TARGET build (what pods verify and unpack with)"
cargo run -q --release --target "$RUNTIME_TARGET" -p aether-artifact --example pack_bench -- "$work" "${RUNS:-7}"
