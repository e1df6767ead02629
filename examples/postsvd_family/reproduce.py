"""The paper's Tables 1, 2, 3 and 7 at the family's scale (issue 5, item 4).

For each post model of the bundled family (instruct, reasoning) this measures,
against ``base``:

* the weight measures: per kind, the largest NF(post vs base) over the layers
  beside the smallest NF(base_alt vs base), and whether NF(post) < NF(base_alt)
  holds layer by layer; the pooled top-90 % scaling factors (mean +- std, the
  paper's Table 3) of instruct, reasoning and base_alt;
* task accuracy (greedy exact match on held-out additions) of the post model and
  of its constructions: 14 (replace singular values) and 9 (the same scaled by
  the Table 4 alpha') on all matrices (Table 1), and 10 / 11 / 15 / 16 (ablate
  the output-side rotation / restore it from the input side / ablate the
  input-side rotation / restore it from the output side) on attention (q, k, v,
  o) and on MLP (gate, up, down) matrices separately (Tables 2 and 7; the
  paper's SA,in = 11 on attention, SA,out = 16 on attention, FFN,in / FFN,out
  the same on the MLP).

Usage::

    PYTHONPATH=examples python -m postsvd_family.reproduce --out reproduction.md [--n N] [--jobs 2]

Constructions are written to a temporary folder that is deleted afterwards. The
markdown page holds the tables, the date, the machine, n and the command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import postsvd
from postsvd import KIND_GROUPS, KINDS

POST_MODELS = ("instruct", "reasoning")
#: Completion budget per post model: the direct answer is at most 3 digits; a worked trace ~180 characters.
MAX_NEW_TOKENS = {"instruct": 16, "reasoning": 200}
#: (label, construction number, group) in the order of the accuracy table.
VARIANTS: Tuple[Tuple[str, Optional[int], Optional[str]], ...] = (
    ("original", None, None),
    ("14 all", 14, "all"),
    ("9 all", 9, "all"),
    ("10 SA", 10, "attention"),
    ("11 SA", 11, "attention"),
    ("15 SA", 15, "attention"),
    ("16 SA", 16, "attention"),
    ("10 FFN", 10, "mlp"),
    ("11 FFN", 11, "mlp"),
    ("15 FFN", 15, "mlp"),
    ("16 FFN", 16, "mlp"),
)


def default_models_dir() -> Path:
    """The family's folders: examples/models, beside this package."""
    return Path(__file__).resolve().parent.parent / "models"


def family_kinds(models: Path) -> Tuple[str, ...]:
    """The kinds the family's models have, in the core's order (the family is LLaMA: the paper's seven;
    the core's kind table also names kinds of other architectures, such as DeepSeek's MLA)."""
    present = {m["kind"] for m in postsvd.checkpoint.architecture(models / "base")["matrices"]}
    return tuple(kind for kind in KINDS if kind in present)


def family_group(models: Path, group: str) -> Tuple[str, ...]:
    """The family's kinds of one group ("attention" or "mlp")."""
    return tuple(kind for kind in family_kinds(models) if kind in KIND_GROUPS[group])


def _check_models(models: Path) -> None:
    for name in ("base", "base_alt") + POST_MODELS:
        if not (models / name / "config.json").is_file():
            raise FileNotFoundError(f"models: expected the family folder {str(models / name)!r} with config.json "
                                    f"(examples/models of the checkout), it is missing")


