#!/usr/bin/env bash
# Run each fuzz target for a bounded time (default 60 s each) with cargo-fuzz on the machine's
# stable toolchain (RUSTC_BOOTSTRAP lets it use the nightly-only flags), without a sanitizer
# (Rust code; the point is panics and broken invariants). Seeds: fuzz/corpus/<target>/ (committed);
# inputs found while fuzzing go to $FUZZ_TARGET_DIR/corpus/<target>/, crashes to
# fuzz/artifacts/<target>/.
# Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/tmp/flowengine-fuzz-target}"
for target in pipeline_split csv_decoder json_decoder sql_plan; do
  echo "=== $target (${secs}s)"
  mkdir -p "$CARGO_TARGET_DIR/corpus/$target"
  cargo fuzz run --sanitizer none "$target" "$CARGO_TARGET_DIR/corpus/$target" "corpus/$target" \
    -- -max_total_time="$secs" -max_len=4096
done
