"""Wall time of one Qwen2.5-1.5B-shaped layer compared locally and on local Ray clusters of 1 and 2 workers.

    python benchmarks/bench_ray.py [--repeats 2] [--dtype float32] [--out FILE]

Writes a bf16 base (Gaussian weights) and post (base + 1 % noise) with one layer of Qwen2.5-1.5B's shapes (hidden 1536, intermediate
8960, 12 heads, 2 KV heads) and times postsvd.compare on it: in this process (all cores), then
with executor='ray' on a local cluster started with num_cpus=1 and then num_cpus=2 (one CPU and
one LAPACK thread per task). Each Ray timing follows a warm-up run on the same cluster, so worker
start-up and imports are not counted; cluster start-up is reported apart. Every run's table is
checked against the local one. Prints (and with --out writes) a Markdown block for RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

import pandas as pd

import postsvd
from postsvd import synthetic

QWEN_15B_LAYER = dict(model_type="qwen2", layers=1, hidden=1536, intermediate=8960, heads=12, kv_heads=2,
                      vocab=256)


def write_pair(root: str):
    """base: Gaussian weights of Qwen2.5-1.5B's shapes (one layer); post = base + 1 % noise. The SVD's time does
    not depend on the spectrum much, and these are written in seconds even on a loaded 2-core machine."""
    import types

    import numpy as np

    rng = np.random.default_rng(0)
    sizes = {k: v for k, v in QWEN_15B_LAYER.items() if k != "model_type"}
    shapes = synthetic._projection_shapes(sizes["hidden"], sizes["intermediate"], sizes["heads"], sizes["kv_heads"])
    hidden, vocab = sizes["hidden"], sizes["vocab"]
    base = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)) * 0.02,
            "model.norm.weight": np.ones(hidden), "lm_head.weight": rng.standard_normal((vocab, hidden)) * 0.02,
            "model.layers.0.input_layernorm.weight": np.ones(hidden),
            "model.layers.0.post_attention_layernorm.weight": np.ones(hidden)}
    for kind, (out_features, in_features) in shapes.items():
        base[synthetic._tensor_name(0, kind)] = rng.standard_normal((out_features, in_features)) * 0.02
        if kind in ("q", "k", "v"):  # qwen2's q/k/v biases
            base[synthetic._tensor_name(0, kind).replace(".weight", ".bias")] = np.zeros(out_features)
    post = {name: t + 0.01 * np.std(t) * rng.standard_normal(t.shape) if t.ndim == 2 else t
            for name, t in base.items()}
    config = synthetic._config(QWEN_15B_LAYER["model_type"], 1, hidden, sizes["intermediate"], sizes["heads"],
                               sizes["kv_heads"], vocab, "bfloat16")
    folders = types.SimpleNamespace(base=os.path.join(root, "base"), post=os.path.join(root, "post"))
    synthetic._save(base, folders.base, config, "bfloat16", 1)
    synthetic._save(post, folders.post, config, "bfloat16", 1)
    return folders


def timed(function, repeats):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import ray

    root = tempfile.mkdtemp(prefix="postsvd-bench-ray-")
    pair = write_pair(root)
    options = dict(dtype=args.dtype, progress=False)
    load = os.getloadavg()
    local_s, local = timed(lambda: postsvd.compare(pair.base, pair.post, **options), args.repeats)
    rows = [("local (this process, all cores)", local_s, None, local_s)]
    for workers in (1, 2):
        started = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
        postsvd.compare(pair.base, pair.post, kinds="k", executor="ray", **options)  # warm-up: workers, imports
        startup = time.perf_counter() - started
        seconds, remote = timed(lambda: postsvd.compare(pair.base, pair.post, executor="ray", **options),
                                args.repeats)
        pd.testing.assert_frame_equal(local.table, remote.table, check_exact=args.dtype == "float64",
                                      rtol=1e-4)
        rows.append((f"Ray, local cluster of {workers} worker{'s' if workers > 1 else ''} (num_cpus={workers})",
                     seconds, startup, local_s))
        ray.shutdown()
    units = len(postsvd.distributed.plan_units([list(range(7))], [
        {"in_features": r["rows"], "out_features": r["cols"]} for r in local.records]))
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: 2-core development box ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Linux {platform.release()}); load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; shared "
        "with other sessions' builds, so the absolute times vary",
        f"- postsvd {postsvd.__version__}, ray {ray.__version__}, python {platform.python_version()}; "
        f"{postsvd.build_info().splitlines()[0] if postsvd.build_info() else ''}",
        f"- input: one Qwen2.5-1.5B-shaped layer (7 matrix pairs, bf16, Gaussian base, post = base + 1 % noise), {args.dtype}; "
        f"{units} Ray units (UNIT_ELEMENTS = {postsvd.distributed.UNIT_ELEMENTS}); median of {args.repeats} runs",
        "",
        "| run | wall s | local / run | cluster start + warm-up s |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds, startup, reference in rows:
        lines.append(f"| {name} | {seconds:.2f} | {reference / seconds:.2f} | "
                     f"{'' if startup is None else f'{startup:.1f}'} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
