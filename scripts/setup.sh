#!/usr/bin/env bash
# Installs everything postsvd needs to build, test and run on a fresh Debian/Ubuntu
# machine (root or sudo), then installs postsvd itself from this checkout.
# Idempotent: a second run only checks. Set POSTSVD_ENABLE_CUDA=ON for the GPU variant,
# POSTSVD_SETUP_DEPENDENCIES_ONLY=1 to stop before installing postsvd (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/python_env.sh  # the Python to install into: a venv .venv where the system's refuses pip (PEP 668)

# Only what a system provides: a C++ compiler and make; GoogleTest and Google Benchmark for the
# C++ tests; chromium, in which the report test renders the HTML page headless. OpenBLAS
# (scipy-openblas32), nlohmann-json, CMake and Ninja come from PyPI.
APT_PACKAGES="g++ make libgtest-dev libbenchmark-dev chromium"
missing=""
for p in $APT_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  postsvd_apt_install $missing
fi

PY=${PYTHON:-python3}
# The C++ core's build needs the interpreter's headers (Debian/Ubuntu: python3-dev).
if ! "$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' &&
   command -v dpkg >/dev/null; then
  postsvd_apt_install python3-dev "python$(postsvd_python_version "$PY")-dev"
fi
# Python requirements: build tools, runtime, and what the tests and examples use.
$PY -m pip install -q --disable-pip-version-check -r requirements.txt
# CMake >= 3.24 for the C++ builds of scripts/test.sh: PyPI's where the system has none (or too old).
if ! cmake --version 2>/dev/null | head -1 | awk '{split($3, v, "."); exit !(v[1] > 3 || (v[1] == 3 && v[2] >= 24))}'; then
  echo "[setup] pip install cmake ninja"
  $PY -m pip install -q --disable-pip-version-check "cmake>=3.24" ninja
fi

# scripts/test.sh builds and tests wheels in their own venvs and needs no installed copy here.
if [ "${POSTSVD_SETUP_DEPENDENCIES_ONLY:-0}" = 1 ]; then
  echo "[setup] dependencies installed; postsvd itself not installed (POSTSVD_SETUP_DEPENDENCIES_ONLY=1)"
  exit 0
fi
echo "[setup] building and installing postsvd (CUDA: ${POSTSVD_ENABLE_CUDA:-OFF})"
$PY -m pip install -q --disable-pip-version-check --no-build-isolation .
$PY -c "import postsvd; print('[setup] postsvd', postsvd.__version__, '|', postsvd.build_info())"
