"""Calibration of `postsvd lineage` per architecture: its false-positive rate on independent pairs and its
power on derived pairs, plain and disguised (issue 14, item 4; issue 25, item 3), and its sensitivity to
weight-averaged merges.

    PYTHONPATH=tests/python:python nice python benchmarks/calibrate_lineage.py --out FILE
    ... --families llama,mixtral --random-pairs 50 --trained-pairs 5 --steps 10,100,1000   # one family, long

Every model is a tiny transformers model of a family lineage reads (the test fixture's config of
tests/python/helpers.py at calibration sizes: vocabulary 256, hidden 64, 4 layers, 128 MLP units, 4 heads;
MoE experts of 32 or 64 units; MLA latents 48 and 32), float32, built and trained here on the CPU, offline.
The multimodal folders (gemma3, llama4) are read through their text towers, calibrated as gemma3_text and
llama4_text. Per family:

- random pairs: two random initializations (different seeds); the test's null holds exactly.
- trained pairs: two random initializations each trained on the *same* synthetic token stream (a sparse
  random Markov chain), so that the two models learn the same function from independent starts: the case
  where a fingerprint could mistake shared function for shared ancestry.
- derived pairs: A = a model trained on one stream, B = A trained further for S steps on another stream
  (AdamW, --further-lr), for each S of --steps; each B also disguised by every function-preserving change
  the architecture allows (tests/python/disguise.py, logits checked) in the 'disguised' rows.
- merges (--merges, llama only): B = w A + (1 - w) C for independent random A and C, at several widths:
  is B derived from A, from C?

The verdict of each pair at --level is counted: the false-positive rate is the share of 'derived' among the
independent pairs, the power the share of 'derived' among the derived ones.
"""
import argparse
import datetime
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

import postsvd
from postsvd.lineage import DEFAULT_LEVEL, lineage

#: Keys the config classes derive from the layer count at construction: rebuilt, not copied.
_DERIVED_KEYS = ("layer_types", "no_rope_layers", "moe_layers")
VOCAB = 256


def calibration_config(model_type: str):
    """The test fixture's config of `model_type` at calibration sizes."""
    from helpers import fixture_config

    base = fixture_config(model_type)
    d = {k: v for k, v in base.to_dict().items() if k not in _DERIVED_KEYS}
    if model_type == "gpt2":
        d.update(n_embd=64, n_layer=4, n_head=4, n_inner=128, vocab_size=VOCAB, n_positions=128)
        return type(base)(**d)
    mla = "kv_lora_rank" in d
    d.update(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, vocab_size=VOCAB,
             max_position_embeddings=128, num_key_value_heads=4 if mla else 2)
    if mla:  # head_dim is the rope part's width in DeepSeek's config
        d.update(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, head_dim=8)
        if d.get("q_lora_rank"):
            d["q_lora_rank"] = 48
    elif d.get("head_dim"):
        d["head_dim"] = 16
    if "moe_intermediate_size" in d:
        d["moe_intermediate_size"] = 32
    if "shared_expert_intermediate_size" in d:
        d["shared_expert_intermediate_size"] = 64
    if model_type in ("mixtral", "gpt_oss"):  # intermediate_size is the experts' width
        d["intermediate_size"] = 64
    if model_type.startswith("llama4"):
        d.update(intermediate_size=64, intermediate_size_mlp=128)
    if d.get("sliding_window"):
        d["sliding_window"] = 32
    return type(base)(**d)


def build(model_type: str, seed: int):
    import transformers

    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(calibration_config(model_type)).to(torch.float32)


def markov_stream(seed: int, successors: int = 4):
    """A sampler of token batches from a random sparse Markov chain over the vocabulary."""
    rng = np.random.default_rng(seed)
    table = np.stack([rng.choice(VOCAB, successors, replace=False) for _ in range(VOCAB)])

    def batch(batch_size: int = 16, length: int = 64) -> torch.Tensor:
        tokens = np.empty((batch_size, length), dtype=np.int64)
        tokens[:, 0] = rng.integers(0, VOCAB, batch_size)
        for t in range(1, length):
            tokens[:, t] = table[tokens[:, t - 1], rng.integers(0, successors, batch_size)]
        return torch.as_tensor(tokens)

    return batch


