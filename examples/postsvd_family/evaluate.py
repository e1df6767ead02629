"""Task accuracy of a model of the family: greedy decoding, exact match on held-out prompts.

Needs torch and transformers (``pip install 'postsvd[functional]'``), not the compiled
core. Usage::

    from postsvd_family.evaluate import evaluate
    result = evaluate("examples/models/instruct", n=200)
    result["accuracy"], result["rows"]          # float, pandas DataFrame

or, from the repository root,
``PYTHONPATH=examples python -m postsvd_family.evaluate examples/models/instruct --n 200``.

A PEFT adapter folder (``examples/models/instruct_lora``) is merged into its base with peft
(``merge_and_unload``, float32) and evaluated as that model; the base is `base`, or the folder the
adapter's ``base_model_name_or_path`` names (relative to the working directory, as peft reads it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from postsvd.functional.tasks.utils import last_boxed

from . import tasks

DEFAULT_MAX_NEW_TOKENS = 200  # a worked trace of two-digit addition is at most ~180 characters
_NUMBER = re.compile(r"-?\d+")


def extract_answer(completion: str) -> Optional[str]:
    """The model's answer: the last ``\\boxed{...}`` if there is one, else the first integer; None if neither."""
    boxed = last_boxed(completion)
    if boxed is not None:
        inner = _NUMBER.search(boxed.replace(",", ""))
        return inner.group(0) if inner else boxed.strip()
    number = _NUMBER.search(completion)
    return number.group(0) if number else None


ADAPTER_CONFIG = "adapter_config.json"


def _check_model_dir(model_dir, what: str = "model_dir") -> Path:
    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a Hugging Face model folder, got {str(path)!r} (not a directory)")
    for needed in ("config.json", "tokenizer_config.json"):
        if not (path / needed).is_file():
            raise FileNotFoundError(f"{what} {str(path)!r}: expected {needed} in the folder, it is missing")
    return path


def adapter_base(adapter_dir, base=None) -> Path:
    """The base model folder of a PEFT adapter folder: `base` when given, else its base_model_name_or_path
    (a folder relative to the working directory, as peft and postsvd read it)."""
    import json

    if base is not None:
        return _check_model_dir(base, "base")
    config_path = Path(adapter_dir) / ADAPTER_CONFIG
    named = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not named or not Path(named).is_dir():
        raise FileNotFoundError(f"{config_path}: base_model_name_or_path {named!r} is not a folder from the working "
                                f"directory {str(Path.cwd())!r}; pass base= (--base) the base model folder")
    return _check_model_dir(named, f"base (base_model_name_or_path of {config_path})")


def load_model(model_dir, base=None):
    """(model in float32, eval mode; tokenizer) of a model folder, or of a PEFT adapter folder merged into
    its base (:func:`adapter_base`) with peft's merge_and_unload; the adapter folder's tokenizer if it has
    one, else the base's. `base` is for adapters only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not (path / ADAPTER_CONFIG).is_file():
        if base is not None:
            raise ValueError(f"base: given, but {str(path)!r} is not a PEFT adapter folder ({ADAPTER_CONFIG})")
        path = _check_model_dir(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(path)
    from peft import PeftModel

    base_path = adapter_base(path, base)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, path).merge_and_unload()
    tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base_path
    return model.eval(), AutoTokenizer.from_pretrained(tokenizer_dir)


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int) -> List[str]:
    """Greedy completions of `prompts` (left padding, batches of `batch_size`)."""
    import torch

    tokenizer.padding_side = "left"
    completions: List[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return completions


def evaluate(
    model_dir,
    *,
    split: str = "test",
    n: Optional[int] = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 64,
    problems: Optional[Sequence[tasks.Problem]] = None,
    threads: Optional[int] = None,
    base=None,
) -> Dict[str, object]:
    """Exact-match accuracy of the model in `model_dir` (a model folder, or a PEFT adapter folder merged
    into `base` or the base its config names: :func:`load_model`) on the family's addition task.

    Prompts are ``tasks.problems(split, n)`` (the held-out split by default, in a
    fixed order) unless `problems` is given. Decoding is greedy in float32 on the
    CPU, so the result is deterministic for a given batch_size and thread count
    (`threads`; the family's recorded accuracies use batch_size 64 and 1 thread). Returns a dict with ``accuracy`` (float),
    ``correct``, ``n`` and ``rows``: a pandas DataFrame with one row per prompt
    (prompt, expected, completion, extracted, correct).
    """
    import pandas as pd
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    chosen = list(problems) if problems is not None else tasks.problems(split, n)
    model, tokenizer = load_model(model_dir, base)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        completions = generate(
            model, tokenizer, [p.prompt for p in chosen], max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    finally:
        torch.set_num_threads(previous_threads)
    rows = pd.DataFrame(
        {
            "prompt": [p.prompt for p in chosen],
            "expected": [str(p.answer) for p in chosen],
            "completion": completions,
            "extracted": [extract_answer(c) for c in completions],
        }
    )
    rows["correct"] = rows["extracted"] == rows["expected"]
    correct = int(rows["correct"].sum())
    total = len(rows)
    return {
        "model": str(model_dir),
        "split": split if problems is None else "custom",
        "accuracy": correct / total if total else float("nan"),
        "correct": correct,
        "n": total,
        "rows": rows,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m postsvd_family.evaluate MODEL [--n N]``: prints a few completions and the accuracy."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m postsvd_family.evaluate",
        description="Exact-match accuracy of a family model on held-out two-digit additions, greedy decoding "
                    "with transformers.")
    parser.add_argument("model", help="Hugging Face model folder, e.g. examples/models/instruct, or a PEFT adapter "
                                      "folder, e.g. examples/models/instruct_lora")
    parser.add_argument("--base", default=None,
                        help="with an adapter folder: its base model folder (default: its base_model_name_or_path)")
    parser.add_argument("--n", type=int, default=None, help="number of held-out prompts (default: all)")
    parser.add_argument("--split", choices=tasks.SPLITS, default="test")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--show", type=int, default=3, help="print this many example completions")
    parser.add_argument("--csv", default=None, help="also write the per-prompt rows to this CSV file")
    args = parser.parse_args(argv)
    result = evaluate(
        args.model, split=args.split, n=args.n, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        base=args.base,
    )
    rows = result["rows"]
    for _, row in rows.head(max(args.show, 0)).iterrows():
        mark = "ok " if row["correct"] else "BAD"
        print(f"[{mark}] {row['prompt']!r} -> {row['completion']!r} (expected {row['expected']})")
    if args.csv:
        rows.to_csv(args.csv, index=False)
    print(f"{result['model']}: accuracy {result['accuracy']:.3f} ({result['correct']}/{result['n']} exact matches, "
          f"split {result['split']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
