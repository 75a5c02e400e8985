#!/usr/bin/env bash
# Bounded fuzzing run of every cargo-fuzz target in fuzz/ (CI's `make fuzz-smoke`).
#
# Builds the targets with cargo-fuzz on the stable toolchain (installing cargo-fuzz into the
# cache when missing), then runs each for FUZZ_SECONDS from its committed seed corpus
# (fuzz/seeds/<target>) plus whatever earlier runs found. Exits non-zero on any crash, leak,
# timeout or out-of-memory, printing the failing input and how to reproduce it. Writes
# nothing into the repository.
#
# Environment:
#   FUZZ_SECONDS        seconds per target (default 45)
#   FUZZ_TARGETS        space-separated subset of targets (default: all)
#   FUZZ_FRESH_CORPUS   1: start from the seeds only, not from earlier runs' corpus
#   SLUICE_CACHE        cache root (default /var/cache/sluice, else ~/.cache/sluice)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUZZ_DIR=$ROOT/fuzz
FUZZ_SECONDS=${FUZZ_SECONDS:-45}
CARGO_FUZZ_VERSION=0.13.2
# libFuzzer's RSS watchdog. Guarded huge allocations (protocol::alloc, >= 1 GiB) are
# MAP_NORESERVE mappings that are never touched, so they never count against it. The malloc
# limit only works through sanitizer malloc hooks, which a `--sanitizer none` build lacks;
# set it anyway so a sanitizer build behaves the same, above the largest real allocation.
RSS_LIMIT_MB=4096
MALLOC_LIMIT_MB=4096
# One input taking this long is a hang (a request a broker thread would be stuck on).
INPUT_TIMEOUT_S=10

CACHE=${SLUICE_CACHE:-/var/cache/sluice}
if ! mkdir -p "$CACHE" 2>/dev/null || [ ! -w "$CACHE" ]; then
    CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/sluice
    mkdir -p "$CACHE"
fi
TOOLS=$CACHE/tools
CORPUS_ROOT=$CACHE/fuzz-corpus
export CARGO_TARGET_DIR=$CACHE/fuzz-target
export PATH=$TOOLS/bin:$PATH
# No RUSTC_BOOTSTRAP: with `--sanitizer none` cargo-fuzz passes only stable rustc flags
# (sancov passes and LLVM args). Setting it would also make build scripts (anyhow,
# proc-macro2) switch on nightly features and rebuild everything.
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
    build_tmp=$(mktemp -d)
    (cd / && CARGO_INSTALL_ROOT=$TOOLS cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" \
        --locked --target-dir "$build_tmp")
    rm -rf "$build_tmp"
fi

cd "$FUZZ_DIR"
mapfile -t ALL_TARGETS < <(cargo fuzz list)
read -r -a TARGETS <<<"${FUZZ_TARGETS:-${ALL_TARGETS[*]}}"
if [ "${#TARGETS[@]}" -eq 0 ]; then
    echo "fuzz-smoke: no fuzz targets found (cargo fuzz list)" >&2
    exit 1
fi
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR=$CARGO_TARGET_DIR/$TRIPLE/release

start=$(date +%s)
cargo fuzz build --sanitizer none --target-dir "$CARGO_TARGET_DIR"
echo "fuzz-smoke: build took $(($(date +%s) - start)) s"

failed=()
for t in "${TARGETS[@]}"; do
    corpus=$CORPUS_ROOT/$t
    artifacts=$CACHE/fuzz-artifacts/$t/$(date +%Y%m%d-%H%M%S)
    [ "${FUZZ_FRESH_CORPUS:-0}" = 1 ] && rm -rf "$corpus"
    mkdir -p "$corpus" "$artifacts"
    cp -f "$FUZZ_DIR/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    echo "fuzz-smoke: $t for ${FUZZ_SECONDS}s (corpus $corpus)"
    t0=$(date +%s)
    status=0
    "$BIN_DIR/$t" "$corpus" \
        -max_total_time="$FUZZ_SECONDS" \
        -rss_limit_mb="$RSS_LIMIT_MB" -malloc_limit_mb="$MALLOC_LIMIT_MB" \
        -timeout="$INPUT_TIMEOUT_S" \
        -artifact_prefix="$artifacts/" -print_final_stats=1 \
        >"$artifacts/log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added)' \
        "$artifacts/log" || true
    echo "fuzz-smoke: $t exited $status after $(($(date +%s) - t0)) s"
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        # The panic message (or libFuzzer's reason), then the end of the log.
        grep -m1 -A4 -E 'panicked at|ERROR: libFuzzer' "$artifacts/log" || true
        echo "..."
        tail -n 12 "$artifacts/log"
        for a in "$artifacts"/{crash,leak,timeout,oom,slow-unit}-*; do
            [ -e "$a" ] || continue
            echo "fuzz-smoke: failing input: $a"
            echo "  reproduce: $BIN_DIR/$t $a"
            echo "  or, from the repo root: cargo fuzz run --sanitizer none --target-dir $CARGO_TARGET_DIR $t $a"
        done
        echo "fuzz-smoke: full log: $artifacts/log"
    else
        rm -rf "$artifacts"
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: all ${#TARGETS[@]} targets ran ${FUZZ_SECONDS}s without a failure"
