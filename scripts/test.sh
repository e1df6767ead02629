#!/usr/bin/env bash
# The whole test suite: C++ (GoogleTest via ctest), a compile-and-link check of
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

if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "== CUDA variant: compile and link (runs its tests only where a GPU exists)"
  export PATH="/usr/local/cuda/bin:$PATH"
  cmake -S . -B build/ci-cuda -DPOSTSVD_ENABLE_CUDA=ON -DPOSTSVD_BUILD_TESTS=ON -DPOSTSVD_BUILD_PYTHON=ON \
        -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" -DCMAKE_BUILD_TYPE=Release \
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
    tests/python/test_factor_cache.py tests/python/test_arguments.py tests/python/test_core_module.py
else
  echo "== no nvcc: CUDA variant not built"
fi

echo "== Python tests"
python3 -m pytest -q tests/python "$@"
