"""Benchmark accuracy of a model and its constructions with lm-evaluation-harness
(paper Tables 1, 2, 5-8; Appendix C.1, H.1).

Settings (the paper's): zero-shot GSM8K, MATH-500, MMLU (dev split) and GPQA (diamond);
sampling at temperature 0.2 and top-p 0.95 with at most 1024 new tokens; ``runs=3``
runs with different seeds; pass@1 of a run = the fraction of questions whose last
``\\boxed{}`` matches the reference after normalization (exact match, see
``tasks/utils.py``); reported as mean ± std over runs (population std, ``ddof=0``;
pass ``ddof=1`` for the sample std). GSM8K gets the simple system prompt of Appendix H.1,
the others the "keep your thought process as short as possible" one; MMLU and GPQA use
its multiple-choice template. The prompt goes through the tokenizer's chat template
when it has one (system message + user message).

The tasks are lm-eval YAML configs in ``postsvd/functional/tasks/`` (``dataset_path: json``).
For a run, postsvd writes a small YAML per task into a temporary folder that ``include:``s
the shipped config and points ``data_files`` at your data, and registers that folder with
``lm_eval.tasks.TaskManager(include_path=...)``.

Data:

* ``data_dir=FOLDER``: local JSONL files ``gsm8k.jsonl``, ``math500.jsonl``, ``mmlu.jsonl``,
  ``gpqa.jsonl`` (formats in ``tasks/utils.py``; :func:`export_hf_datasets` writes them);
* ``data_dir=None``: the Hugging Face datasets (``openai/gsm8k`` main/test,
  ``HuggingFaceH4/MATH-500`` test, ``cais/mmlu`` all/dev, ``Idavidrein/gpqa`` gpqa_diamond/train),
  from the local HF cache or the Hub.

Offline: set ``HF_DATASETS_OFFLINE=1`` and ``HF_HUB_OFFLINE=1`` in the environment before
Python starts (huggingface_hub reads them at import); then local folders and the HF cache
work with no network. Models are checkpoint folders (or loaded models with ``tokenizer=``).

Backends: ``backend="hf"`` (transformers; everywhere), ``"vllm"`` (when the ``vllm`` package
is installed; seeds go to vLLM per request), ``"auto"``: vllm when importable and a CUDA
device is present, else hf.

Output length: the average number of tokens of the generated responses (each response
re-encoded with the model's tokenizer, without special tokens; Tables 6, 8).
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .._extras import require
from ._models import ModelLike, as_model_dict, hub_source, is_hub_model, is_model_object

__all__ = [
    "BENCHMARKS",
    "TASKS_DIR",
    "available_backends",
    "evaluate_models",
    "export_hf_datasets",
    "run_benchmarks",
    "summarize_runs",
    "task_manager",
]

#: Folder of the shipped lm-eval task configs.
TASKS_DIR = Path(__file__).resolve().parent / "tasks"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its lm-eval task, local file name and Hugging Face source."""
    key: str
    label: str
    task: str
    data_file: str
    hf_path: str
    hf_name: Optional[str]
    hf_split: str
    converter: str  # function name in tasks/utils.py: raw HF row -> local JSONL row


BENCHMARKS: Dict[str, Benchmark] = {
    b.key: b for b in (
        Benchmark("gsm8k", "GSM8K", "postsvd_gsm8k", "gsm8k.jsonl", "openai/gsm8k", "main", "test", "gsm8k_doc"),
        Benchmark("math500", "MATH-500", "postsvd_math500", "math500.jsonl", "HuggingFaceH4/MATH-500", None,
                  "test", "math500_doc"),
        Benchmark("mmlu", "MMLU", "postsvd_mmlu", "mmlu.jsonl", "cais/mmlu", "all", "dev", "mmlu_doc"),
        Benchmark("gpqa", "GPQA", "postsvd_gpqa", "gpqa.jsonl", "Idavidrein/gpqa", "gpqa_diamond", "train",
                  "gpqa_doc"),
    )
}
_ALIASES = {"math-500": "math500", "math_500": "math500", "gpqa_diamond": "gpqa", "mmlu_dev": "mmlu"}


def _benchmarks(tasks: Union[str, Iterable[str]]) -> List[Benchmark]:
    if isinstance(tasks, str):
        tasks = [tasks]
    chosen = []
    for name in tasks:
        key = _ALIASES.get(str(name).lower(), str(name).lower())
        if key not in BENCHMARKS:
            raise ValueError(f"tasks: unknown benchmark {name!r}; expected some of {list(BENCHMARKS)}")
        if BENCHMARKS[key] not in chosen:
            chosen.append(BENCHMARKS[key])
    if not chosen:
        raise ValueError(f"tasks: expected at least one of {list(BENCHMARKS)}, got none")
    return chosen


