"""Functional checks of the paper: what the modified models do.

* :func:`attention_entropy` / :func:`plot_attention_entropy`: attention entropy per layer
  and head (Appendix C.2, Fig. 4b / 15);
* :func:`linear_cka`, :func:`cka_matrix` / :func:`plot_cka`: linear CKA between two
  models' per-layer representations (Appendix D.2, Fig. 6 / 19);
* :func:`evaluate_models`: GSM8K, MATH-500, MMLU and GPQA with lm-evaluation-harness, the
  paper's settings and a Table-1-shaped DataFrame (Appendix C.1, H.1).

Needs torch and transformers (and ``lm-eval[hf]`` for the benchmarks); none of it needs
the compiled postsvd core.
"""
from .benchmarks import BENCHMARKS, evaluate_models, export_hf_datasets, run_benchmarks, summarize_runs
from .cka import cka_matrix, layer_representations, linear_cka, plot_cka
from .entropy import attention_entropy, entropy_of_attention, plot_attention_entropy
from ._models import HARD_SYSTEM_PROMPT, SIMPLE_SYSTEM_PROMPT

__all__ = [
    "attention_entropy",
    "entropy_of_attention",
    "plot_attention_entropy",
    "linear_cka",
    "layer_representations",
    "cka_matrix",
    "plot_cka",
    "evaluate_models",
    "run_benchmarks",
    "summarize_runs",
    "export_hf_datasets",
    "BENCHMARKS",
    "SIMPLE_SYSTEM_PROMPT",
    "HARD_SYSTEM_PROMPT",
]
