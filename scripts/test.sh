#!/usr/bin/env bash
# The whole test suite: C++ (GoogleTest via ctest), the CPU C++ tests again under
# ASan + UBSan, the libFuzzer harnesses for a bounded time where clang has
# libFuzzer (FUZZ_SECONDS per target, default 30), a compile-and-link check of
# the CUDA backend where nvcc exists, and the Python suite (pytest) against the self-contained
# CPU wheel built from this checkout and installed into a fresh venv (scripts/wheel_check.sh).
# GPU cases skip themselves with a reason where no GPU is present. The C++ builds take
# OpenBLAS from scipy-openblas32 (POSTSVD_BLAS=auto; requirements.txt installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
. scripts/python_env.sh  # a venv .venv where the system's Python refuses pip installs (PEP 668)

# The suite runs against wheels built from this checkout (below), not an installed copy.
POSTSVD_SETUP_DEPENDENCIES_ONLY=1 bash scripts/setup.sh

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
  cmake -S . -B build/ci-cuda -DPOSTSVD_ENABLE_CUDA=ON -DPOSTSVD_BUILD_TESTS=ON \
        "${cuda_archs[@]}" -DCMAKE_BUILD_TYPE=Release \
        -DPython_EXECUTABLE="$(command -v python3)" -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/dev/null
  cmake --build build/ci-cuda -j"$JOBS"
  ctest --test-dir build/ci-cuda --output-on-failure -j"$JOBS" -L gpu || {
    echo "CUDA-build tests failed"; exit 1; }
  # The GPU wheel (postsvd-cu13) built from this checkout, in a fresh venv: it must import without a
  # GPU (or a driver), take its CUDA libraries from NVIDIA's wheels, report no GPU, skip its GPU
  # cases and run the CPU path unchanged.
  # Kernels for sm_90 only (CUDA_ARCHS overrides): the default list's compile is checked just above,
  # and a second full-list compile would cost CI minutes; scripts/build_wheel.py cu13 ships the full list.
  echo "== GPU wheel: build, install in a fresh venv, Python tests (CPU path; GPU cases skip)"
  t=$PWD/tests/python
  CUDA_ARCHS="${CUDA_ARCHS:-90}" JOBS="$JOBS" bash scripts/wheel_check.sh cu13 -q "$t/test_gpu.py" "$t/test_cuda_backend.py" "$t/test_compare.py" \
    "$t/test_svd.py" "$t/test_factor_cache.py" "$t/test_arguments.py" "$t/test_core_module.py" \
    "$t/test_core_hardening.py" "$t/test_wheel.py"
else
  echo "== no nvcc: CUDA variant not built"
fi

echo "== CPU wheel: build, repair, install in a fresh venv, check its linkage, the Python suite against it"
JOBS="$JOBS" bash scripts/wheel_check.sh cpu -q "$PWD/tests/python" "$@"
