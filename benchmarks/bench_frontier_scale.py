"""Memory and time of a comparison at frontier scale (issue 10, item 4).

Two synthetic pairs, written with the safetensors library in shards with an index:

- ``llama70b``: Llama-3.1-70B-shaped (hidden 8192, ffn 28672, 64 heads, 8 KV heads), 2 layers on
  disk, BF16, a small vocabulary; compared with ``--layers 0`` (7 matrix pairs).
- ``deepseek``: one DeepSeek-V3-shaped MoE layer (256 routed experts of 7168 x 2048, the shared
  expert, MLA attention), every projection FP8 block-scaled 128 x 128 with float32 ``weight_scale_inv``
  (the release's layout), about 11 GB per model (the post's FP8 weight shards are hard links of the
  base's; its scales differ, see write_deepseek); compared with ``--experts`` (default ``0-7,shared``):
  the whole layer is not compared unless ``--experts all`` is given.

The comparison runs as ``python -m postsvd compare`` in a child process whose /proc/PID/status is
sampled every 0.1 s: the peak of RssAnon (anonymous memory: what postsvd allocates and has
touched, not the memory-mapped weights, which the kernel counts as RssFile and may drop), the peak
of VmData (anonymous memory allocated, touched or not: an upper bound of what can become resident)
and VmHWM (peak resident size including mapped file pages). Times are wall-clock and depend on the machine's load.

    python benchmarks/bench_frontier_scale.py llama70b --dir /scratch/l70 [--keep]
    python benchmarks/bench_frontier_scale.py deepseek --dir /scratch/dsv3 --experts 0-7,shared [--keep]

Prints one JSON object (the figures) on the last line. Without --keep the model folders are removed
afterwards. Set PYTHONPATH to the postsvd tree to measure (e.g. PYTHONPATH=$PWD/python).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

E4M3_MAX = 448.0


# ---------------------------------------------------------------- writing the models

def _save_shards(folder, shards, config):
    """shards: list of (file name, {name: tensor}); writes them, the index and config.json."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    weight_map = {}
    for file, tensors in shards:
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in tensors})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)


class _PairWriter:
    """Writes base and post shard by shard: post = 1.01 * base + 0.002 * std(base) * noise, per tensor."""

    def __init__(self, root, config, seed=0):
        import torch

        self.torch = torch
        self.root = root
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)
        self.index = {"base": {}, "post": {}}
        for side in ("base", "post"):
            os.makedirs(os.path.join(root, side), exist_ok=True)

    def pair(self, shape, std=0.02):
        torch = self.torch
        base = torch.randn(shape, generator=self.generator) * std
        post = base * 1.01 + torch.randn(shape, generator=self.generator) * (0.002 * std)
        return base, post

    def shard(self, file, build):
        """build(side_tensors: dict for base, dict for post) fills both dicts; writes one shard per model."""
        from safetensors.torch import save_file

        base, post = {}, {}
        build(base, post)
        for side, tensors in (("base", base), ("post", post)):
            save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(self.root, side, file),
                      metadata={"format": "pt"})
            self.index[side].update({k: file for k in tensors})

    def finish(self):
        for side in ("base", "post"):
            with open(os.path.join(self.root, side, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {}, "weight_map": self.index[side]}, f, indent=1)
            with open(os.path.join(self.root, side, "config.json"), "w") as f:
                json.dump(self.config, f, indent=1)


def write_llama70b(root, layers=2, vocab=1024):
    import torch

    hidden, ffn, heads, kv_heads = 8192, 28672, 64, 8
    head_dim = hidden // heads
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "intermediate_size": ffn, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "num_hidden_layers": layers, "vocab_size": vocab, "max_position_embeddings": 131072,
              "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "torch_dtype": "bfloat16", "hidden_act": "silu",
              "tie_word_embeddings": False}
    w = _PairWriter(root, config)
    bf16 = torch.bfloat16

    def embeddings(base, post):
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            b, p = w.pair((vocab, hidden))
            base[name], post[name] = b.to(bf16), p.to(bf16)
        base["model.norm.weight"] = post["model.norm.weight"] = torch.ones(hidden, dtype=bf16)

    w.shard("model-00000-of-%05d.safetensors" % layers, embeddings)
    shapes = {"self_attn.q_proj": (heads * head_dim, hidden), "self_attn.k_proj": (kv_heads * head_dim, hidden),
              "self_attn.v_proj": (kv_heads * head_dim, hidden), "self_attn.o_proj": (hidden, heads * head_dim),
              "mlp.gate_proj": (ffn, hidden), "mlp.up_proj": (ffn, hidden), "mlp.down_proj": (hidden, ffn)}
    for i in range(layers):
        def layer(base, post, i=i):
            for module, shape in shapes.items():
                b, p = w.pair(shape)
                name = f"model.layers.{i}.{module}.weight"
                base[name], post[name] = b.to(bf16), p.to(bf16)
                del b, p
            for norm in ("input_layernorm", "post_attention_layernorm"):
                base[f"model.layers.{i}.{norm}.weight"] = post[f"model.layers.{i}.{norm}.weight"] = torch.ones(
                    hidden, dtype=bf16)

        w.shard("model-%05d-of-%05d.safetensors" % (i + 1, layers), layer)
    w.finish()


