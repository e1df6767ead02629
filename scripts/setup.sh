#!/usr/bin/env bash
# Installs everything postsvd needs to build, test and run on a fresh Debian/Ubuntu
# machine (root or sudo), then installs postsvd itself from this checkout.
# Idempotent: a second run only checks. Set POSTSVD_ENABLE_CUDA=ON for the GPU variant.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

# chromium: the report test renders the HTML page headless.
APT_PACKAGES="g++ cmake make libopenblas-dev liblapacke-dev nlohmann-json3-dev libgtest-dev libbenchmark-dev chromium"
missing=""
for p in $APT_PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[setup] apt-get install:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY=${PYTHON:-python3}
# Python requirements: build tools, runtime, and what the tests and examples use.
$PY -m pip install -q --disable-pip-version-check -r requirements.txt

echo "[setup] building and installing postsvd (CUDA: ${POSTSVD_ENABLE_CUDA:-OFF})"
$PY -m pip install -q --disable-pip-version-check --no-build-isolation .
$PY -c "import postsvd; print('[setup] postsvd', postsvd.__version__, '|', postsvd.build_info())"
