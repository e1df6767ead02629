"""The installed module's linkage and what build_info says about it.

Against an installed wheel (CI installs the repaired wheel into a fresh venv and runs the suite
there), postsvd._core must load the OpenBLAS the wheel carries and nothing from the system's BLAS;
from a source build (_core copied into python/postsvd, no generated _build_config.py) the linkage
checks skip. numpy's own OpenBLAS (scipy-openblas64, 64-bit integers) and ours live in one process.
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import postsvd
from postsvd import _core, _preload

PACKAGE_DIR = os.path.dirname(os.path.abspath(postsvd.__file__))
CONFIG = _preload.build_config()
installed_build = pytest.mark.skipif(
    CONFIG is None, reason="a source build (no postsvd/_build_config.py): the linkage of an installed wheel "
                           "is checked where CI installs it")
SYSTEM_BLAS = re.compile(r"=>\s*/(usr/)?lib\S*/lib(open)?blas|=>\s*/(usr/)?lib\S*/liblapack")


def ldd(path):
    if shutil.which("ldd") is None:
        pytest.skip("no ldd on this machine")
    done = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@installed_build
def test_core_loads_the_bundled_openblas_and_no_system_blas():
    assert CONFIG.BUNDLED_BLAS, f"this wheel bundles no BLAS ({CONFIG.BLAS}); the wheel's build bundles scipy-openblas32"
    listing = ldd(_core.__file__)
    bundled = [line for line in listing.splitlines() if CONFIG.BUNDLED_BLAS.split(".so")[0] in line]
    assert bundled, listing
    resolved = bundled[0].split("=>", 1)[1].split("(")[0].strip()
    assert os.path.dirname(os.path.realpath(resolved)) == os.path.realpath(PACKAGE_DIR), listing
    assert not SYSTEM_BLAS.search(listing), listing


@installed_build
def test_build_info_names_the_bundled_blas():
    info = postsvd.build_info()
    assert CONFIG.BLAS.startswith("scipy-openblas32 ") and CONFIG.BLAS in info, info
    loaded_from = re.search(r"loaded from (\S+?)\)", info)
    assert loaded_from, info
    assert os.path.realpath(loaded_from.group(1)) == os.path.realpath(os.path.join(PACKAGE_DIR, CONFIG.BUNDLED_BLAS))


def test_build_info_names_the_library_loaded():
    """Any build: the BLAS part names the library file that ?gesdd came from, and that file exists."""
    info = postsvd.build_info()
    loaded_from = re.search(r"BLAS/LAPACK: .*\(.*loaded from (\S+?)\)", info)
    assert loaded_from, info
    assert os.path.isfile(loaded_from.group(1)), info


@pytest.mark.parametrize("first", ["numpy", "scipy.linalg", "postsvd"])
def test_numpy_and_postsvd_svd_in_one_process(first):
    """numpy (and scipy, a core dependency) and postsvd in one process, whichever is imported first:
    the SVDs run and agree. Each calls its own OpenBLAS: numpy's scipy_*64_ symbols; scipy's copy of
    scipy-openblas32 (renamed by auditwheel, loaded locally) and ours export the same scipy_* names,
    and each extension binds to the copy it links."""
    code = (f"import {first}\n"
            "import numpy as np\n"
            "w = np.random.default_rng(0).standard_normal((150, 90))\n"
            "reference = np.linalg.svd(w, compute_uv=False)\n"
            "import postsvd\n"
            "u, s, v = postsvd.svd(w.astype(np.float64))\n"
            "assert np.allclose(s, reference, rtol=1e-10), (s[:3], reference[:3])\n"
            "assert np.allclose(np.linalg.svd(w, compute_uv=False), reference)\n"
            "assert np.allclose((u * s) @ v.T, w, atol=1e-10)\n"
            "import scipy.linalg\n"
            "assert np.allclose(scipy.linalg.svd(w, compute_uv=False), reference)\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_svd_matches_numpy_in_this_process():
    w = np.random.default_rng(3).standard_normal((64, 40)).astype(np.float32)
    _, s, _ = postsvd.svd(w)
    np.testing.assert_allclose(s, np.linalg.svd(w.astype(np.float64), compute_uv=False), rtol=1e-4)


def test_cuda_libraries_are_found_in_both_wheel_layouts(tmp_path):
    new = tmp_path / "new" / "nvidia" / "cu13" / "lib"
    old = tmp_path / "old" / "nvidia" / "cublas" / "lib"
    new.mkdir(parents=True)
    old.mkdir(parents=True)
    (new / "libcublas.so.13").write_bytes(b"")
    (old / "libcublas.so.12").write_bytes(b"")
    path = [str(tmp_path / "empty"), str(tmp_path / "new"), str(tmp_path / "old")]
    assert _preload.find_cuda_library("libcublas.so.*[0-9]", "cublas", "13", path) == str(new / "libcublas.so.13")
    assert _preload.find_cuda_library("libcublas.so.*[0-9]", "cublas", "12", path[:1] + path[2:]) == \
        str(old / "libcublas.so.12")
    assert _preload.find_cuda_library("libcusolver.so.*[0-9]", "cusolver", "13", path) is None


def test_an_already_mapped_library_is_matched_by_its_soname():
    """torch imported first maps cuBLAS and cuBLASLt: each pattern finds its own library, not one whose
    name merely starts alike (libcublasLt for libcublas), and the process's real maps hold this Python."""
    mapped = ["/t/lib/libcublasLt.so.13", "/t/lib/libcublas.so.13", "[heap]", "/t/lib/libcudart.so.13"]
    assert _preload._already_loaded("libcublas.so.*[0-9]", mapped) == "/t/lib/libcublas.so.13"
    assert _preload._already_loaded("libcublasLt.so.*[0-9]", mapped) == "/t/lib/libcublasLt.so.13"
    assert _preload._already_loaded("libcusolver.so.*[0-9]", mapped) is None
    assert any(os.path.basename(path).startswith("libpython3") or "python3" in os.path.basename(path)
               for path in _preload._mapped_libraries())


def test_a_cpu_build_preloads_nothing():
    if postsvd.built_with_cuda():
        pytest.skip("a CUDA build")
    assert _preload.cuda_install_hint() == ""
    assert not _preload._loaded
