"""Loads what postsvd._core links before it is imported.

The GPU wheel (``postsvd-cu13``) does not carry cuBLAS, cuSOLVER or the CUDA runtime: they come
from NVIDIA's PyPI wheels (nvidia-cublas, nvidia-cusolver, nvidia-cuda-runtime, nvidia-nvjitlink,
nvidia-cusparse), installed under ``site-packages/nvidia/cu13/lib`` (CUDA 13) or
``site-packages/nvidia/<name>/lib`` (older layouts). As torch and faiss-gpu do, each library is
loaded here with RTLD_GLOBAL, so the dynamic loader finds it by soname when _core needs it. A
library the process has already loaded (torch imported first) is not loaded a second time; one
found nowhere is left to the system's search path (a CUDA toolkit on LD_LIBRARY_PATH).

A CPU build (and a source tree without ``_build_config.py``) loads nothing here: its OpenBLAS
is found through _core's RPATH.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import Dict, List, Optional, Sequence

#: Sonames in load order (a library before those that need it): nvJitLink before cuSPARSE and
#: cuSOLVER, cuBLASLt before cuBLAS (as torch does, so cuBLAS never picks another cuBLASLt).
#: Each with the folder of its pre-13 wheel (nvidia/<folder>/lib).
CUDA_LIBRARIES = (
    ("libnvJitLink.so.*[0-9]", "nvjitlink"),
    ("libcudart.so.*[0-9]", "cuda_runtime"),
    ("libcublasLt.so.*[0-9]", "cublas"),
    ("libcublas.so.*[0-9]", "cublas"),
    ("libcusparse.so.*[0-9]", "cusparse"),
    ("libcusolver.so.*[0-9]", "cusolver"),
)

_loaded: Dict[str, str] = {}


def build_config():
    """The generated ``postsvd._build_config`` module, or None in a source tree."""
    try:
        from . import _build_config
    except ImportError:
        return None
    return _build_config


def _mapped_libraries() -> List[str]:
    """The paths of the files the process has mapped (/proc/self/maps), read once per preload."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return [line.rstrip("\n").split(maxsplit=5)[-1] for line in maps]
    except OSError:
        return []


def _already_loaded(pattern: str, mapped: Sequence[str]) -> Optional[str]:
    """The path of a library of this soname pattern among the `mapped` paths, if any."""
    prefix = pattern.split("*", 1)[0]
    for path in mapped:
        if os.path.basename(path).startswith(prefix):
            return path
    return None


def find_cuda_library(pattern: str, folder: str, cuda_major: str,
                      search_path: Optional[Sequence[str]] = None) -> Optional[str]:
    """The first ``nvidia/cu<major>/lib/<pattern>`` or ``nvidia/<folder>/lib/<pattern>`` on sys.path."""
    for entry in (sys.path if search_path is None else search_path):
        for sub in (f"cu{cuda_major}", folder):
            found = sorted(glob.glob(os.path.join(entry, "nvidia", sub, "lib", pattern)))
            if found:
                return found[0]
    return None


def preload_cuda_libraries(cuda_version: str) -> List[str]:
    """Loads the CUDA libraries of the toolkit major ``cuda_version`` ("13.0") from NVIDIA's
    wheels with RTLD_GLOBAL; returns the paths it loaded or found loaded."""
    major = cuda_version.split(".", 1)[0]
    paths = []
    # Read once: the libraries are loaded in dependency order, so none of ours maps another one later in the list.
    mapped = _mapped_libraries()
    for pattern, folder in CUDA_LIBRARIES:
        path = _already_loaded(pattern, mapped) or find_cuda_library(pattern, folder, major)
        if path is None:
            continue
        if pattern not in _loaded:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            _loaded[pattern] = path
        paths.append(path)
    return paths


def load_dependencies() -> None:
    """Called by postsvd/__init__.py before ``from . import _core``."""
    config = build_config()
    if config is not None and config.CUDA:
        preload_cuda_libraries(config.CUDA_VERSION)


def cuda_install_hint() -> str:
    """What to install when a CUDA build's _core cannot find its libraries."""
    config = build_config()
    if config is None or not config.CUDA:
        return ""
    major = config.CUDA_VERSION.split(".", 1)[0]
    return (f" This is the GPU build (CUDA {config.CUDA_VERSION}): it needs NVIDIA's CUDA {major} libraries from "
            f"PyPI, which `pip install postsvd-cu{major}` installs (nvidia-cublas, nvidia-cusolver, "
            "nvidia-cuda-runtime, nvidia-nvjitlink), or a CUDA toolkit on LD_LIBRARY_PATH.")