def weight_summary(models: Path, num_threads: Optional[int] = None) -> Dict[str, object]:
    """NF and pooled scaling of instruct, reasoning and base_alt against base, per kind."""
    comparisons = {name: postsvd.compare(models / "base", models / name, progress=False, num_threads=num_threads)
                   for name in POST_MODELS + ("base_alt",)}
    tables = {name: c.table for name, c in comparisons.items()}
    alt = tables["base_alt"].set_index(["layer", "kind"])["nf"]
    nf_rows = []
    kinds = family_kinds(models)
    for name in POST_MODELS:
        post = tables[name].set_index(["layer", "kind"])["nf"]
        for kind in kinds:
            p = post.xs(kind, level="kind")
            a = alt.xs(kind, level="kind")
            nf_rows.append({"model": name, "kind": kind, "nf_post_max": float(p.max()), "nf_alt_min": float(a.min()),
                            "every_layer": bool((p < a.loc[p.index]).all()),
                            "max_ratio": float((p / a.loc[p.index]).max())})
    scaling = {name: c.kind_table().set_index("kind") for name, c in comparisons.items()}
    return {"comparisons": comparisons, "nf": nf_rows, "scaling": scaling, "kinds": kinds}


def _evaluate_one(job: Tuple[str, str, int, int]) -> Tuple[str, float, int, int, float]:
    folder, key, n, max_new_tokens = job
    import transformers

    from .evaluate import evaluate

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    result = evaluate(folder, n=n, max_new_tokens=max_new_tokens, threads=1)
    return key, float(result["accuracy"]), int(result["correct"]), int(result["n"]), time.perf_counter() - started


def build_constructions(models: Path, work: Path, comparisons) -> Dict[Tuple[str, str], Dict[str, object]]:
    """Writes every construction of VARIANTS for each post model under `work`; returns folder and alpha'."""
    built: Dict[Tuple[str, str], Dict[str, object]] = {}
    for name in POST_MODELS:
        cache = work / f"factors_{name}"
        for label, number, group in VARIANTS:
            if number is None:
                built[name, label] = {"folder": str(models / name), "alpha": None}
                continue
            out = work / f"{name}_c{number}_{group}"
            kwargs = {"comparison": comparisons[name]} if number == 9 else {}
            result = postsvd.construct(number, models / "base", models / name, out, group=group, cache=cache,
                                       progress=False, rotations=False, **kwargs)
            built[name, label] = {"folder": str(out), "alpha": dict(result.alpha) if number == 9 else None}
    return built


def evaluate_all(built, n: int, jobs: int) -> Dict[Tuple[str, str], Dict[str, float]]:
    """Accuracy of every folder in `built`, `jobs` processes of one torch thread each."""
    work = [(entry["folder"], f"{name}|{label}", n, MAX_NEW_TOKENS[name]) for (name, label), entry in built.items()]
    # the slow ones (long traces) first, so the two workers finish together
    work.sort(key=lambda job: -job[3])
    if jobs <= 1:
        results = [_evaluate_one(job) for job in work]
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_evaluate_one, work))
    scores = {}
    for key, accuracy, correct, total, seconds in results:
        name, label = key.split("|")
        scores[name, label] = {"accuracy": accuracy, "correct": correct, "n": total, "seconds": seconds}
    return scores


def _pct(score: Dict[str, float]) -> str:
    return f"{100 * score['accuracy']:.1f}"


