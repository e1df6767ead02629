#!/usr/bin/env bash
# Builds a wheel from this checkout (scripts/build_wheel.py), installs it into a fresh venv and
# runs pytest against the installed package, never the source tree:
#   bash scripts/wheel_check.sh cpu  [PYTEST ARGS]   # self-contained CPU wheel: ldd shows the bundled
#                                                     # OpenBLAS and no system BLAS
#   bash scripts/wheel_check.sh cu13 [PYTEST ARGS]   # GPU wheel: imports without a GPU or driver, its
#                                                     # CUDA libraries come from NVIDIA's PyPI wheels
# The venv sees the site-packages of the Python running this script (numpy, torch, NVIDIA's wheels are
# not downloaded again) but its own postsvd comes first. pytest runs from a scratch folder with this repository's
# pyproject.toml (testpaths, pythonpath=examples); pass test paths as absolute paths.
# CUDA_ARCHS narrows the GPU wheel's architectures for a quick local check; WHEEL=path tests a
# wheel built before instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VARIANT=${1:?usage: wheel_check.sh cpu|cu13 [pytest args]}
shift
PY=${PYTHON:-python3}

if [ -n "${WHEEL:-}" ]; then  # a wheel built before: only install and test it
  wheel=$(realpath "$WHEEL")
else
  dist=$ROOT/build/wheel/dist-$VARIANT
  rm -rf "$dist"
  archs=()
  [ -n "${CUDA_ARCHS:-}" ] && archs=(--cuda-archs "$CUDA_ARCHS")
  "$PY" scripts/build_wheel.py "$VARIANT" --out "$dist" "${archs[@]}"
  wheel=$(ls "$dist"/*.whl)
fi

venv=$ROOT/build/wheel/venv-$VARIANT
rm -rf "$venv"
"$PY" -m venv "$venv"
# The packages of the Python that runs this script (the system's, or a venv's such as .venv, whose
# site-packages --system-site-packages would not reach), after the venv's own (its .pth files too).
"$PY" -c 'import site; print("".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))' \
  > "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/_postsvd_parent_site.pth"
# --force-reinstall: a postsvd of the same version in the system's site-packages must not stand in for it
"$venv/bin/python" -m pip install -q --no-deps --force-reinstall --disable-pip-version-check "$wheel"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"
export PATH="$venv/bin:$PATH"

echo "== $VARIANT wheel $(basename "$wheel") in a fresh venv"
"$venv/bin/python" - "$venv" "$ROOT" "$VARIANT" <<'EOF'
import importlib.metadata, os, sys
from packaging.requirements import Requirement
venv, root, variant = os.path.realpath(sys.argv[1]), os.path.realpath(sys.argv[2]), sys.argv[3]
import postsvd
where = os.path.realpath(postsvd.__file__)
assert where.startswith(venv + os.sep), f"postsvd imported from {where}, not from the venv {venv}"
assert not where.startswith(os.path.join(root, "python") + os.sep), where
# The wheel's requirements (no extras) are all met here: the GPU wheel's CUDA pins included.
name = "postsvd-cu13" if variant == "cu13" else "postsvd"
unmet = []
for text in importlib.metadata.requires(name) or []:
    requirement = Requirement(text)
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        unmet.append(f"{requirement} (not installed)")
        continue
    if not requirement.specifier.contains(version, prereleases=True):
        unmet.append(f"{requirement} (found {version})")
assert not unmet, f"{name}: unmet requirements {unmet}"
print("postsvd from", where)
print(postsvd.build_info())
if variant == "cu13":
    assert postsvd.built_with_cuda()
    loaded = postsvd._preload._loaded
    print("preloaded:", loaded)
    for library in ("libcudart", "libcublas.", "libcusolver"):
        paths = [p for pattern, p in loaded.items() if pattern.startswith(library)]
        assert paths and os.sep + "nvidia" + os.sep in paths[0], f"{library}: not preloaded from NVIDIA's wheels {loaded}"
    if not postsvd.has_cuda():
        assert "CUDA: " in postsvd.build_info()
        print("no GPU here: the CPU path runs")
EOF

if [ "$VARIANT" = cpu ]; then
  core=$("$venv/bin/python" -c "import postsvd._core as c; print(c.__file__)")
  echo "== ldd $(basename "$core")"
  ldd "$core" | tee "$scratch/ldd.txt"
  grep -q "libscipy_openblas.so => $(dirname "$core")/" "$scratch/ldd.txt" ||
    { echo "postsvd._core does not load the OpenBLAS bundled in the wheel"; exit 1; }
  if grep -E "=> /(usr/)?lib[^ ]*/lib(open)?blas|=> /(usr/)?lib[^ ]*/liblapack" "$scratch/ldd.txt"; then
    echo "postsvd._core needs a system BLAS/LAPACK"; exit 1
  fi
fi

if [ $# -gt 0 ]; then
  echo "== pytest against the installed $VARIANT wheel (from $scratch)"
  "$venv/bin/python" -m pytest -c "$ROOT/pyproject.toml" --rootdir "$ROOT" -p no:cacheprovider "$@"
fi
