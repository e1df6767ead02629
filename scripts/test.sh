#!/usr/bin/env bash
# The whole test suite: C++ (GoogleTest via ctest), the CPU C++ tests again under
# ASan + UBSan, the libFuzzer harnesses for a bounded time where clang has
# libFuzzer (FUZZ_SECONDS per target, default 30), a compile-and-link check of
# the CUDA backend where nvcc exists, and the Python suite (pytest).
# GPU cases skip themselves with a reason where no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}

bash scripts/setup.sh

echo "== C++ build and tests (CPU backend)"
cmake -S . -B build/ci-cpu -DPOSTSVD_BUILD_TESTS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/ci-cpu -j"$JOBS"
ctest --test-dir build/ci-cpu --output-on-failure -j"$JOBS"

echo "== C++ CPU tests under AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build/ci-asan -DPOSTSVD_BUILD_TESTS=ON -DPOSTSVD_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/ci-asan -j"$JOBS" --target postsvd_tests
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build/ci-asan --output-on-failure -j"$JOBS" -L cpu

fuzzer_probe=$(mktemp -d)
if command -v clang++ >/dev/null 2>&1 &&
   printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' |
     clang++ -x c++ -fsanitize=fuzzer,address,undefined - -o "$fuzzer_probe/probe" >/dev/null 2>&1; then
  echo "== libFuzzer harnesses (${FUZZ_SECONDS:-30} s each; scripts/fuzz.sh SECONDS for longer)"
  JOBS="$JOBS" bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
else
  echo "== no clang with libFuzzer: fuzzing skipped"
fi
rm -rf "$fuzzer_probe"

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "== CUDA variant: compile and link (runs its tests only where a GPU exists)"
  export PATH="/usr/local/cuda/bin:$PATH"
  # No CMAKE_CUDA_ARCHITECTURES unless CUDA_ARCHS is set: the README's configure line,
  # whose default list (sm_80, sm_90, newer, PTX) must work on a host without a GPU.
  cuda_archs=()
  [ -n "${CUDA_ARCHS:-}" ] && cuda_archs=(-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS")
  cmake -S . -B build/ci-cuda -DPOSTSVD_ENABLE_CUDA=ON -DPOSTSVD_BUILD_TESTS=ON -DPOSTSVD_BUILD_PYTHON=ON \
        "${cuda_archs[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DPython_EXECUTABLE="$(command -v python3)" -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/dev/null
  cmake --build build/ci-cuda -j"$JOBS"
  ctest --test-dir build/ci-cuda --output-on-failure -j"$JOBS" -L gpu || {
    echo "CUDA-build tests failed"; exit 1; }
  # The GPU variant's Python module on this machine: it must import without a GPU
  # (or a driver), report none, skip its GPU cases and run the CPU path unchanged.
  echo "== Python tests against the CUDA variant's module (CPU path; GPU cases skip)"
  cuda_pkg=build/ci-cuda/python-package
  rm -rf "$cuda_pkg" && mkdir -p "$cuda_pkg"
  cp -r python/postsvd "$cuda_pkg/" && rm -f "$cuda_pkg"/postsvd/_core*.so
  cp build/ci-cuda/_core*.so "$cuda_pkg/postsvd/"
  PYTHONPATH="$PWD/$cuda_pkg" python3 -c "import postsvd, sys; assert postsvd._core.__file__.startswith(sys.argv[1]), postsvd._core.__file__; print(postsvd.build_info())" "$PWD/$cuda_pkg"
  PYTHONPATH="$PWD/$cuda_pkg" python3 -m pytest -q -p no:cacheprovider tests/python/test_gpu.py \
    tests/python/test_cuda_backend.py tests/python/test_compare.py tests/python/test_svd.py \
    tests/python/test_factor_cache.py tests/python/test_arguments.py tests/python/test_core_module.py \
    tests/python/test_core_hardening.py
else
  echo "== no nvcc: CUDA variant not built"
fi

echo "== Python tests"
python3 -m pytest -q tests/python "$@"
