"""Benchmark evaluation (issue 6, item 1) end to end on the project's own models: the bundled
reasoning model and its Construction 10 (attention output-side rotation ablated), through
lm-eval's hf backend with the paper's sampling settings, on a small local task in the GSM8K
format built from the family's held-out additions."""
import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -r requirements.txt)")

import postsvd  # noqa: E402
from postsvd_family import tasks  # noqa: E402
from postsvd.functional.benchmarks import evaluate_models  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"


@pytest.mark.slow  # builds a construction and evaluates three models
def test_family_reasoning_and_its_ablation_table1(tmp_path):
    if not (MODELS / "reasoning" / "model.safetensors").exists():
        pytest.fail(f"bundled models missing under {MODELS}")
    data = tmp_path / "data"
    data.mkdir()
    with (data / "gsm8k.jsonl").open("w") as fh:
        for p in tasks.problems("test")[:6]:  # held out: never seen in training
            fh.write(json.dumps({"question": f"Q: What is {p.a} + {p.b}?\nA:", "answer": f"#### {p.a + p.b}"}) + "\n")
    ablated = tmp_path / "ablation_sa_out"
    postsvd.construct(10, MODELS / "base", MODELS / "reasoning", ablated, group="attention", progress=False)

    table, per_run = evaluate_models({"reasoning": MODELS / "reasoning", "ablation SA,out": ablated}, ["gsm8k"],
                                     data_dir=data, runs=3, max_new_tokens=200, backend="hf", device="cpu",
                                     dtype="float32", return_runs=True)

    assert list(table.index) == ["reasoning", "ablation SA,out"]
    assert per_run.shape[0] == 2 * 3 and (per_run["n_questions"] == 6).all()
    # The reasoning model answers 1010/1010 held-out additions greedily; with temperature 0.2 it
    # still boxes the right sum for at least 4 of 6 in every run (measured: 6 of 6, 148 tokens).
    reasoning = per_run[per_run["model"] == "reasoning"]
    assert (reasoning["accuracy"] >= 4 / 6).all() and (reasoning["n_boxed"] >= 4).all()
    assert reasoning["mean_output_tokens"].between(60, 200).all()
    # Ablating the output-side rotation of attention collapses it (0/1010 greedily; the paper: 0 %).
    assert table.loc["ablation SA,out", "GSM8K mean"] <= 100 / 3
    assert table.loc["reasoning", "GSM8K mean"] - table.loc["ablation SA,out", "GSM8K mean"] >= 50
