"""Train the family: base, base_alt (pretrained), instruct and reasoning (post-trained from base), and
instruct_lora (a PEFT LoRA adapter of base on instruct's task).

    PYTHONPATH=examples python -m postsvd_family.train --out examples/models
    PYTHONPATH=examples python -m postsvd_family.train --out examples/models --lora   # the adapter only

CPU, offline, fixed seeds; each stage runs single-threaded, so a run repeats
bit for bit on one machine. Stages that do not depend on each other run in
parallel processes (`--jobs`). Writes four Hugging Face folders and an adapter
folder, family.json (settings, timings, accuracies, weight measures) and
README.md (the model card).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List

from . import corpus, tasks

MODEL_NAMES = ("base", "base_alt", "instruct", "reasoning")
#: PEFT adapter folders of base (adapter_config.json + adapter_model.safetensors).
ADAPTER_NAMES = ("instruct_lora",)
#: Every folder of the family, in the order of the model card.
FAMILY_NAMES = MODEL_NAMES + ADAPTER_NAMES
#: The projections a LoRA adapter of the family adapts: all seven of each layer.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Architecture:
    """LLaMA shape of every model of the family (head_dim 32, as vLLM supports)."""

    hidden_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 512
    max_position_embeddings: int = 512


@dataclass
class Pretraining:
    source: str
    seed: int
    text_chars: int = 450_000
    task_fraction: float = 0.7
    steps: int = 700
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 50


@dataclass
class PostTraining:
    style: str  # "instruct" or "reasoning"
    seed: int
    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup: int = 20


@dataclass
class LoraTraining:
    """A LoRA adapter of base on instruct's task and data (the Q:/A: format, the training split, loss on the
    completion only, instruct's steps, batch size and schedule); only the factors A and B train."""

    seed: int
    r: int = 8
    lora_alpha: int = 16
    target_modules: List[str] = field(default_factory=lambda: list(LORA_TARGETS))
    steps: int = 1200
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 50
    style: str = "instruct"


@dataclass
class Recipe:
    architecture: Architecture = field(default_factory=Architecture)
    base: Pretraining = field(default_factory=lambda: Pretraining(source="pydoc", seed=1))
    base_alt: Pretraining = field(default_factory=lambda: Pretraining(source="docstrings", seed=2))
    instruct: PostTraining = field(
        default_factory=lambda: PostTraining(style="instruct", seed=3, steps=1200, batch_size=64, lr=5e-4, warmup=50)
    )
    reasoning: PostTraining = field(
        default_factory=lambda: PostTraining(style="reasoning", seed=4, steps=400, batch_size=16, lr=3e-4)
    )
    instruct_lora: LoraTraining = field(default_factory=lambda: LoraTraining(seed=5))
    eval_n: int | None = None  # held-out prompts for the recorded accuracy (None: all)
    eval_max_new_tokens: int = 200
    eval_batch_size: int = 64


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _optimizer(model, lr: float, weight_decay: float):
    import torch

    trained = [p for p in model.parameters() if p.requires_grad]  # a LoRA model: its factors only
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )


