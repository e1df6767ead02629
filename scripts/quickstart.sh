#!/usr/bin/env bash
# Quick start: install postsvd and everything it needs, then compare the bundled
# base model with its instruct and reasoning post-trained versions and with an
# independently pretrained model (base_alt), writing tables and plots to
# ${1:-postsvd-out}/ and printing a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-postsvd-out}
. scripts/python_env.sh  # a venv .venv where the system's Python refuses pip installs (PEP 668)

bash scripts/setup.sh

M=examples/models
echo
echo "== postsvd compare: base vs instruct, reasoning (post-trained from base) and base_alt (pretrained apart)"
postsvd compare "$M/base" "$M/instruct" "$M/reasoning" "$M/base_alt" --out "$OUT"
echo
echo "Tables, plots and summaries are in $OUT/ (one folder per model: table.csv, kinds.csv, *.png, summary.txt)."
if [ "${VIRTUAL_ENV:-}" = "$PWD/.venv" ]; then
  echo "postsvd is installed in the virtual environment .venv: '. .venv/bin/activate' before using it."
fi
