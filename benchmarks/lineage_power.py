"""The power curve of `postsvd lineage` on the bundled family (issue 25, item 4): how far can training move B
from A = examples/models/base before the verdict stops saying derived?

    PYTHONPATH=examples:tests/python:python nice python benchmarks/lineage_power.py --out FILE
    ... --runs docstrings:2e-3,docstrings:1e-2 --checkpoints 100,1000   # a part

B starts as `base` (its saved bf16 weights, trained in float32 here) and is trained further as a language
model, with the family's own training code and data (examples/postsvd_family: the corpora and the
character-level tokenizer; AdamW with betas (0.9, 0.95), weight decay 0.1 and clipping 1.0 as in the
family's pretraining), at a constant learning rate after 20 warm-up steps, one run per (data mix, learning
rate) of --runs. Data mixes: 'pydoc' (base's own pretraining mix: the language reference with 70 % additions),
'docstrings' (base_alt's: standard-library docstrings with 70 % additions), 'docstrings-text' (the docstrings
alone, no additions). At each of --checkpoints B is saved in bf16 (as the family is) and tested against base:
verdict, p-value, the share of units whose two matchings agree per layer, and how far the weights moved
(||B - A|| / ||A|| over all parameters). The false-negative curve is where the verdict stops saying derived.
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

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "examples", "models", "base")
#: data mix -> (corpus source, share of addition exercises), as corpus.pretraining_documents reads them.
MIXES = {"pydoc": ("pydoc", 0.7), "docstrings": ("docstrings", 0.7), "docstrings-text": ("docstrings", 0.0)}


def token_stream(mix: str, tokenizer, seed: int, chars: int = 450_000) -> torch.Tensor:
    from postsvd_family import corpus

    source, task_fraction = MIXES[mix]
    ids = []
    for doc in corpus.pretraining_documents(source, chars, task_fraction, seed):
        ids += tokenizer(doc, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)


def relative_change(model, reference) -> float:
    with torch.no_grad():
        moved = sum(float((p - q).norm() ** 2) for p, q in zip(model.parameters(), reference.parameters()))
        return (moved / sum(float(q.norm() ** 2) for q in reference.parameters())) ** 0.5


def run(mix: str, lr: float, checkpoints, args, root: str, report) -> list:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    tokenizer.model_max_length = 1 << 30
    stream = token_stream(mix, tokenizer, seed=args.seed)
    reference = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.95))
    windows = np.random.default_rng(args.seed)
    rows, losses, step, started = [], [], 0, time.time()
    for checkpoint in checkpoints:
        while step < checkpoint:
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 20)
            starts = windows.integers(0, len(stream) - args.seq_len, size=args.batch_size)
            batch = torch.stack([stream[s:s + args.seq_len] for s in starts])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            step += 1
        folder = os.path.join(root, f"{mix}-{lr:g}-{checkpoint}")
        model.to(torch.bfloat16).save_pretrained(folder)
        model.to(torch.float32)
        result = lineage(BASE, folder, level=args.level, paper_nf=False, num_threads=1)
        mlp = result.table[result.table["block"] == "mlp"]
        rows.append(report({
            "mix": mix, "lr": lr, "steps": checkpoint, "tokens": checkpoint * args.batch_size * args.seq_len,
            "loss": float(np.mean(losses[-20:])), "relative_weight_change": relative_change(model, reference),
            "verdict": result.verdict, "p_value": result.p_value, "log10_p": result.log10_p,
            "agreeing_share": [round(float(s) / float(u), 4) for s, u in zip(mlp["statistic"], mlp["units"])],
            "similarity": [round(float(x), 4) for x in mlp["similarity"]], "seconds": round(time.time() - started, 1)}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--runs", default="docstrings:2e-3,docstrings:1e-2,docstrings:3e-2,pydoc:1e-2,"
                                          "docstrings-text:1e-2",
                        help="comma-separated MIX:LR (mixes: " + ", ".join(MIXES) + ")")
    parser.add_argument("--checkpoints", default="100,300,1000,3000", help="steps at which B is tested")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--level", type=float, default=DEFAULT_LEVEL)
    args = parser.parse_args()
    runs = []
    for item in args.runs.split(","):
        mix, _, lr = item.partition(":")
        if mix not in MIXES:
            parser.error(f"--runs: unknown data mix {mix!r}; expected one of {', '.join(MIXES)}")
        runs.append((mix, float(lr)))
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    started, load = time.time(), os.getloadavg()
    rows = []

    def report(row):
        print(row, flush=True)
        return row

    with tempfile.TemporaryDirectory() as root:
        for mix, lr in runs:
            rows += run(mix, lr, checkpoints, args, root, report)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
              "machine": f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
              "load_at_start": load, "load_at_end": os.getloadavg(), "seconds": round(time.time() - started, 1),
              "arguments": vars(args), "torch": torch.__version__, "transformers": transformers.__version__,
              "postsvd": postsvd.__version__, "rows": rows}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
