#!/usr/bin/env bash
# One call on a GPU machine: build the CUDA variant, run the GPU tests, run the
# benchmarks. Stages: "tests" (build + ctest -L gpu + pytest -m gpu),
# "small" (Qwen2.5-1.5B full + 7B method comparison + torch/cupy on 1.5B),
# "large" (Qwen2.5-7B and Llama-3.1-8B full + torch/cupy on one layer of each),
# "diagnose" (the 2026-11-22 pytest segfault: CPU ctest on this many cores, then
# benchmarks/diagnose_gpu.py plain, with torch, with one BLAS thread, under gdb,
# glibc's malloc checks and compute-sanitizer; then the GPU tests),
# "warm" (issue 15, one call of about 8 minutes: build, GPU tests, then whole model pairs with the
# post decomposed cold vs from the base's factors (--warm off,always) at the Qwen2.5-1.5B,
# Qwen2.5-7B and Llama-3.1-8B shapes, and torch.linalg.svd (gesvd, gesvdj, gesvda) and cupy on
# the 7B shapes in the same run),
# "dequant" (issue 10: the device-side FP8 dequantization checked bit for bit against the host's
# (ctest -R Quantization), then 4 layers of Qwen2.5-7B and Llama-3.1-8B quantized to FP8 E4M3 with
# 128x128 scales, compared with dequantization on the host vs on the device in one run; then the
# GPU tests. If the bit-for-bit tests pass, CudaConfig::dequantize_on_device can default to true).
# Logs and JSON go to $OUT (or ./gpu-out). Each step has its own time limit.
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
ROOT=$PWD
BUILD=/tmp/build-gpu
JOBS=$(nproc)
log() { echo "== $(date +%T) $*"; }

setup() {
  log "machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nvcc --version | tail -1
  python3 -c "import torch, cupy, numpy; print('torch', torch.__version__, 'cupy', cupy.__version__, 'numpy', numpy.__version__)"
  local prefix=""
  if [ ! -d /usr/include/gtest ] && [ ! -d /usr/local/include/gtest ]; then
    log "building GoogleTest from the carried .gtest"
    cmake -S "$ROOT/.gtest" -B /tmp/gtest-build -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF >/dev/null &&
      cmake --build /tmp/gtest-build -j"$JOBS" >/dev/null && cmake --install /tmp/gtest-build --prefix /tmp/gtest >/dev/null
    prefix="-DCMAKE_PREFIX_PATH=/tmp/gtest"
  fi
  log "configure"
  cmake -S "$ROOT" -B "$BUILD" -DPOSTSVD_ENABLE_CUDA=ON -DPOSTSVD_BUILD_TESTS=ON -DPOSTSVD_BUILD_PYTHON=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DPython_EXECUTABLE="$(command -v python3)" \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" $prefix >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; return 1; }
  log "build"
  cmake --build "$BUILD" -j"$JOBS" --target postsvd_tests postsvd_bench_gpu _core 2>&1 | grep -E "error|warning: |Error" | head -40
  cp "$BUILD"/_core*.so "$ROOT/python/postsvd/" 2>/dev/null
  ls "$BUILD/tests/cpp/postsvd_tests" "$BUILD/postsvd_bench_gpu" >/dev/null || return 1
}

tests() {
  log "ctest -L gpu"
  (cd "$BUILD" && timeout 150 ctest -L gpu --output-on-failure 2>&1 | tail -60)
  log "pytest -m gpu"
  PYTHONPATH="$ROOT/python" timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider \
    "$ROOT/tests/python/test_gpu.py" "$ROOT/tests/python/test_cuda_backend.py" 2>&1 | tail -40
}

diagnose() {
  local py="env PYTHONPATH=$ROOT/python python3 $ROOT/benchmarks/diagnose_gpu.py"
  log "ctest -L cpu ($(nproc) cores: the CPU path was never tested on this machine)"
  (cd "$BUILD" && timeout 240 ctest -L cpu -j4 2>&1 | tail -12)
  log "diagnose: CPU compare only";                timeout 60 $py --no-cuda-svd 2>&1 | tail -15
  log "diagnose: CUDA svd, then compare";          timeout 60 $py 2>&1 | tail -25
  log "diagnose: the same with torch imported";    timeout 90 $py --torch 2>&1 | tail -25
  log "diagnose: the same, CPU compare on 1 thread"; timeout 90 $py --torch --threads 1 2>&1 | tail -15
  log "diagnose: gdb"
  timeout 150 gdb -q -batch -ex run -ex "info sharedlibrary" -ex "thread apply all bt 30" \
    --args python3 "$ROOT/benchmarks/diagnose_gpu.py" --torch 2>&1 | grep -v "^\[New Thread\|^\[Thread .* exited" |
    tail -150 >"$OUT/diagnose_gdb.log"
  tail -80 "$OUT/diagnose_gdb.log"
  log "diagnose: glibc malloc checks"
  GLIBC_TUNABLES=glibc.malloc.check=3:glibc.malloc.perturb=165 timeout 90 $py --torch 2>&1 | tail -15
  log "diagnose: compute-sanitizer memcheck"
  timeout 200 compute-sanitizer --tool memcheck --print-limit 20 env PYTHONPATH="$ROOT/python" \
    python3 "$ROOT/benchmarks/diagnose_gpu.py" --repeat 1 2>&1 | tail -40
  log "diagnose: pytest test_gpu.py -k compare_matches_cpu alone"
  PYTHONPATH="$ROOT/python" timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider \
    "$ROOT/tests/python/test_gpu.py" -k compare_matches_cpu 2>&1 | tail -25
}

