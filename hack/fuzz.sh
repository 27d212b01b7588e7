#!/usr/bin/env bash
# Fuzz the hardened unpacker: hack/fuzz.sh [SECONDS]. Needs a nightly toolchain
# (rustup) and cargo-fuzz (installed here if missing).
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
seconds="${1:-60}"
rustup toolchain list | grep -q '^nightly' || die "cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly"
command -v cargo-fuzz >/dev/null || phase "install cargo-fuzz" cargo install cargo-fuzz --locked
cd "$REPO_ROOT/fuzz"
# Seeds: valid GNU tars with files, directories, symlinks and long names, so the
# fuzzer starts from well-formed headers instead of random bytes.
corpus="corpus/unpack"
mkdir -p "$corpus"
if [[ ! -f "$corpus/seed-gnu.tar" ]]; then
  seed="$(mktemp -d)"
  mkdir -p "$seed/node_modules/pkg/bin" "$seed/node_modules/.bin" "$seed/$(printf 'long%.0s' {1..40})"
  echo 'module.exports = 1' > "$seed/node_modules/pkg/index.js"
  printf '#!/usr/bin/env node\n' > "$seed/node_modules/pkg/bin/cli.js"; chmod 755 "$seed/node_modules/pkg/bin/cli.js"
  ln -s ../pkg/bin/cli.js "$seed/node_modules/.bin/pkg"
  ln -s node_modules "$seed/nm"
  tar --format=gnu --sort=name -C "$seed" -cf "$corpus/seed-gnu.tar" .
  tar --format=ustar --sort=name -C "$seed" -cf "$corpus/seed-ustar.tar" ./node_modules
  rm -rf "$seed"
fi
cargo +nightly fuzz run unpack -- -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=65536