def train(model, stream, steps: int, lr: float = 3e-3, seed: int = 0):
    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    loss = None
    for _ in range(steps):
        tokens = stream()
        loss = model(tokens, labels=tokens).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    return loss.item() if loss is not None else float("nan")


def verdict(folder_a: str, folder_b: str, level: float) -> dict:
    result = lineage(folder_a, folder_b, level=level, paper_nf=False, num_threads=1)
    mlp = result.table[result.table["block"] == "mlp"]
    return {"verdict": result.verdict, "p_value": result.p_value, "log10_p": result.log10_p,
            "agreements": [int(x) for x in mlp["statistic"]], "units": [int(x) for x in mlp["units"]],
            "null_rate": [float(x) for x in mlp["null_rate"]], "reasons": result.reasons}


def relative_change(model, reference) -> float:
    with torch.no_grad():
        moved = sum(float((p - q).norm() ** 2) for p, q in zip(model.parameters(), reference.parameters()))
        return (moved / sum(float(q.norm() ** 2) for q in reference.parameters())) ** 0.5


def calibrate_family(model_type: str, args, root: str, report) -> list:
    from disguise import disguised_copy

    def save(model, name):
        folder = os.path.join(root, f"{model_type}-{name}")
        model.save_pretrained(folder)
        return folder

    rows = []
    for i in range(args.random_pairs):
        a, b = save(build(model_type, 1000 + 2 * i), f"ra{i}"), save(build(model_type, 1001 + 2 * i), f"rb{i}")
        rows.append(report({"family": model_type, "kind": "random pair", "steps": 0, "seed": i,
                            **verdict(a, b, args.level)}))
    for i in range(args.trained_pairs):
        models = []
        for side in (0, 1):
            model = build(model_type, 5000 + 2 * i + side)
            train(model, markov_stream(77), args.pretrain_steps, seed=side)  # the same stream for both
            models.append(save(model, f"t{i}{side}"))
        rows.append(report({"family": model_type, "kind": "trained pair", "steps": args.pretrain_steps, "seed": i,
                            **verdict(models[0], models[1], args.level)}))
    for seed in range(args.seeds):
        base = build(model_type, 9000 + seed)
        train(base, markov_stream(100 + seed), args.pretrain_steps, seed=seed)
        base_folder = save(base, f"base{seed}")
        for steps in [int(s) for s in args.steps.split(",")]:
            derived = build(model_type, 0)
            derived.load_state_dict(base.state_dict())
            loss = train(derived, markov_stream(200 + seed), steps, lr=args.further_lr, seed=seed)
            folder = save(derived, f"d{seed}-{steps}")
            rows.append(report({"family": model_type, "kind": "derived", "steps": steps, "seed": seed, "loss": loss,
                                "relative_weight_change": relative_change(derived, base),
                                **verdict(base_folder, folder, args.level)}))
            hidden = os.path.join(root, f"{model_type}-d{seed}-{steps}-disguised")
            difference = disguised_copy(folder, hidden, "all", seed=seed)
            rows.append(report({"family": model_type, "kind": "derived, disguised", "steps": steps, "seed": seed,
                                "logit_difference": difference, **verdict(base_folder, hidden, args.level)}))
    return rows


