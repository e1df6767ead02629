#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan) and runs each for a
# bounded time; fails on the first crash, sanitizer report, leak, timeout or
# out-of-memory. Usage: scripts/fuzz.sh [SECONDS per target, default 60] [TARGET ...]
# Targets: safetensors_header config_architecture shard_index factor_cache quantized_checkpoint.
# Seeds come from tests/fuzz/corpus/<target>/ (read only); what a run finds goes
# to build/fuzz/corpus/<target>/ and a crashing input to build/fuzz/crash-<target>-*.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(safetensors_header config_architecture shard_index factor_cache quantized_checkpoint)
JOBS=${JOBS:-$(nproc)}
CLANG=${CLANG:-clang++}
BUILD=build/fuzz

launcher=()
command -v ccache >/dev/null 2>&1 && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$BUILD" -DCMAKE_CXX_COMPILER="$CLANG" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DPOSTSVD_BUILD_FUZZERS=ON -DPOSTSVD_BUILD_TESTS=OFF -DPOSTSVD_BUILD_PYTHON=OFF "${launcher[@]}" >/dev/null
cmake --build "$BUILD" -j"$JOBS" --target $(printf 'fuzz_%s ' "${TARGETS[@]}")

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
for target in "${TARGETS[@]}"; do
  echo "== fuzz_$target: ${SECONDS_PER_TARGET} s"
  work="$BUILD/corpus/$target"
  mkdir -p "$work"
  # One process, 2 GB RSS and 10 s per input: a parser that allocates what a
  # file claims, or stalls on it, fails here like a crash does.
  if ! "$BUILD/tests/fuzz/fuzz_$target" -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 \
       -max_len=65536 -print_final_stats=1 -artifact_prefix="$BUILD/crash-$target-" \
       "$work" "tests/fuzz/corpus/$target" 2>"$BUILD/fuzz_$target.log"; then
    tail -n 60 "$BUILD/fuzz_$target.log"
    echo "fuzz_$target FAILED; the input is in $BUILD/crash-$target-*; log: $BUILD/fuzz_$target.log"
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$BUILD/fuzz_$target.log" | tr '\n' ' '
  echo
done
echo "fuzzing: no crash in ${#TARGETS[@]} target(s)"
