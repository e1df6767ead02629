#!/usr/bin/env python3
"""Warm-started vs cold decomposition of post matrices on the CPU (issue 15, item 2).

In one run (ratios are taken within it; the machine may be shared): for each
post matrix, the cold SVD (the backend's ?gesdd) against the warm start from
the base's factors (block Jacobi on V_b^T W^T W V_b, cpu/warm_svd.h): time,
Jacobi sweeps, the initial off-diagonal ratio, whether it fell back, and the
largest relative sigma error against numpy's float64 SVD (sigma >= 1e-3 sigma_max).

  - the bundled family (examples/models): instruct, reasoning, base_alt vs base;
  - synthetic pairs (postsvd.synthetic) across rotation angles (NF as measured);
  - Qwen2.5-1.5B shapes (hidden 1536, intermediate 8960, 12 heads, 2 kv heads):
    one LLM-like matrix per shape and a post rotated by a small angle;
  - a whole compare of the family's instruct model, warm_start 'off' vs 'always'.

    PYTHONPATH=python python benchmarks/bench_warm.py [--quick] > warm.md
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import postsvd
from postsvd import _core
from postsvd.synthetic import make_pair, random_rotation

ROOT = Path(__file__).resolve().parents[1]
FAMILY = ROOT / "examples" / "models"
QWEN_SHAPES = [("q/o", 1536, 1536), ("k/v", 1536, 256), ("gate/up", 1536, 8960), ("down", 8960, 1536)]


def sigma_error(sigma: np.ndarray, matrix: np.ndarray) -> float:
    """max |s - s_ref| / s_ref over s_ref >= 1e-3 s_ref[0], s_ref from numpy's float64 SVD."""
    reference = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    keep = reference >= 1e-3 * reference[0]
    return float(np.max(np.abs(sigma[keep] - reference[keep]) / reference[keep]))


def time_pair(backend, base: np.ndarray, post: np.ndarray, precision: str = "float32"):
    """(cold s, warm s, report, sigma error of the warm result) for one post matrix."""
    u, s, v = backend.svd(base, precision)
    started = time.perf_counter()
    backend.svd(post, precision)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    _, sigma, _, report = backend.svd_warm(post, u, s, v, precision)
    warm = time.perf_counter() - started
    return cold, warm, report, sigma_error(sigma, post)


def family_matrices(base_folder: Path, post_folder: Path):
    base_cp, post_cp = _core.Checkpoint(str(base_folder)), _core.Checkpoint(str(post_folder))
    for source in _core.detect_architecture(base_cp)["matrices"]:
        yield (source["kind"], _core.read_matrix(base_cp, source, "float32"),
               _core.read_matrix(post_cp, source, "float32"))


def summarize(label: str, rows) -> str:
    cold = sum(r[0] for r in rows)
    warm = sum(r[1] for r in rows)
    sweeps = [r[2]["sweeps"] for r in rows if not r[2]["fell_back"]]
    fell = sum(1 for r in rows if r[2]["fell_back"])
    off = [r[2]["initial_off"] for r in rows]
    sweep_text = f"{statistics.median(sweeps):g} / {max(sweeps)}" if sweeps else "-"
    return (f"| {label} | {len(rows)} | {cold:.3f} | {warm:.3f} | {cold / warm:.2f} | {sweep_text} | {fell} | "
            f"{statistics.median(off):.3g} ({min(off):.3g}-{max(off):.3g}) | {max(r[3] for r in rows):.1e} |")


HEADER = ("| pairs | matrices | cold s | warm s | cold / warm | sweeps median / max | fell back | "
          "initial off median (range) | sigma max rel err |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the two largest Qwen shapes")
    args = parser.parse_args()
    backend = _core.Backend("cpu")
    load_start = os.getloadavg()
    print("## Warm start (issue 15): CPU, post decomposition from the base's factors\n")
    print(f"- date: {_dt.datetime.utcnow():%Y-%m-%d %H:%M} UTC; harness `benchmarks/bench_warm.py`")
    print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    print(f"- backend: {backend.name}; float32 mode; the cold SVD is ?gesdd, the warm one the block Jacobi")
    print("- time: one call each, cold then warm, same process and load (ratios within this run)\n")

    print("### Bundled family (every matrix of the model)\n")
    print(HEADER)
    for post in ("instruct", "reasoning", "base_alt"):
        rows = [time_pair(backend, b, p) for _, b, p in family_matrices(FAMILY / "base", FAMILY / post)]
        print(summarize(f"base vs {post}", rows))

    print("\n### Synthetic pairs (postsvd.synthetic, llama, hidden 256, intermediate 688, 2 layers)\n")
    print(HEADER.replace("| pairs |", "| rotation angle (NF measured) |"))
    with tempfile.TemporaryDirectory() as folder:
        for angle, related in ((0.01, True), (0.05, True), (0.2, True), (0.5, True), (0.0, False)):
            pair = make_pair(Path(folder) / f"b{angle}{related}", Path(folder) / f"p{angle}{related}", layers=2,
                             hidden=256, intermediate=688, rotation_angle=angle, related=related, dtype="float32")
            nf = postsvd.compare(pair.base, pair.post, progress=False).table["nf"].median()
            rows = [time_pair(backend, b, p) for _, b, p in family_matrices(Path(pair.base), Path(pair.post))]
            label = f"{angle:g} (NF {nf:.2g})" if related else f"unrelated (NF {nf:.2g})"
            print(summarize(label, rows))

    print("\n### Qwen2.5-1.5B shapes (one matrix each; post = U Q1 (0.9 S) (V Q2)^T, angle 0.05)\n")
    print(HEADER.replace("| pairs |", "| kind [in, out] |"))
    rng = np.random.default_rng(0)
    for kind, rows_, cols in QWEN_SHAPES[:2] if args.quick else QWEN_SHAPES:
        k = min(rows_, cols)
        u0, _ = np.linalg.qr(rng.standard_normal((rows_, k)))
        v0, _ = np.linalg.qr(rng.standard_normal((cols, k)))
        spectrum = 20.0 * (1.0 + np.arange(k)) ** -0.6 + 0.5
        base = np.ascontiguousarray(((u0 * spectrum) @ v0.T).astype(np.float32))
        post = np.ascontiguousarray((((u0 @ random_rotation(k, 0.05, rng)) * (0.9 * spectrum))
                                     @ (v0 @ random_rotation(k, 0.05, rng)).T).astype(np.float32))
        print(summarize(f"{kind} [{rows_}, {cols}]", [time_pair(backend, base, post)]))

    print("\n### A whole compare (bundled base vs instruct, every matrix)\n")
    print("| warm_start | seconds | warm_sweeps of the posts (median / max; -1 = cold) |\n|---|---:|---:|")
    for mode in ("off", "always", "auto"):
        started = time.perf_counter()
        result = postsvd.compare(FAMILY / "base", FAMILY / "instruct", progress=False, warm_start=mode)
        seconds = time.perf_counter() - started
        sweeps = result.table["warm_sweeps"]
        print(f"| {mode} | {seconds:.2f} | {sweeps.median():g} / {sweeps.max()} |")
    load_end = os.getloadavg()
    print(f"\nLoad average at the end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