bench() {  # model layers-arg extra-args... ; json name
  local name=$1; shift
  log "postsvd_bench_gpu $*"
  timeout "${LIMIT:-300}" "$BUILD/postsvd_bench_gpu" "$@" --json "$OUT/$name.json" 2>&1
}

baselines() {  # data model layers budget json drivers
  log "torch/cupy baselines on $2 layer 0"
  PYTHONUNBUFFERED=1 timeout "${LIMIT:-300}" python3 "$ROOT/benchmarks/bench_gpu.py" --data "$1" --model "$2" --layers "$3" \
    --budget "$4" --drivers "$6" --cupy --json "$OUT/$5.json" 2>&1
}

START=$(date +%s)
DEADLINE=$((START + ${BUDGET_S:-570}))
left() { echo $((DEADLINE - $(date +%s))); }
# step NEEDED_S LIMIT_S command...: runs when NEEDED_S seconds are left, with a limit that ends before the deadline.
step() {
  local need=$1 limit=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then log "skipped (only $(left) s left): $*"; return; fi
  [ "$limit" -gt $(( $(left) - 10 )) ] && limit=$(( $(left) - 10 ))
  LIMIT=$limit "$@"
}

stage=${1:-tests}
setup || { log "setup failed"; exit 1; }
case $stage in
  tests) tests ;;
  diagnose) diagnose; tests ;;
  small)
    tests
    mkdir -p /tmp/q15 /tmp/q7
    LIMIT=150 bench bench_qwen1.5b --model qwen1.5b --lanes 1,2,3 --repeat 3 --accuracy --parity --save /tmp/q15
    LIMIT=170 bench methods_qwen7b --model qwen7b --layers 1 --lanes 2 --methods
    LIMIT=150 baselines /tmp/q15 Qwen2.5-1.5B 28 40 torch_qwen1.5b gesvd,gesvdj,gesvda
    ;;
  all)
    mkdir -p /tmp/q15 /tmp/q7 /tmp/l8
    tests
    step 100 150 bench bench_qwen7b --model qwen7b --lanes ${LANES:-2} --accuracy --save /tmp/q7
    step 60 100 baselines /tmp/q7 Qwen2.5-7B 28 15 torch_qwen7b gesvd,gesvdj,gesvda
    step 40 60 bench methods_qwen7b --model qwen7b --layers 1 --lanes 2 --methods
    step 40 60 bench bench_qwen1.5b --model qwen1.5b --lanes 1,2,3 --parity
    step 70 110 bench bench_llama8b --model llama8b --lanes ${LANES:-2}
    ;;
  warm)
    mkdir -p /tmp/q7
    tests
    step 60 80 bench warm_qwen1.5b --model qwen1.5b --lanes 2 --warm off,always --repeat 2
    step 120 150 bench warm_qwen7b --model qwen7b --lanes 2 --warm off,always --accuracy --save /tmp/q7
    step 100 130 bench warm_llama8b --model llama8b --lanes 2 --warm off,always
    step 60 100 baselines /tmp/q7 Qwen2.5-7B 28 20 torch_qwen7b gesvd,gesvdj,gesvda
    ;;
  dequant)
    log "ctest -R Quantization (device dequantization against to_matrix, bit for bit)"
    (cd "$BUILD" && timeout 120 ctest -R Quantization --output-on-failure 2>&1 | tail -40)
    step 60 120 bench dequant_qwen7b --model qwen7b --layers 4 --lanes 2 --fp8 --dequant host,device --repeat 2
    step 60 120 bench dequant_llama8b --model llama8b --layers 4 --lanes 2 --fp8 --dequant host,device --repeat 2
    step 150 160 tests
    ;;
  large)
    mkdir -p /tmp/q7 /tmp/l8
    LIMIT=200 bench bench_qwen7b --model qwen7b --lanes ${LANES:-2} --accuracy --save /tmp/q7
    LIMIT=200 bench bench_llama8b --model llama8b --lanes ${LANES:-2} --accuracy --save /tmp/l8
    LIMIT=100 baselines /tmp/q7 Qwen2.5-7B 28 40 torch_qwen7b ${DRIVERS:-gesvd,gesvdj,gesvda}
    ;;
esac
log "done"
