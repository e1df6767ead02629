"""Cost of a whole-model construction against a comparison of the same pair.

Writes a synthetic llama pair (postsvd.synthetic.make_pair), then times:
  compare            postsvd.compare(base, post)
  construct 11       one decomposition per matrix and model, + Eq. 13, + writing
  construct 11 -rot  the same without the Eq. 13 summary
  construct 9        Table 4 alpha' (a singular-values-only pass first) + construction
  cache fill / hit   construct 10 with cache=DIR, then construct 11 from the cache
  compare + cache    compare(cache=DIR2) cold, again warm, then construct 11 --no-rotations
                     from the comparison's decompositions, and a second post model of the
                     same base compared through the same cache (the base is not decomposed again)

Usage:
  python benchmarks/bench_construct.py [--layers 4] [--hidden 512] [--intermediate 1376]
         [--dtype bfloat16] [--device cpu] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import postsvd
from postsvd.constructions import construct
from postsvd.synthetic import make_pair


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--intermediate", type=int, default=1376)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16", help="storage dtype of the synthetic pair")
    parser.add_argument("--work-dtype", default="float32", help="working precision")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="postsvd-bench-construct-")
    try:
        base, post = os.path.join(root, "base"), os.path.join(root, "post")
        make_pair(base, post, layers=args.layers, hidden=args.hidden, intermediate=args.intermediate,
                  heads=args.heads, kv_heads=args.kv_heads, dtype=args.dtype, seed=0, vocab=1024)
        common = dict(device=args.device, dtype=args.work_dtype, progress=False)
        rows = []

        def record(name, seconds, result=None):
            row = {"case": name, "seconds": round(seconds, 3)}
            if isinstance(result, postsvd.Comparison):
                row["computed"] = result.decompositions["computed"]
                row["loaded"] = result.decompositions["loaded"]
            elif result is not None:
                row.update({key: round(value, 3) for key, value in result.timings.items()})
                row["computed"] = result.decompositions_computed
                row["loaded"] = result.decompositions_loaded
            rows.append(row)

        seconds, _ = timed(lambda: postsvd.compare(base, post, device=args.device, dtype=args.work_dtype,
                                                   progress=False))
        record("compare", seconds)
        seconds, result = timed(lambda: construct(11, base, post, os.path.join(root, "c11"), **common))
        record("construct 11", seconds, result)
        seconds, result = timed(lambda: construct(11, base, post, os.path.join(root, "c11n"), rotations=False,
                                                  **common))
        record("construct 11 (no Eq. 13)", seconds, result)
        seconds, result = timed(lambda: construct(9, base, post, os.path.join(root, "c9"), **common))
        record("construct 9 (Table 4 alpha')", seconds, result)
        cache = os.path.join(root, "cache")
        seconds, result = timed(lambda: construct(10, base, post, os.path.join(root, "c10"), cache=cache,
                                                  **common))
        record("construct 10, cache fill", seconds, result)
        seconds, result = timed(lambda: construct(11, base, post, os.path.join(root, "c11c"), cache=cache,
                                                  **common))
        record("construct 11, cache hit", seconds, result)

        shared = os.path.join(root, "shared")
        seconds, result = timed(lambda: postsvd.compare(base, post, cache=shared, **common))
        record("compare, cache fill", seconds, result)
        seconds, result = timed(lambda: postsvd.compare(base, post, cache=shared, **common))
        record("compare, cache hit", seconds, result)
        seconds, result = timed(lambda: construct(11, base, post, os.path.join(root, "c11s"), rotations=False,
                                                  cache=shared, **common))
        record("construct 11 -rot after compare", seconds, result)
        second = os.path.join(root, "post2")
        make_pair(os.path.join(root, "base2"), second, layers=args.layers, hidden=args.hidden,
                  intermediate=args.intermediate, heads=args.heads, kv_heads=args.kv_heads, dtype=args.dtype,
                  seed=0, vocab=1024, alpha=1.1, rotation_angle=0.5)
        seconds, result = timed(lambda: postsvd.compare(base, second, cache=shared, **common))
        record("compare 2nd post, same cache", seconds, result)
        cache_bytes = sum(os.path.getsize(os.path.join(shared, f)) for f in os.listdir(shared))

        size = sum(os.path.getsize(os.path.join(post, f)) for f in os.listdir(post) if f.endswith(".safetensors"))
        print(f"postsvd {postsvd.__version__}  {platform.node()}  {platform.processor() or platform.machine()}  "
              f"{os.cpu_count()} cores  {postsvd.build_info().splitlines()[0] if postsvd.build_info() else ''}")
        print(f"pair: llama, {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
              f"{args.dtype} ({size / 2**20:.1f} MiB per model), working precision {args.work_dtype}, "
              f"device {args.device}; factor cache of one pair: {cache_bytes / 2**20:.1f} MiB")
        compare_seconds = rows[0]["seconds"]
        header = f"{'case':32s} {'s':>8s} {'x compare':>9s} {'decomp':>8s} {'constr':>8s} {'write':>8s} " \
                 f"{'svd new':>7s} {'cached':>6s}"
        print(header)
        for row in rows:
            print(f"{row['case']:32s} {row['seconds']:8.3f} {row['seconds'] / compare_seconds:9.2f} "
                  f"{row.get('seconds_decompose', float('nan')):8.3f} {row.get('seconds_construct', float('nan')):8.3f} "
                  f"{row.get('seconds_write', float('nan')):8.3f} {row.get('computed', ''):>7} {row.get('loaded', ''):>6}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "rows": rows, "cache_bytes_per_pair": cache_bytes}, f, indent=2)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
