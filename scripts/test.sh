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
  cmake -S . -B build/ci-cuda -DPOSTSVD_ENABLE_CUDA=ON -DPOSTSVD_BUILD_TESTS=ON \
        -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build/ci-cuda -j"$JOBS"
  ctest --test-dir build/ci-cuda --output-on-failure -j"$JOBS" -L gpu || {
    echo "CUDA-build tests failed"; exit 1; }
else
  echo "== no nvcc: CUDA variant not built"
fi

echo "== Python tests"
python3 -m pytest -q tests/python "$@"
