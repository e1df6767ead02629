"""Calibration of `postsvd lineage`: its false-positive rate on independent pairs and its power on
derived pairs with more and more further training (issue 14, item 4).

    PYTHONPATH=tests/python python benchmarks/calibrate_lineage.py --out benchmarks/lineage_calibration.json

Everything is a tiny LLaMA (transformers, float32, untied embeddings) built and trained here on the
CPU, offline:

- random pairs: two random initializations (different seeds); the test's null holds exactly.
- trained pairs: two random initializations each trained on the *same* synthetic token stream (a
  sparse random Markov chain), so that the two models learn the same function from independent
  starts: the case where a fingerprint could mistake shared function for shared ancestry.
- derived pairs: A = a model trained on one stream, B = A trained further for S steps on another
  stream (AdamW, lr --further-lr, 3e-3 by default), for each S of --steps; each further-training
  run is also disguised by all the function-preserving changes of tests/python/disguise.py in the
  'disguised' rows.

The verdict of each pair at --level is counted: the false-positive rate is the share of 'derived'
among the independent pairs, the power the share of 'derived' among the derived ones.
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

SIZES = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2)


def build(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**SIZES, max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).to(torch.float32)


def markov_stream(seed: int, successors: int = 4):
    """A sampler of token batches from a random sparse Markov chain over the vocabulary."""
    rng = np.random.default_rng(seed)
    vocab = SIZES["vocab_size"]
    table = np.stack([rng.choice(vocab, successors, replace=False) for _ in range(vocab)])

    def batch(batch_size: int = 16, length: int = 64) -> torch.Tensor:
        tokens = np.empty((batch_size, length), dtype=np.int64)
        tokens[:, 0] = rng.integers(0, vocab, batch_size)
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
            "agreements": [int(x) for x in mlp["statistic"]], "units": int(mlp["units"].iloc[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--random-pairs", type=int, default=50)
    parser.add_argument("--trained-pairs", type=int, default=5)
    parser.add_argument("--pretrain-steps", type=int, default=200, help="training of A (and of trained pairs)")
    parser.add_argument("--steps", default="10,100,1000", help="further-training steps of the derived pairs")
    parser.add_argument("--seeds", type=int, default=2, help="derived pairs per number of steps")
    parser.add_argument("--further-lr", type=float, default=3e-3, help="learning rate of the further training")
    parser.add_argument("--level", type=float, default=DEFAULT_LEVEL)
    args = parser.parse_args()
    import transformers
    from disguise import disguised_copy

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    started = time.time()
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        def save(model, name):
            folder = os.path.join(root, name)
            model.save_pretrained(folder)
            return folder

        for i in range(args.random_pairs):
            a, b = save(build(1000 + 2 * i), f"ra{i}"), save(build(1001 + 2 * i), f"rb{i}")
            rows.append({"kind": "random pair", "steps": 0, "seed": i, **verdict(a, b, args.level)})
            print(rows[-1], flush=True)
        for i in range(args.trained_pairs):
            models = []
            for side in (0, 1):
                model = build(5000 + 2 * i + side)
                train(model, markov_stream(77), args.pretrain_steps, seed=side)  # the same stream for both
                models.append(save(model, f"t{i}{side}"))
            rows.append({"kind": "trained pair", "steps": args.pretrain_steps, "seed": i,
                         **verdict(models[0], models[1], args.level)})
            print(rows[-1], flush=True)
        for seed in range(args.seeds):
            base = build(9000 + seed)
            train(base, markov_stream(100 + seed), args.pretrain_steps, seed=seed)
            base_folder = save(base, f"base{seed}")
            for steps in [int(s) for s in args.steps.split(",")]:
                derived = build(0)
                derived.load_state_dict(base.state_dict())
                loss = train(derived, markov_stream(200 + seed), steps, lr=args.further_lr, seed=seed)
                folder = save(derived, f"d{seed}-{steps}")
                with torch.no_grad():
                    drift = float(sum((p - q).norm() ** 2 for p, q in zip(derived.parameters(), base.parameters()))
                                  ** 0.5 / sum(q.norm() ** 2 for q in base.parameters()) ** 0.5)
                rows.append({"kind": "derived", "steps": steps, "seed": seed, "loss": loss,
                             "relative_weight_change": drift, **verdict(base_folder, folder, args.level)})
                print(rows[-1], flush=True)
                hidden = os.path.join(root, f"d{seed}-{steps}-disguised")
                disguised_copy(folder, hidden, "all", seed=seed)
                rows.append({"kind": "derived, disguised", "steps": steps, "seed": seed,
                             **verdict(base_folder, hidden, args.level)})
                print(rows[-1], flush=True)

    summary = {}
    for kind in sorted({r["kind"] for r in rows}):
        for steps in sorted({r["steps"] for r in rows if r["kind"] == kind}):
            chosen = [r for r in rows if r["kind"] == kind and r["steps"] == steps]
            summary[f"{kind}, {steps} steps"] = {
                "pairs": len(chosen), "derived": sum(r["verdict"] == "derived" for r in chosen),
                "independent": sum(r["verdict"] == "independent" for r in chosen),
                "inconclusive": sum(r["verdict"] == "inconclusive" for r in chosen),
                "median_p": float(np.median([r["p_value"] for r in chosen])),
                "min_p": float(np.min([r["p_value"] for r in chosen]))}
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "machine": f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
              "load_at_start": load, "seconds": round(time.time() - started, 1), "level": args.level,
              "sizes": SIZES, "arguments": vars(args), "torch": torch.__version__, "postsvd": postsvd.__version__,
              "summary": summary, "rows": rows}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    for key, value in summary.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
