"""Step-by-step reproduction of the `pytest -m gpu` crash seen on the H100 on
2026-11-22 (a segfault in the CPU Comparator's construction after two CUDA svd
calls). Each step prints a line before and after, so that the last line names
the step that crashed; run it under gdb, compute-sanitizer or glibc's malloc
checks from benchmarks/run_gpu.sh (stage "diagnose").

    python3 benchmarks/diagnose_gpu.py [--torch] [--no-cuda-svd] [--threads N]
"""
import argparse
import faulthandler
import sys
import tempfile
import time
from pathlib import Path

faulthandler.enable(all_threads=True)


def step(name, fn):
    print(f"-> {name}", flush=True)
    started = time.perf_counter()
    value = fn()
    print(f"ok {name} ({time.perf_counter() - started:.2f} s)", flush=True)
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", action="store_true", help="import torch (and pandas, pyarrow) first, as pytest does")
    parser.add_argument("--no-cuda-svd", action="store_true", help="skip the CUDA svd calls before the CPU compare")
    parser.add_argument("--threads", type=int, default=None, help="num_threads of the CPU compare (default: every core)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    if args.torch:
        step("import torch, pandas, pyarrow", lambda: __import__("torch") and __import__("pandas") and __import__("pyarrow"))
    import numpy as np

    postsvd = step("import postsvd", lambda: __import__("postsvd"))
    print(postsvd.build_info(), flush=True)
    from postsvd.synthetic import make_pair

    root = Path(tempfile.mkdtemp(prefix="postsvd-diagnose-"))
    pair = step("make_pair", lambda: make_pair(root / "base", root / "post", alpha=0.9, dtype="float32", seed=1,
                                               model_type="llama", layers=2, hidden=64, intermediate=96, heads=4,
                                               kv_heads=2))
    rng = np.random.default_rng(1234)
    w = rng.standard_normal((96, 64))
    if not args.no_cuda_svd:
        for dtype in ("float32", "float64"):
            step(f"svd cuda {dtype}", lambda: postsvd.svd(w, dtype=dtype, device="cuda"))
    for i in range(args.repeat):
        cpu = step(f"compare cpu #{i}", lambda: postsvd.compare(pair.base, pair.post, progress=False,
                                                                 num_threads=args.threads))
        gpu = step(f"compare cuda #{i}", lambda: postsvd.compare(pair.base, pair.post, device="cuda", progress=False))
        gap = float(np.max(np.abs(gpu.table["nf"].to_numpy() - cpu.table["nf"].to_numpy())))
        print(f"   max |NF gpu - NF cpu| = {gap:.2e}", flush=True)
    print("diagnose: no crash", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
