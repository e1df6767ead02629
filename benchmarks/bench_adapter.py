"""Comparing a PEFT LoRA adapter against comparing its merged checkpoint (issue 22, item 5).

Writes a synthetic BF16 base (Qwen2.5-1.5B's projection shapes: hidden 1536, ffn 8960, 12 heads, 2 KV
heads; `--layers` decoder layers, a small vocabulary), a LoRA adapter of it as peft saves one
(adapter_config.json + adapter_model.safetensors: rank `--rank` on all seven projections, float32
factors; `--dora` adds DoRA magnitudes) and the merged checkpoint peft's merge_and_unload would give
(W + scaling * B A, DoRA-scaled, rounded to BF16 as the base is stored). Then runs
``python -m postsvd compare BASE POST`` for the adapter and for the merged checkpoint, alternating,
`--repeats` times each, in child processes whose /proc/PID/status is sampled every 0.1 s
(bench_frontier_scale.measure): wall time (the fastest run and the median) and the peak of RssAnon (the anonymous memory postsvd
allocates; the memory-mapped weights are RssFile). Goal: the adapter costs no more than the merged
checkpoint (it forms W + ΔW one matrix at a time, in the conversion every matrix goes through).

    PYTHONPATH=$PWD/python python benchmarks/bench_adapter.py [--layers 2] [--rank 16] [--dora]
        [--repeats 3] [--device cpu] [--dir DIR] [--keep]

Prints a Markdown table and one JSON object (the figures) on the last line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_frontier_scale import measure  # noqa: E402  (the same sampling as the frontier-scale figures)

HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 1536, 8960, 12, 2, 128, 1024
# module -> (out, in) of nn.Linear
PROJECTIONS = {"self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN), "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
               "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN), "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
               "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN)}


def write_models(root: str, layers: int, rank: int, alpha: float, dora: bool) -> dict:
    """base/, adapter/ and merged/ under `root`; returns their folders."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    folders = {name: os.path.join(root, name) for name in ("base", "adapter", "merged")}
    for folder in folders.values():
        os.makedirs(folder, exist_ok=True)
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": HIDDEN,
              "intermediate_size": FFN, "num_hidden_layers": layers, "num_attention_heads": HEADS,
              "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "torch_dtype": "bfloat16",
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
    for name in ("base", "merged"):
        with open(os.path.join(folders[name], "config.json"), "w") as f:
            json.dump(config, f, indent=1)
    scaling = alpha / rank
    base, merged, adapter = {}, {}, {}
    shared = {"model.embed_tokens.weight": 0.02 * torch.randn(VOCAB, HIDDEN), "lm_head.weight": 0.02 * torch.randn(VOCAB, HIDDEN),
              "model.norm.weight": torch.ones(HIDDEN)}
    for i in range(layers):
        shared[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(HIDDEN)
        shared[f"model.layers.{i}.post_attention_layernorm.weight"] = torch.ones(HIDDEN)
        for module, (out, inp) in PROJECTIONS.items():
            key = f"model.layers.{i}.{module}"
            w = (torch.randn(out, inp) / math.sqrt(inp)).to(torch.bfloat16)
            a = torch.randn(rank, inp) / math.sqrt(inp)
            b = 0.02 * torch.randn(out, rank)
            base[key + ".weight"] = w
            merged_w = w.float() + scaling * (b @ a)
            adapter[f"base_model.model.{key}.lora_A.weight"] = a.contiguous()
            adapter[f"base_model.model.{key}.lora_B.weight"] = b.contiguous()
            if dora:
                magnitude = torch.linalg.norm(merged_w, dim=1) * (1 + 0.05 * torch.randn(out))
                adapter[f"base_model.model.{key}.lora_magnitude_vector"] = magnitude.contiguous()
                merged_w = (magnitude / torch.linalg.norm(merged_w, dim=1)).view(-1, 1) * merged_w
            merged[key + ".weight"] = merged_w.to(torch.bfloat16)
    save_file({**{k: v.to(torch.bfloat16) for k, v in shared.items()}, **base},
              os.path.join(folders["base"], "model.safetensors"), metadata={"format": "pt"})
    save_file({**{k: v.to(torch.bfloat16) for k, v in shared.items()}, **merged},
              os.path.join(folders["merged"], "model.safetensors"), metadata={"format": "pt"})
    save_file(adapter, os.path.join(folders["adapter"], "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folders["adapter"], "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_dora": dora, "use_rslora": False,
                   "fan_in_fan_out": False, "target_modules": sorted({m.split(".")[-1] for m in PROJECTIONS}),
                   "base_model_name_or_path": folders["base"], "task_type": "CAUSAL_LM", "bias": "none",
                   "lora_dropout": 0.0, "init_lora_weights": True}, f, indent=1)
    return folders


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--dora", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--dir", default=None, help="where the model folders go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the model folders")
    args = parser.parse_args(argv)
    root = args.dir or tempfile.mkdtemp(prefix="postsvd-adapter-")
    figures = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "load_at_start": [round(x, 2) for x in os.getloadavg()],
               "setup": {"layers": args.layers, "rank": args.rank, "alpha": args.alpha, "dora": args.dora,
                         "device": args.device, "dtype": args.dtype, "matrices": 7 * args.layers}}
    try:
        folders = write_models(root, args.layers, args.rank, args.alpha, args.dora)
        runs = {"adapter": [], "merged": []}
        for repeat in range(args.repeats):
            for name in ("adapter", "merged") if repeat % 2 == 0 else ("merged", "adapter"):
                out = os.path.join(root, f"out-{name}-{repeat}")
                runs[name].append(measure([folders["base"], folders[name], "--out", out, "--no-plots",
                                           "--no-progress", "--device", args.device, "--dtype", args.dtype]))
        for name, measured in runs.items():
            figures[name] = {"wall_s": statistics.median(m["wall_s"] for m in measured),
                             "min_wall_s": min(m["wall_s"] for m in measured),
                             "peak_rss_anon_gib": statistics.median(m["peak_rss_anon_gib"] for m in measured),
                             "all_wall_s": [m["wall_s"] for m in measured]}
        with open(os.path.join(root, "out-adapter-0", "table.json")) as f:
            nf_adapter = [row["nf"] for row in json.load(f)]
        with open(os.path.join(root, "out-merged-0", "table.json")) as f:
            nf_merged = [row["nf"] for row in json.load(f)]
        figures["max_nf_difference"] = max(abs(a - b) for a, b in zip(nf_adapter, nf_merged))
        figures["time_ratio"] = round(figures["adapter"]["wall_s"] / figures["merged"]["wall_s"], 3)
        # On a shared machine another process takes a core now and then (a run's time doubles on 2 cores):
        # the fastest run of each is the cost with the machine to itself.
        figures["min_time_ratio"] = round(figures["adapter"]["min_wall_s"] / figures["merged"]["min_wall_s"], 3)
        figures["peak_rss_anon_ratio"] = round(figures["adapter"]["peak_rss_anon_gib"] /
                                               figures["merged"]["peak_rss_anon_gib"], 3)
        figures["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    a, m = figures["adapter"], figures["merged"]
    print("| post model | wall s (fastest) | wall s (median) | peak RssAnon GiB (median) |\n|---|---:|---:|---:|")
    print(f"| adapter (r {args.rank}{', DoRA' if args.dora else ''}) | {a['min_wall_s']:.1f} | {a['wall_s']:.1f} | "
          f"{a['peak_rss_anon_gib']:.3f} |")
    print(f"| merged checkpoint (BF16) | {m['min_wall_s']:.1f} | {m['wall_s']:.1f} | {m['peak_rss_anon_gib']:.3f} |")
    print(f"| adapter / merged | {figures['min_time_ratio']:.3f} | {figures['time_ratio']:.3f} | "
          f"{figures['peak_rss_anon_ratio']:.3f} |")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