def _require_lm_eval():
    return require("lm_eval", "benchmark evaluation (lm-evaluation-harness)")


def available_backends() -> List[str]:
    """Inference backends usable here: always ``"hf"``; ``"vllm"`` when the package imports."""
    backends = ["hf"]
    if importlib.util.find_spec("vllm") is not None:
        backends.append("vllm")
    return backends


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        torch = require("torch", "backend='auto'")

        return "vllm" if "vllm" in available_backends() and torch.cuda.is_available() else "hf"
    if backend not in ("hf", "vllm"):
        raise ValueError(f"backend: expected 'hf', 'vllm' or 'auto', got {backend!r}")
    if backend == "vllm" and "vllm" not in available_backends():
        raise ImportError("backend='vllm' but the vllm package is not installed (pip install vllm), "
                          "or use backend='hf'")
    return backend


def _write_task_folder(folder: Path, benchmarks: Sequence[Benchmark], data_dir: Optional[Path]) -> None:
    """One YAML per task that includes the shipped config and points it at the data."""
    for bench in benchmarks:
        lines = [f"include: {json.dumps(str(TASKS_DIR / (bench.task + '.yaml')))}", f"task: {bench.task}"]
        if data_dir is not None:
            data_file = data_dir / bench.data_file
            if not data_file.is_file():
                raise FileNotFoundError(f"data_dir: {bench.label} needs {os.fspath(data_file)!r} (JSONL, one question "
                                        "a line; see postsvd/functional/tasks/utils.py), which does not exist")
            lines += ["dataset_kwargs:", "  data_files:", f"    test: {json.dumps(str(data_file))}"]
        else:
            lines += [f"dataset_path: {json.dumps(bench.hf_path)}",
                      f"dataset_name: {json.dumps(bench.hf_name) if bench.hf_name else 'null'}",
                      f"test_split: {json.dumps(bench.hf_split)}", "dataset_kwargs: null"]
        (folder / f"{bench.task}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def task_manager(folder: Union[str, os.PathLike], tasks: Union[str, Iterable[str]] = tuple(BENCHMARKS),
                 data_dir: Union[str, os.PathLike, None] = None):
    """An ``lm_eval.tasks.TaskManager`` with the postsvd tasks, written into ``folder``
    (an empty folder you keep while evaluating), reading ``data_dir`` or the HF datasets."""
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_task_folder(folder, _benchmarks(tasks), None if data_dir is None else Path(data_dir))
    return TaskManager(include_path=str(folder), include_defaults=False)


def _make_lm(model: ModelLike, backend: str, *, tokenizer: Any, device: str, dtype: str,
             batch_size: Union[int, str], seed: int):
    if backend == "hf":
        HFLM = require("lm_eval.models.huggingface", "backend='hf'").HFLM

        pretrained, pinned = (model, {}) if is_model_object(model) else hub_source(model, "model")
        kwargs = dict(pretrained=pretrained, device=device, dtype=dtype, batch_size=batch_size, **pinned)
        if tokenizer is not None:
            kwargs["tokenizer"] = tokenizer
        return HFLM(**kwargs)
    from lm_eval.models.vllm_causallms import VLLM

    if is_model_object(model):
        raise ValueError("backend='vllm' needs a checkpoint folder, not a loaded model")
    pretrained, pinned = hub_source(model, "model")
    kwargs = dict(pretrained=pretrained, dtype=dtype, batch_size=batch_size, seed=seed, **pinned)
    if tokenizer is not None:
        kwargs["tokenizer"] = tokenizer if isinstance(tokenizer, str) else os.fspath(tokenizer)
    return VLLM(**kwargs)


def _check_model(name: str, model: ModelLike) -> None:
    if is_model_object(model) or is_hub_model(model):
        return
    path = Path(os.fspath(model))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model {name!r}: {os.fspath(path)!r} is not a checkpoint folder with a config.json")


