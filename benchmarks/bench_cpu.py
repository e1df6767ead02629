#!/usr/bin/env python3
"""CPU benchmark: postsvd.svd against numpy.linalg.svd(full_matrices=False).

In one run, on the same synthetic matrices of Qwen2.5-1.5B projection shapes
(paper orientation W = W_hf^T, [in, out]; an LLM-like decaying spectrum, fixed
seed), it times both, checks they agree on sigma, and measures their peak
memory. It prints a markdown table and, with --out, writes it with the date
and the machine.

Every call runs in a fresh process (numpy's and postsvd's OpenBLAS thread pools
never share the two cores; the spin-waiting pool of one would slow the other),
and the repeats alternate numpy and postsvd so both see the same machine load.
The process loads the matrix, makes one tiny warm-up call, resets the kernel's
peak-RSS counter (/proc/self/clear_refs; tracemalloc cannot see C++
allocations), times one SVD and reads VmHWM. Peak = growth of peak RSS over
the resident size before the call, as a multiple of the input matrix's bytes in
the working dtype (the median over the repeats).

    python benchmarks/bench_cpu.py --out benchmarks/cpu-results.md
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Qwen2.5-1.5B: hidden 1536, intermediate 8960, 2 KV heads of 128 (k/v: 256).
# (in, out) = paper orientation; the two 256-wide ones are k/v and their transpose.
QWEN_SHAPES = [
    ("q/o", 1536, 1536),
    ("k/v", 1536, 256),
    ("k/v^T", 256, 1536),
    ("gate/up", 1536, 8960),
    ("down", 8960, 1536),
]
SIGMA_RTOL = {"float32": 1e-4, "float64": 1e-10}


def llm_like_matrix(rows: int, cols: int, seed: int) -> np.ndarray:
    """W = U0 diag(s) V0^T, C order, float64: a power-law head over a flat bulk, like trained weights."""
    rng = np.random.default_rng([seed, rows, cols])
    k = min(rows, cols)
    u0, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    v0, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    j = np.arange(k, dtype=np.float64)
    spectrum = 20.0 * (1.0 + j) ** -0.6 + 0.5
    return np.ascontiguousarray((u0 * spectrum) @ v0.T)


def run_svd(method: str, matrix: np.ndarray):
    if method == "numpy":
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        return u, s, vt.T
    import postsvd

    return postsvd.svd(matrix, dtype=str(matrix.dtype), device="cpu")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(method: str, matrix_path: str, sigma_path: str) -> None:
    """Child process: one timed SVD of the matrix in `matrix_path`; sigma to `sigma_path`; JSON on stdout."""
    matrix = np.load(matrix_path)
    if method == "postsvd":
        import postsvd  # noqa: F401  (loaded before the baseline: the library is not the SVD's cost)
    run_svd(method, np.ones((4, 3), dtype=matrix.dtype))  # start the BLAS threads, touch the code
    reset = True
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        reset = False
    baseline = _status_kib("VmRSS") if reset else _status_kib("VmHWM")
    start = time.perf_counter()
    _, sigma, _ = run_svd(method, matrix)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    np.save(sigma_path, np.asarray(sigma, dtype=np.float64))
    print(json.dumps({"seconds": seconds, "peak_growth_bytes": (peak - baseline) * 1024, "reset": reset}))


def run_child(method: str, matrix_path: str, sigma_path: str, module_path: str | None) -> dict:
    env = dict(os.environ)
    if module_path:
        env["PYTHONPATH"] = module_path + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", method, matrix_path, sigma_path],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{method} on {matrix_path} failed (exit {out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine_description() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        memory = f", {_meminfo_gib():.1f} GiB RAM"
    except (OSError, ValueError):
        pass
    return f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}"


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _meminfo_gib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    raise ValueError("no MemTotal")


def numpy_blas() -> str:
    try:
        config = np.show_config(mode="dicts")
        lapack = config["Build Dependencies"]["lapack"]
        return f"{lapack.get('name', '?')} {lapack.get('version', '?')}"
    except Exception:  # older numpy: no mode argument
        return "unknown"


def max_relative_sigma_difference(s_ref: np.ndarray, s: np.ndarray) -> float:
    s_ref = np.asarray(s_ref, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(s, dtype=np.float64) - s_ref) / s_ref))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the markdown report (date, machine, tables) here")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per method and shape (median; default 3)")
    parser.add_argument("--dtypes", default="float32,float64", help="comma-separated: float32,float64")
    parser.add_argument("--shapes", default="all",
                        help="'all' or comma-separated ROWSxCOLS in paper orientation, e.g. 1536x1536,8960x1536")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--module-path", help="prepend to sys.path to import postsvd from a build tree")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "MATRIX", "SIGMA"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.module_path:
        sys.path.insert(0, args.module_path)
    if args.child:
        child(*args.child)
        return 0

    import postsvd

    if args.shapes == "all":
        shapes = QWEN_SHAPES
    else:
        shapes = []
        for item in args.shapes.split(","):
            rows, cols = (int(x) for x in item.lower().split("x"))
            shapes.append((f"{rows}x{cols}", rows, cols))
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for dtype in dtypes:
        if dtype not in SIGMA_RTOL:
            parser.error(f"--dtypes: expected float32 and/or float64, got {dtype!r}")
    if args.repeats < 1:
        parser.error(f"--repeats: expected >= 1, got {args.repeats}")

    started = _dt.datetime.now().astimezone()
    header = [
        f"# postsvd CPU benchmark: postsvd.svd vs numpy.linalg.svd(full_matrices=False)",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {machine_description()}; load average at start {_load_average()}",
        f"- numpy {np.__version__} ({numpy_blas()}); python {platform.python_version()}",
        f"- postsvd: {postsvd.build_info()}",
        f"- matrices: Qwen2.5-1.5B projection shapes in paper orientation [in, out], synthetic "
        f"W = U0 diag(s) V0^T with s_j = 20 (1 + j)^-0.6 + 0.5, seed {args.seed}; C-ordered input",
        f"- time: median of {args.repeats} repeats, each call in a fresh process, numpy and postsvd alternating; "
        f"ratio = numpy / postsvd (> 1: postsvd faster)",
        "- peak: growth of peak RSS during the call over the resident size before it, as a multiple of the "
        "input matrix (its bytes in the working dtype); median over the repeats",
        "- sigma check: max_j |s_postsvd - s_numpy| / s_numpy, must be <= "
        + ", ".join(f"{SIGMA_RTOL[d]:g} ({d})" for d in dtypes),
        "",
    ]
    print("\n".join(header), flush=True)

    tables = []
    failures = []
    notes = []
    with tempfile.TemporaryDirectory(prefix="postsvd-bench-") as tmp:
        for dtype in dtypes:
            rows_out = [
                f"### {dtype}",
                "",
                "| kind | shape [in, out] | numpy s | postsvd s | numpy / postsvd | numpy peak (x W) "
                "| postsvd peak (x W) | sigma max rel diff |",
                "|---|---|---:|---:|---:|---:|---:|---:|",
            ]
            print("\n".join(rows_out), flush=True)
            for label, rows, cols in shapes:
                matrix = llm_like_matrix(rows, cols, args.seed).astype(dtype)
                matrix_path = os.path.join(tmp, "matrix.npy")
                np.save(matrix_path, matrix)
                runs = {"numpy": [], "postsvd": []}
                sigma = {}
                for _ in range(args.repeats):
                    for method in ("numpy", "postsvd"):
                        sigma_path = os.path.join(tmp, f"sigma-{method}.npy")
                        runs[method].append(run_child(method, matrix_path, sigma_path, args.module_path))
                        sigma[method] = np.load(sigma_path)
                diff = max_relative_sigma_difference(sigma["numpy"], sigma["postsvd"])
                if not diff <= SIGMA_RTOL[dtype]:
                    failures.append(f"{dtype} {rows}x{cols}: sigma differs by {diff:.2e} > {SIGMA_RTOL[dtype]:g}")
                t_np = statistics.median(r["seconds"] for r in runs["numpy"])
                t_ps = statistics.median(r["seconds"] for r in runs["postsvd"])
                peaks = {m: statistics.median(r["peak_growth_bytes"] for r in runs[m]) / matrix.nbytes
                         for m in runs}
                if not all(r["reset"] for m in runs for r in runs[m]):
                    failures_note = "peak counter could not be reset; peaks include the process's earlier peak"
                    if failures_note not in notes:
                        notes.append(failures_note)
                row = (f"| {label} | {rows} x {cols} | {t_np:.3f} | {t_ps:.3f} | {t_np / t_ps:.2f} | {peaks['numpy']:.1f} "
                       f"| {peaks['postsvd']:.1f} | {diff:.1e} |")
                rows_out.append(row)
                print(row, flush=True)
            rows_out.append("")
            tables.append("\n".join(rows_out))

    report = "\n".join(header) + "\n" + "\n".join(tables)
    report += f"\nload average at end {_load_average()} (other work on the machine skews the times)\n"
    if notes:
        report += "\n" + "\n".join(f"- note: {n}" for n in notes) + "\n"
    if failures:
        report += "\n**sigma check FAILED:**\n" + "\n".join(f"- {f}" for f in failures) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
        print(f"\nwrote {args.out}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