def _save(model, tokenizer, out_dir: Path) -> None:
    import torch
    from transformers import GenerationConfig

    model = model.to("cpu", torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=200,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    corpus.save_tokenizer(tokenizer, out_dir, model.config.max_position_embeddings)


def _fit(name: str, model, setup, next_batch, started: float) -> List[float]:
    """AdamW steps with the warmup-cosine schedule and grad clipping 1.0; returns the losses."""
    import torch

    model.train()
    opt = _optimizer(model, setup.lr, setup.weight_decay)
    losses = []
    for step in range(setup.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, setup.steps, setup.lr, setup.warmup)
        loss = model(**next_batch()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == setup.steps - 1:
            _log(name, f"step {step}/{setup.steps} loss {loss.item():.4f} ({time.time() - started:.0f}s)")
    return losses


def _log(name: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {message}", flush=True)


def pretrain(name: str, setup: Pretraining, arch: Architecture, tokenizer_dir: str, out_root: str,
             device: str = "cpu") -> Dict:
    """Pretrain one base model from scratch on its text mixed with plain-text additions."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.model_max_length = 1 << 30  # documents are cut into seq_len windows below
    docs = corpus.pretraining_documents(setup.source, setup.text_chars, setup.task_fraction, setup.seed)
    ids: List[int] = []
    for doc in docs:
        ids += tokenizer(doc, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    stream = torch.tensor(ids, dtype=torch.long)
    if len(stream) <= setup.seq_len + 1:
        raise RuntimeError(f"{name}: token stream of {len(stream)} is shorter than seq_len {setup.seq_len}")
    torch.manual_seed(setup.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        **asdict(arch),
    )
    model = LlamaForCausalLM(config).to(device)
    windows = np.random.default_rng(setup.seed)

    def next_batch():
        starts = windows.integers(0, len(stream) - setup.seq_len, size=setup.batch_size)
        batch = torch.stack([stream[s : s + setup.seq_len] for s in starts]).to(device)
        return {"input_ids": batch, "labels": batch}

    losses = _fit(name, model, setup, next_batch, started)
    _save(model, tokenizer, Path(out_root) / name)
    return {
        "name": name,
        "seconds": round(time.time() - started, 1),
        "tokens_in_stream": len(stream),
        "tokens_seen": setup.steps * setup.batch_size * setup.seq_len,
        "corpus_sha256_16": corpus.fingerprint(docs),
        "final_loss": float(f"{np.mean(losses[-20:]):.3g}"),
    }


def _sft_batch(problems: List[tasks.Problem], style: str, tokenizer):
    """Right-padded batch; loss only on the completion and its </s>."""
    import torch

    rows, labels = [], []
    for p in problems:
        prompt = tokenizer(p.prompt, add_special_tokens=True)["input_ids"]
        target = p.instruct_target() if style == "instruct" else p.reasoning_target()
        completion = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + completion)
        labels.append([-100] * len(prompt) + completion)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    label_ids = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        label_ids[i, : len(l)] = torch.tensor(l)
        mask[i, : len(r)] = 1
    return input_ids, mask, label_ids


def _sft_batches(name: str, setup, tokenizer, device: str):
    """next_batch() of a post-training stage: `setup.batch_size` training-split problems per step in the
    stage's style, drawn from a stream seeded by the stage's name and seed."""
    if setup.style not in ("instruct", "reasoning"):
        raise ValueError(f"{name}: style expected 'instruct' or 'reasoning', got {setup.style!r}")
    stream = tasks.sample_train(random.Random(f"post:{name}:{setup.seed}"))

    def next_batch():
        input_ids, mask, labels = _sft_batch([next(stream) for _ in range(setup.batch_size)], setup.style, tokenizer)
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}

    return next_batch


def _post_record(name: str, setup, losses: List[float], started: float) -> Dict:
    import numpy as np

    return {
        "name": name,
        "seconds": round(time.time() - started, 1),
        "examples_seen": setup.steps * setup.batch_size,
        "final_loss": float(f"{np.mean(losses[-20:]):.3g}"),
    }


def post_train(name: str, setup: PostTraining, base_dir: str, out_root: str, device: str = "cpu") -> Dict:
    """Fine-tune the saved (bf16) base on the Q:/A: format with AdamW and a small learning rate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(setup.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(device)
    losses = _fit(name, model, setup, _sft_batches(name, setup, tokenizer, device), started)
    _save(model, tokenizer, Path(out_root) / name)
    return _post_record(name, setup, losses, started)


def train_lora(name: str, setup: LoraTraining, base_dir: str, out_root: str, device: str = "cpu") -> Dict:
    """A PEFT LoRA adapter of the saved (bf16) base on the Q:/A: format: the base stays frozen, the factors
    A (Kaiming-uniform, seeded) and B (zeros) of every projection train; saved as an adapter folder whose
    base_model_name_or_path is `base_dir` as given, with float32 factors and the base's tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(setup.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(device)
    config = LoraConfig(r=setup.r, lora_alpha=setup.lora_alpha, target_modules=list(setup.target_modules),
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    losses = _fit(name, model, setup, _sft_batches(name, setup, tokenizer, device), started)
    out_dir = Path(out_root) / name
    model = model.to("cpu")
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "README.md").unlink(missing_ok=True)  # peft's template card: the family's card describes it
    # peft writes target_modules from a set, in the order of string hashes (random per process): sort them
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    corpus.save_tokenizer(tokenizer, out_dir, model.config.max_position_embeddings)
    return {**_post_record(name, setup, losses, started),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "base_model_name_or_path": str(base_dir), "date": time.strftime("%Y-%m-%d")}


#: The training function of each stage that starts from the saved base.
POST_STAGES = {"instruct": post_train, "reasoning": post_train, "instruct_lora": train_lora}


def evaluate_model(name: str, out_root: str, n: int | None, max_new_tokens: int = 200, batch_size: int = 64) -> Dict:
    """Held-out accuracy of a saved model (an adapter: merged into out_root/base), single-threaded; keeps which
    prompts were right."""
    from .evaluate import evaluate

    started = time.time()
    base = Path(out_root) / "base" if name in ADAPTER_NAMES else None
    result = evaluate(Path(out_root) / name, n=n, threads=1, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      base=base)
    rows = result["rows"]
    _log(name, f"accuracy {result['accuracy']:.3f} on {result['n']} held-out prompts")
    return {
        "name": name,
        "accuracy": result["accuracy"],
        "correct": result["correct"],
        "n": result["n"],
        "seconds": round(time.time() - started, 1),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        # one character per held-out prompt in tasks.problems("test") order: 1 right, 0 wrong
        "correct_mask": "".join("1" if c else "0" for c in rows["correct"]),
        "example": {"prompt": rows["prompt"][0], "completion": rows["completion"][0]},
    }


class _Done:
    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


class _InProcess:
    """Runs each submitted stage at once in this process (--jobs 1)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        return _Done(fn(*args))


def _pool(jobs: int):
    """Stages run in `jobs` spawned processes, or in this one for jobs == 1."""
    return _InProcess() if jobs == 1 else ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))


def run(recipe: Recipe, out: str, jobs: int = 2, device: str = "cpu") -> Dict:
    """All stages; returns (and writes to out/family.json) the record of the run."""
    from . import check

    out_root = Path(out)
    out_root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tokenizer_dir = out_root / ".tokenizer"
    corpus.build_tokenizer(tokenizer_dir, recipe.architecture.max_position_embeddings)
    record: Dict = {"recipe": asdict(recipe), "stages": {}, "wall_seconds": {}}
    with _pool(jobs) as pool:
        t0 = time.time()
        pre = {
            name: pool.submit(pretrain, name, getattr(recipe, name), recipe.architecture, str(tokenizer_dir), out, device)
            for name in ("base", "base_alt")
        }
        for name, fut in pre.items():
            record["stages"][name] = fut.result()
        record["wall_seconds"]["pretraining"] = round(time.time() - t0, 1)
        t0 = time.time()
        post = {
            name: pool.submit(stage, name, getattr(recipe, name), str(out_root / "base"), out, device)
            for name, stage in POST_STAGES.items()
        }
        for name, fut in post.items():
            record["stages"][name] = fut.result()
        record["wall_seconds"]["post_training"] = round(time.time() - t0, 1)
        t0 = time.time()
        record["accuracy"] = _evaluate_all(pool, recipe, out)
        record["wall_seconds"]["evaluation"] = round(time.time() - t0, 1)
    for leftover in tokenizer_dir.iterdir():
        leftover.unlink()
    tokenizer_dir.rmdir()
    t0 = time.time()
    record["weights"] = check.family_measures(out_root)
    record["wall_seconds"]["weight_check"] = round(time.time() - t0, 1)
    record["wall_seconds"]["total"] = round(time.time() - started, 1)
    record["jobs"] = jobs
    record["device"] = device
    record["date"] = time.strftime("%Y-%m-%d")
    record["torch_threads_per_stage"] = 1
    return _write(record, out_root)


def plain_sum_accuracy(model_dir, n: int | None = None) -> float:
    """How often a model completes the pretraining form `a + b =` right on held-out pairs (greedy, 1 thread)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .evaluate import extract_answer, generate

    chosen = tasks.problems("test", n)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        completions = generate(model, tokenizer, [f"{p.a} + {p.b} =" for p in chosen], max_new_tokens=5, batch_size=128)
    finally:
        torch.set_num_threads(previous)
    return sum(extract_answer(c) == str(p.answer) for c, p in zip(completions, chosen)) / len(chosen)


def _evaluate_all(pool, recipe: Recipe, out: str, names=FAMILY_NAMES) -> Dict:
    futures = {
        name: pool.submit(evaluate_model, name, out, recipe.eval_n, recipe.eval_max_new_tokens, recipe.eval_batch_size)
        for name in names
    }
    return {name: fut.result() for name, fut in futures.items()}


def reevaluate(out: str, jobs: int = 2) -> Dict:
    """Evaluate and check the saved family again and rewrite family.json and the card (no training)."""
    from . import check

    out_root = Path(out)
    record_path = out_root / "family.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: expected the record of a training run; run the training first")
    record = json.loads(record_path.read_text())
    known = {f.name for f in fields(Recipe)}
    recipe = Recipe(**{k: v for k, v in record["recipe"].items() if k in known and not isinstance(v, dict)})
    with _pool(jobs) as pool:
        t0 = time.time()
        record["accuracy"] = _evaluate_all(pool, recipe, out)
        record["wall_seconds"]["reevaluation"] = round(time.time() - t0, 1)
    record["weights"] = check.family_measures(out_root)
    return _write(record, out_root)


def redo_post_training(out: str, names: List[str], recipe: Recipe, jobs: int = 2, device: str = "cpu") -> Dict:
    """Post-train `names` (of POST_STAGES) again from the saved base with `recipe`'s settings, then evaluate
    them and check the weights; the other models' records stay."""
    from . import check

    out_root = Path(out)
    record_path = out_root / "family.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: expected the record of a training run; run the training first")
    record = json.loads(record_path.read_text())
    with _pool(jobs) as pool:
        t0 = time.time()
        futures = {
            name: pool.submit(POST_STAGES[name], name, getattr(recipe, name), str(out_root / "base"), out, device)
            for name in names
        }
        for name, fut in futures.items():
            record["stages"][name] = fut.result()
            record["recipe"][name] = asdict(getattr(recipe, name))
        record["wall_seconds"]["post_training_redone"] = round(time.time() - t0, 1)
        record["accuracy"].update(_evaluate_all(pool, recipe, out, names))
    record["weights"] = check.family_measures(out_root)
    return _write(record, out_root)


def _write(record: Dict, out_root: Path) -> Dict:
    from . import card

    record["plain_sum_accuracy"] = {
        name: round(plain_sum_accuracy(out_root / name, record["recipe"].get("eval_n")), 4)
        for name in ("base", "base_alt")
    }
    record["sizes_bytes"] = {
        name: (out_root / name / weights_file(name)).stat().st_size for name in FAMILY_NAMES
    }
    (out_root / "family.json").write_text(json.dumps(record, indent=2) + "\n")
    (out_root / "README.md").write_text(card.model_card(record))
    return record


def weights_file(name: str) -> str:
    """The weights file of a folder of the family."""
    return "adapter_model.safetensors" if name in ADAPTER_NAMES else "model.safetensors"


def tiny_recipe() -> Recipe:
    """Seconds-long smoke run: same code paths, toy sizes."""
    recipe = Recipe(
        architecture=Architecture(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=32, intermediate_size=160,
                                  max_position_embeddings=256),
        eval_n=4,
        eval_max_new_tokens=8,
    )
    for name in ("base", "base_alt"):
        setup = getattr(recipe, name)
        setup.text_chars, setup.steps, setup.batch_size, setup.seq_len, setup.warmup = 20_000, 2, 2, 64, 1
    for name in POST_STAGES:
        setup = getattr(recipe, name)
        setup.steps, setup.batch_size, setup.warmup = 2, 2, 1
    return recipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m postsvd_family.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="examples/models", help="folder for the four models (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="stages run in parallel processes (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device for training (default: %(default)s)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="no training: evaluate and check the models in --out again, rewrite family.json and README.md")
    parser.add_argument("--redo-post", nargs="+", choices=tuple(POST_STAGES), default=None,
                        help="no pretraining: post-train these again from the base in --out, then evaluate")
    parser.add_argument("--lora", action="store_true",
                        help="no pretraining: train the LoRA adapter instruct_lora from the base in --out, then "
                             "evaluate it (the same as --redo-post instruct_lora)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes and 2 steps per stage (smoke test)")
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--post-steps", type=int, default=None)
    parser.add_argument("--post-lr", type=float, default=None)
    parser.add_argument("--task-fraction", type=float, default=None, help="share of pretraining characters that are additions")
    parser.add_argument("--eval-n", type=int, default=None, help="held-out prompts for the accuracies (default: all)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs: expected >= 1, got {args.jobs}")
    if args.reevaluate:
        record = reevaluate(args.out, jobs=args.jobs)
        for name in FAMILY_NAMES:
            print(f"{name}: accuracy {record['accuracy'][name]['accuracy']:.3f}")
        return 0
    recipe = tiny_recipe() if args.tiny else Recipe()
    if args.pretrain_steps is not None:
        recipe.base.steps = recipe.base_alt.steps = args.pretrain_steps
    if args.post_steps is not None:
        recipe.instruct.steps = recipe.reasoning.steps = args.post_steps
        recipe.instruct.warmup = recipe.reasoning.warmup = min(recipe.instruct.warmup, max(1, args.post_steps // 10))
    if args.post_lr is not None:
        recipe.instruct.lr = recipe.reasoning.lr = args.post_lr
    if args.task_fraction is not None:
        recipe.base.task_fraction = recipe.base_alt.task_fraction = args.task_fraction
    if args.eval_n is not None:
        recipe.eval_n = args.eval_n
    if args.lora and args.redo_post:
        parser.error("--lora: give it or --redo-post, not both (--redo-post instruct_lora is the same)")
    redo = ["instruct_lora"] if args.lora else args.redo_post
    if redo:
        record = redo_post_training(args.out, redo, recipe, jobs=args.jobs, device=args.device)
    else:
        record = run(recipe, args.out, jobs=args.jobs, device=args.device)
    print(json.dumps({k: record[k] for k in ("wall_seconds", "sizes_bytes")}, indent=2))
    for name in FAMILY_NAMES:
        print(f"{name}: accuracy {record['accuracy'][name]['accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