def run_benchmarks(models: Union[ModelLike, Mapping[str, ModelLike]],
                   tasks: Union[str, Iterable[str]] = tuple(BENCHMARKS), *,
                   data_dir: Union[str, os.PathLike, None] = None, runs: int = 3,
                   seeds: Optional[Sequence[int]] = None, limit: Union[int, float, None] = None,
                   temperature: float = 0.2, top_p: float = 0.95, max_new_tokens: int = 1024,
                   backend: str = "auto", device: Optional[str] = None, dtype: str = "auto",
                   batch_size: Union[int, str, None] = None, chat_template: Union[bool, str] = "auto",
                   tokenizer: Any = None, progress: bool = False) -> pd.DataFrame:
    """Every (model, task, run): a row with ``accuracy`` (pass@1 in [0, 1]), ``n_questions``,
    ``n_correct``, ``n_boxed`` (responses with a ``\\boxed{}``), ``mean_output_tokens``,
    ``seed`` and ``backend``. Arguments as in :func:`evaluate_models`; a model may also be any
    ``lm_eval.api.model.LM`` instance (used as it is; output lengths need its ``tokenizer``
    attribute or ``tokenizer=``, else they are NaN)."""
    lm_eval = _require_lm_eval()
    torch = require("torch", "benchmark evaluation")

    from lm_eval.api.model import LM

    if isinstance(models, LM):
        models = {type(models).__name__: models}
    named = as_model_dict(models, "run_benchmarks")
    for name, model in named.items():
        if not isinstance(model, LM):
            _check_model(name, model)
    benchmarks = _benchmarks(tasks)
    if not isinstance(runs, (int, np.integer)) or runs < 1:
        raise ValueError(f"runs: expected a positive integer, got {runs!r}")
    seeds = list(range(runs)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != runs:
        raise ValueError(f"seeds: expected {runs} seeds (one per run), got {len(seeds)}")
    if not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p: expected a value in (0, 1], got {top_p!r}")
    if float(temperature) < 0.0:
        raise ValueError(f"temperature: expected >= 0, got {temperature!r}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected a positive integer, got {max_new_tokens!r}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data_dir: {os.fspath(data_dir)!r} is not a folder")
    backend = _resolve_backend(backend)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if batch_size is None:
        batch_size = "auto" if str(device).startswith("cuda") else 1
    gen_kwargs: Dict[str, Any] = {"do_sample": float(temperature) > 0.0, "temperature": float(temperature),
                                  "top_p": float(top_p), "max_gen_toks": int(max_new_tokens)}

    rows = []
    with tempfile.TemporaryDirectory(prefix="postsvd-tasks-") as folder:
        manager = task_manager(folder, [b.key for b in benchmarks], data_dir)
        for name, model in named.items():
            if isinstance(model, LM):  # any lm-eval backend, used as it is
                lm, model_backend = model, type(model).__name__
            else:
                lm = _make_lm(model, backend, tokenizer=tokenizer, device=device, dtype=dtype,
                              batch_size=batch_size, seed=seeds[0])
                model_backend = backend
            tok = getattr(lm, "tokenizer", None) or tokenizer
            if chat_template == "auto":
                use_template = bool(getattr(tok, "chat_template", None))
            else:
                use_template = bool(chat_template)
            for bench in benchmarks:
                for run, seed in enumerate(seeds):
                    run_kwargs = dict(gen_kwargs)
                    if model_backend == "vllm":
                        run_kwargs["seed"] = seed
                    result = lm_eval.simple_evaluate(
                        model=lm, tasks=[bench.task], task_manager=manager, limit=limit,
                        gen_kwargs=run_kwargs, apply_chat_template=use_template, log_samples=True,
                        bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                        torch_random_seed=seed, fewshot_random_seed=seed)
                    samples = result["samples"][bench.task]
                    responses = [_first_response(s) for s in samples]
                    correct = [float(s["exact_match"]) for s in samples]
                    boxed = [_first_filtered(s) != "" for s in samples]
                    lengths = ([len(tok(r, add_special_tokens=False)["input_ids"]) for r in responses]
                               if tok is not None and callable(tok) else [])
                    rows.append({
                        "model": name, "task": bench.label, "run": run, "seed": seed, "backend": model_backend,
                        "accuracy": float(np.mean(correct)) if correct else float("nan"),
                        "n_questions": len(samples), "n_correct": int(sum(correct)),
                        "n_boxed": int(sum(boxed)),
                        "mean_output_tokens": float(np.mean(lengths)) if lengths else float("nan"),
                    })
                    if progress:
                        r = rows[-1]
                        print(f"[postsvd] {name} {bench.label} run {run} (seed {seed}): "
                              f"pass@1 {r['accuracy']:.4f}, {r['mean_output_tokens']:.1f} tokens")
            if lm is not model:
                del lm
    return pd.DataFrame(rows)


def _first_response(sample: Dict[str, Any]) -> str:
    resps = sample["resps"]
    while isinstance(resps, (list, tuple)):
        if not resps:
            return ""
        resps = resps[0]
    return "" if resps is None else str(resps)


def _first_filtered(sample: Dict[str, Any]) -> str:
    filtered = sample.get("filtered_resps", "")
    while isinstance(filtered, (list, tuple)):
        if not filtered:
            return ""
        filtered = filtered[0]
    return "" if filtered is None else str(filtered)


def summarize_runs(per_run: pd.DataFrame, *, ddof: int = 0, digits: int = 2) -> pd.DataFrame:
    """Table 1 from :func:`run_benchmarks` rows: a row per model; per task the column
    ``TASK`` (``"mean ± std"`` of pass@1 in %), ``TASK mean`` and ``TASK std`` (in %),
    ``TASK tokens`` (``"mean ± std"`` of the average output length in tokens) and
    ``TASK tokens mean`` / ``TASK tokens std``. Std over runs with ``ddof``."""
    needed = {"model", "task", "accuracy", "mean_output_tokens"}
    if not isinstance(per_run, pd.DataFrame) or not needed <= set(per_run.columns):
        raise ValueError(f"summarize_runs: expected run_benchmarks rows with columns {sorted(needed)}")
    models = list(dict.fromkeys(per_run["model"]))
    tasks = list(dict.fromkeys(per_run["task"]))

    def spread(values: np.ndarray) -> float:
        return float(np.std(values, ddof=ddof)) if len(values) > ddof else float("nan")

    table = pd.DataFrame(index=pd.Index(models, name="model"))
    for task in tasks:
        for metric, label, scale in (("accuracy", task, 100.0), ("mean_output_tokens", f"{task} tokens", 1.0)):
            means, stds = [], []
            for model in models:
                values = per_run[(per_run["model"] == model) & (per_run["task"] == task)][metric].to_numpy(float)
                means.append(float(np.mean(values)) * scale if len(values) else float("nan"))
                stds.append(spread(values) * scale if len(values) else float("nan"))
            table[label] = [_format(m, s, digits) for m, s in zip(means, stds)]
            table[f"{label} mean"] = means
            table[f"{label} std"] = stds
    table.attrs["runs"] = int(per_run.groupby(["model", "task"]).size().max())
    return table


def _format(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def evaluate_models(models: Union[ModelLike, Mapping[str, ModelLike]],
                    tasks: Union[str, Iterable[str]] = tuple(BENCHMARKS), *, ddof: int = 0,
                    return_runs: bool = False, **options):
    """Evaluate a model and its constructions the way the paper does; returns Table 1.

    ``models``: ``{"Instruct": folder, "replaced": folder2, ...}`` (or one folder).
    ``tasks``: some of ``"gsm8k"``, ``"math500"``, ``"mmlu"``, ``"gpqa"``.
    ``options`` go to :func:`run_benchmarks`: ``data_dir`` (folder with ``<task>.jsonl``
    files, or None for the HF datasets), ``runs=3`` and ``seeds`` (default 0..runs-1),
    ``limit`` (questions per task; testing only), ``temperature=0.2``, ``top_p=0.95``,
    ``max_new_tokens=1024``, ``backend="auto"``, ``device`` (cuda when present),
    ``dtype="auto"`` (the checkpoint's), ``batch_size`` ("auto" on cuda, 1 on the CPU),
    ``chat_template="auto"``, ``tokenizer``, ``progress``.

    Returns the :func:`summarize_runs` table (a row per model, per task ``"mean ± std"`` of
    pass@1 in % plus numeric columns, and the output length in tokens); with
    ``return_runs=True`` the pair ``(table, per_run_rows)``.
    """
    per_run = run_benchmarks(models, tasks, **options)
    table = summarize_runs(per_run, ddof=ddof)
    return (table, per_run) if return_runs else table


def export_hf_datasets(out_dir: Union[str, os.PathLike], tasks: Union[str, Iterable[str]] = tuple(BENCHMARKS), *,
                       limit: Optional[int] = None) -> Dict[str, Path]:
    """Write the local JSONL files (``<task>.jsonl``) from the Hugging Face datasets, e.g. on a
    machine with network or a filled HF cache, for later offline runs with ``data_dir=out_dir``.
    Returns ``{task: path}``."""
    import datasets

    from .tasks import utils as task_utils

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for bench in _benchmarks(tasks):
        data = datasets.load_dataset(bench.hf_path, bench.hf_name, split=bench.hf_split)
        convert = getattr(task_utils, bench.converter)
        path = out / bench.data_file
        with path.open("w", encoding="utf-8") as fh:
            for index, row in enumerate(data):
                if limit is not None and index >= limit:
                    break
                doc = convert(dict(row), index)
                doc.pop("target", None)
                fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
        written[bench.key] = path
    return written