def merges(args, root: str, report) -> list:
    """Weight averages of two independent random llama models at several widths and weights."""
    import transformers

    rows = []
    for hidden in (32, 64, 128):
        def llama(seed):
            torch.manual_seed(seed)
            return transformers.LlamaForCausalLM(transformers.LlamaConfig(
                hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=4 * hidden)).eval()

        parents = [llama(0), llama(1)]
        folders = []
        for i, model in enumerate(parents):
            folders.append(os.path.join(root, f"merge{hidden}-{i}"))
            model.save_pretrained(folders[-1])
        for weight in (0.5, 0.3, 0.2):
            merged = llama(0)
            with torch.no_grad():
                for key, value in merged.state_dict().items():
                    value.copy_(weight * parents[0].state_dict()[key] + (1 - weight) * parents[1].state_dict()[key])
            folder = os.path.join(root, f"merge{hidden}-{weight}")
            merged.save_pretrained(folder)
            for parent, share in ((0, weight), (1, 1 - weight)):
                rows.append(report({"family": "llama", "kind": "merge", "hidden": hidden, "parent_weight": share,
                                    **verdict(folders[parent], folder, args.level)}))
    return rows


def summarize(rows: list) -> dict:
    summary = {}
    for family in sorted({r["family"] for r in rows if r["kind"] != "merge"}):
        mine = [r for r in rows if r["family"] == family and r["kind"] != "merge"]
        null = [r for r in mine if r["kind"] in ("random pair", "trained pair")]
        entry = {"independent pairs": len(null),
                 "false positives": sum(r["verdict"] == "derived" for r in null),
                 "null median p": float(np.median([r["p_value"] for r in null])) if null else None,
                 "null smallest p": float(np.min([r["p_value"] for r in null])) if null else None,
                 "inconclusive": sum(r["verdict"] == "inconclusive" for r in mine)}
        for kind in ("random pair", "trained pair"):
            chosen = [r for r in mine if r["kind"] == kind]
            entry[f"{kind}s: smallest p"] = float(np.min([r["p_value"] for r in chosen])) if chosen else None
        for kind in ("derived", "derived, disguised"):
            chosen = [r for r in mine if r["kind"] == kind]
            entry[kind] = f"{sum(r['verdict'] == 'derived' for r in chosen)}/{len(chosen)}"
            entry[f"{kind}: largest log10 p"] = max((r["log10_p"] for r in chosen), default=None)
        moved = [r["relative_weight_change"] for r in mine if r["kind"] == "derived"]
        entry["largest relative weight change"] = max(moved, default=None)
        summary[family] = entry
    return summary


def main() -> None:
    from helpers import MODEL_FIXTURES
    from frontier_models import FRONTIER_MULTIMODAL_TYPES

    families = [t for t in sorted(MODEL_FIXTURES) if t not in FRONTIER_MULTIMODAL_TYPES]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--families", default=",".join(families), help="comma-separated model types")
    parser.add_argument("--random-pairs", type=int, default=10)
    parser.add_argument("--trained-pairs", type=int, default=2)
    parser.add_argument("--pretrain-steps", type=int, default=150, help="training of A (and of trained pairs)")
    parser.add_argument("--steps", default="30,300", help="further-training steps of the derived pairs")
    parser.add_argument("--seeds", type=int, default=2, help="derived pairs per number of steps")
    parser.add_argument("--further-lr", type=float, default=3e-3, help="learning rate of the further training")
    parser.add_argument("--merges", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--level", type=float, default=DEFAULT_LEVEL)
    args = parser.parse_args()
    unknown = [f for f in args.families.split(",") if f not in families]
    if unknown:
        parser.error(f"--families: unknown {unknown}; expected among {families}")
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    started = time.time()
    load = os.getloadavg()
    rows = []

    def report(row):
        print({k: v for k, v in row.items() if k != "reasons" or v}, flush=True)
        return row

    with tempfile.TemporaryDirectory() as root:
        for family in args.families.split(","):
            began = time.time()
            rows += calibrate_family(family, args, root, report)
            print(f"{family}: {time.time() - began:.0f} s", flush=True)
        if args.merges:
            rows += merges(args, root, report)
    summary = summarize(rows)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "machine": f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
              "load_at_start": load, "load_at_end": os.getloadavg(), "seconds": round(time.time() - started, 1),
              "level": args.level, "arguments": vars(args), "torch": torch.__version__,
              "transformers": transformers.__version__, "postsvd": postsvd.__version__,
              "summary": summary, "rows": rows}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