def write_deepseek(root, experts=256, experts_per_shard=16, vocab=1024):
    """Base and post share their FP8 expert weights (the post's weight shards are hard links of the
    base's); each model has its own shard of scales, the post's = the base's x (1 + 1 % noise) per
    128 x 128 block, so every post matrix differs from its base by a block-wise scaling. Writing
    11 GB once instead of twice, drawing FP8 codes directly (randn cast to float8_e4m3fn) instead
    of quantizing, and reusing the first 16 experts' codes for the others (each expert keeps scales
    of its own) keep the writing to minutes on a small machine; the comparison's work does not
    depend on the values."""
    import torch

    hidden, inter, heads = 7168, 2048, 128
    q_rank, kv_rank, nope, rope, v_head = 1536, 512, 128, 64, 128
    config = {"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "hidden_size": hidden,
              "intermediate_size": 18432, "moe_intermediate_size": inter, "num_hidden_layers": 1,
              "num_attention_heads": heads, "num_key_value_heads": heads, "n_routed_experts": experts,
              "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 0, "moe_layer_freq": 1,
              "n_group": 8, "topk_group": 4, "q_lora_rank": q_rank, "kv_lora_rank": kv_rank,
              "qk_nope_head_dim": nope, "qk_rope_head_dim": rope, "v_head_dim": v_head, "vocab_size": vocab,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "torch_dtype": "bfloat16",
              "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                      "weight_block_size": [128, 128]}}
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    bf16 = torch.bfloat16
    index = {"base": {}, "post": {}}
    scales = {"base": {}, "post": {}}
    for side in ("base", "post"):
        os.makedirs(os.path.join(root, side), exist_ok=True)

    def fp8(name, shape, tensors, codes=None):
        # Codes of N(0, 64^2) (within E4M3's range), scale_inv ~ 0.02 / 64 per block.
        if codes is not None:
            tensors[name] = codes.clone()
        else:
            tensors[name] = (torch.randn(shape, generator=generator) * 64).clamp(-E4M3_MAX, E4M3_MAX).to(
                torch.float8_e4m3fn)
        grid = (-(-shape[0] // 128), -(-shape[1] // 128))
        base_scale = (0.02 / 64) * (1 + 0.1 * torch.rand(grid, generator=generator))
        scales["base"][name + "_scale_inv"] = base_scale
        scales["post"][name + "_scale_inv"] = base_scale * (1 + 0.01 * torch.randn(grid, generator=generator))

    def save_shared(file, tensors):
        path = os.path.join(root, "base", file)
        save_file(tensors, path, metadata={"format": "pt"})
        os.link(path, os.path.join(root, "post", file))
        for side in ("base", "post"):
            index[side].update({k: file for k in tensors})

    shards = -(-experts // experts_per_shard)
    total = shards + 3  # expert shards, attention weights, other weights (per model), scales (per model)
    # Attention (MLA) and the shared expert, FP8 as in the release; the router and norms in BF16.
    tensors = {}
    p = "model.layers.0.self_attn."
    fp8(p + "q_a_proj.weight", (q_rank, hidden), tensors)
    fp8(p + "q_b_proj.weight", (heads * (nope + rope), q_rank), tensors)
    fp8(p + "kv_a_proj_with_mqa.weight", (kv_rank + rope, hidden), tensors)
    fp8(p + "kv_b_proj.weight", (heads * (nope + v_head), kv_rank), tensors)
    fp8(p + "o_proj.weight", (hidden, heads * v_head), tensors)
    for proj, shape in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)), ("down_proj", (hidden, inter))):
        fp8(f"model.layers.0.mlp.shared_experts.{proj}.weight", shape, tensors)
    save_shared("model-00001-of-%05d.safetensors" % total, tensors)
    # The first shard's experts are drawn at random; later shards reuse their codes (copies) with
    # scales of their own, so that writing 256 experts costs little more than the disk.
    first = {}
    for s in range(shards):
        tensors = {}
        for e in range(s * experts_per_shard, min(experts, (s + 1) * experts_per_shard)):
            for proj, shape in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)),
                                ("down_proj", (hidden, inter))):
                name = f"model.layers.0.mlp.experts.{e}.{proj}.weight"
                fp8(name, shape, tensors, codes=first.get((e % experts_per_shard, proj)))
                first.setdefault((e % experts_per_shard, proj), tensors[name])
        save_shared("model-%05d-of-%05d.safetensors" % (s + 2, total), tensors)
    for side in ("base", "post"):
        other = {"model.embed_tokens.weight": (torch.randn(vocab, hidden, generator=generator) * 0.02).to(bf16),
                 "lm_head.weight": (torch.randn(vocab, hidden, generator=generator) * 0.02).to(bf16),
                 "model.layers.0.mlp.gate.weight": (torch.randn(experts, hidden, generator=generator) * 0.02).to(bf16),
                 "model.layers.0.mlp.gate.e_score_correction_bias": torch.zeros(experts)}
        for name, size in {"model.norm.weight": hidden, "model.layers.0.input_layernorm.weight": hidden,
                           "model.layers.0.post_attention_layernorm.weight": hidden,
                           "model.layers.0.self_attn.q_a_layernorm.weight": q_rank,
                           "model.layers.0.self_attn.kv_a_layernorm.weight": kv_rank}.items():
            other[name] = torch.ones(size, dtype=bf16)
        for file, tensors in (("model-%05d-of-%05d.safetensors" % (total - 1, total), other),
                              ("model-%05d-of-%05d.safetensors" % (total, total), scales[side])):
            save_file(tensors, os.path.join(root, side, file), metadata={"format": "pt"})
            index[side].update({k: file for k in tensors})
        with open(os.path.join(root, side, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": index[side]}, f, indent=1)
        with open(os.path.join(root, side, "config.json"), "w") as f:
            json.dump(config, f, indent=1)


# ---------------------------------------------------------------- measuring

def _status(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmHWM", "VmRSS", "VmData"):
                    fields[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return fields


def measure(args, max_seconds=None):
    """Runs `python -m postsvd compare ARGS` and samples its memory; returns the figures. With
    `max_seconds` the child is stopped then (SIGTERM) and the figures say so (peaks up to then)."""
    command = [sys.executable, "-m", "postsvd", "compare", *args]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_anon = peak_file = hwm = peak_data = 0
    stopped = False
    while child.poll() is None:
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            child.terminate()
            child.wait()
            stopped = True
            break
        s = _status(child.pid)
        peak_anon = max(peak_anon, s.get("RssAnon", 0))
        peak_file = max(peak_file, s.get("RssFile", 0))
        hwm = max(hwm, s.get("VmHWM", 0))
        peak_data = max(peak_data, s.get("VmData", 0))
        time.sleep(0.1)
    wall = time.perf_counter() - started
    output = child.stdout.read()
    if child.returncode != 0 and not stopped:
        raise SystemExit(f"compare failed ({child.returncode}):\n{output}")
    return {"command": " ".join(command[1:]), "wall_s": round(wall, 1), "peak_rss_anon_gib": round(peak_anon / 2**30, 3),
            "peak_rss_file_gib": round(peak_file / 2**30, 3), "vm_hwm_gib": round(hwm / 2**30, 3),
            "peak_vm_data_gib": round(peak_data / 2**30, 3),
            "stopped_after_s": max_seconds if stopped else None, "output_tail": output[-2000:]}


def _rows(out_dir):
    import csv

    with open(os.path.join(out_dir, "table.csv")) as f:
        return list(csv.DictReader(f))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["llama70b", "deepseek"])
    parser.add_argument("--dir", default=None, help="where the model folders go (default: a temporary folder)")
    parser.add_argument("--experts", default="0-7,shared", help="deepseek: the experts compared ('all': every one)")
    parser.add_argument("--kinds", default=None, help="the kinds compared (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the comparison")
    parser.add_argument("--keep", action="store_true", help="keep the model folders")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop the comparison after this long (the peaks up to then are reported)")
    parser.add_argument("--no-progress", action="store_true", help="hide the comparison's progress bar")
    args = parser.parse_args(argv)
    root = args.dir or tempfile.mkdtemp(prefix=f"postsvd-{args.model}-")
    figures = {"model": args.model, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "load_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        if not os.path.exists(os.path.join(root, "post", "config.json")):
            started = time.perf_counter()
            (write_llama70b if args.model == "llama70b" else write_deepseek)(root)
            figures["write_s"] = round(time.perf_counter() - started, 1)
        figures["disk_gib_per_model"] = round(sum(
            os.path.getsize(os.path.join(root, "base", n)) for n in os.listdir(os.path.join(root, "base"))) / 2**30, 2)
        out = os.path.join(root, "result")
        compare = [os.path.join(root, "base"), os.path.join(root, "post"), "--out", out, "--layers", "0",
                   "--no-plots", "--device", "cpu"] + (["--no-progress"] if args.no_progress else [])
        if args.kinds:
            compare += ["--kinds", args.kinds]
        if args.threads:
            compare += ["--threads", str(args.threads)]
        if args.model == "deepseek" and args.experts != "all":
            compare += ["--experts", args.experts]
        figures.update(measure(compare, args.max_seconds))
        if figures["stopped_after_s"] is None:
            rows = _rows(out)
            figures["pairs"] = len(rows)
            figures["expert_pairs"] = len([r for r in rows if r.get("expert", "-1") not in ("-1", "")])
            figures["seconds_per_pair"] = round(figures["wall_s"] / max(1, len(rows)), 2)
        figures["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