def render(summary, built, scores, *, n: int, command: str, seconds: float) -> str:
    """The markdown page."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    try:
        load = "load average %.2f" % os.getloadavg()[0]
    except OSError:
        load = "load average unknown"
    lines: List[str] = []
    add = lines.append
    add(f"Command: `{command}`. Measured {now} on {platform.system()} {platform.machine()}, {cpu}, "
        f"{os.cpu_count()} logical cores ({load} at the end); whole run {seconds:.0f} s.")
    add(f"Accuracy: greedy exact match on the first n = {n} held-out prompts (`tasks.problems('test', {n})`, "
        f"fixed order) with at most {MAX_NEW_TOKENS['instruct']} new tokens for instruct and "
        f"{MAX_NEW_TOKENS['reasoning']} for reasoning; float32 on the CPU, one torch thread per evaluation; "
        f"constructions built in float32 with `postsvd.construct` in a temporary folder, then deleted.")
    add("")
    add("**Table 1 / 2 / 7 shape: accuracy (%) of each post model and its constructions.** "
        "14 and 9 on all 7 kinds; SA = attention (q, k, v, o), FFN = MLP (gate, up, down). "
        "10 = ablate the output-side rotation, 11 = restore it from the input side (paper: restoration ·,in), "
        "15 = ablate the input-side rotation, 16 = restore it from the output side (paper: restoration ·,out).")
    add("")
    labels = [label for label, _, _ in VARIANTS]
    add("| post model | " + " | ".join(labels) + " |")
    add("|---|" + "---|" * len(labels))
    for name in POST_MODELS:
        add(f"| {name} | " + " | ".join(_pct(scores[name, label]) for label in labels) + " |")
    add("")
    for name in POST_MODELS:
        alpha = built[name, "9 all"]["alpha"]
        add(f"- Construction 9, {name}: Table 4 α′ (pooled mean scaling rounded to one decimal) = "
            + ", ".join(f"{k} {alpha[k]:g}" for k in KINDS if k in alpha)
            + (" (all 1: the same weights as Construction 14)." if all(v == 1 for v in alpha.values()) else "."))
    add("")
    add("**NF = ||Q1ᵀQ2 − I||_F / k: largest over the 4 layers for the post model vs smallest for base_alt "
        "(both against base).** `every layer` = NF(post) < NF(base_alt) in each layer of the kind; "
        "`max ratio` = the largest NF(post) / NF(base_alt) over the layers.")
    add("")
    add("| post model | kind | max NF(post, base) | min NF(base_alt, base) | every layer | max ratio |")
    add("|---|---|---|---|---|---|")
    for row in summary["nf"]:
        add(f"| {row['model']} | {row['kind']} | {row['nf_post_max']:.4f} | {row['nf_alt_min']:.4f} | "
            f"{'yes' if row['every_layer'] else 'NO'} | {row['max_ratio']:.3f} |")
    add("")
    add("**Table 3 shape: scaling factors σ_model / σ_base of the top 90 % singular values, pooled over the "
        "layers (mean ± population std).**")
    add("")
    kinds = summary["kinds"]
    add("| vs base | " + " | ".join(kinds) + " |")
    add("|---|" + "---|" * len(kinds))
    for name in ("base_alt",) + POST_MODELS:
        table = summary["scaling"][name]
        add(f"| {name} | " + " | ".join(f"{table.loc[k, 'scaling_mean']:.4f} ± {table.loc[k, 'scaling_std']:.4f}"
                                         for k in kinds) + " |")
    add("")
    return "\n".join(lines)


def run(out: Path, *, n: Optional[int] = None, jobs: int = 2, models: Optional[Path] = None,
        command: Optional[str] = None) -> str:
    """Measures everything, writes the page to `out` and returns its text."""
    from .tasks import all_problems

    models = Path(models) if models is not None else default_models_dir()
    _check_models(models)
    total = len(all_problems("test"))
    n = total if n is None else n
    if not 1 <= n <= total:
        raise ValueError(f"n: expected 1..{total} (the held-out prompts), got {n}")
    if jobs < 1:
        raise ValueError(f"jobs: expected >= 1, got {jobs}")
    started = time.perf_counter()
    summary = weight_summary(models)
    work = Path(tempfile.mkdtemp(prefix="postsvd_reproduce_"))
    try:
        built = build_constructions(models, work, summary["comparisons"])
        scores = evaluate_all(built, n, jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(summary, built, scores, n=n, command=command or f"python -m postsvd_family.reproduce --out {out}",
                  seconds=time.perf_counter() - started)
    Path(out).write_text(text)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m postsvd_family.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--n", type=int, default=None,
                        help="held-out prompts per model (default: all 1010; about 4 min on 2 cores)")
    parser.add_argument("--jobs", type=int, default=2, help="evaluation processes, one torch thread each")
    parser.add_argument("--models", default=None, help="family folder (default: examples/models)")
    args = parser.parse_args(argv)
    command = "python -m postsvd_family.reproduce " + " ".join(sys.argv[1:] if argv is None else argv)
    text = run(Path(args.out), n=args.n, jobs=args.jobs, models=args.models, command=command.strip())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
