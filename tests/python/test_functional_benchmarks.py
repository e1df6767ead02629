"""Benchmark pipeline (lm-eval tasks, \\boxed{} extraction, pass@1 over runs, output length).

A scripted lm-eval model with known answers checks prompts, settings and scoring exactly;
a tiny random Llama checks the hf backend end to end (shape, runs, ranges), not accuracy.
"""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")

from lm_eval.api.model import LM  # noqa: E402

from postsvd.functional import benchmarks  # noqa: E402
from postsvd.functional.benchmarks import (  # noqa: E402
    evaluate_models,
    export_hf_datasets,
    run_benchmarks,
    summarize_runs,
    task_manager,
)
from postsvd.functional.tasks.utils import (  # noqa: E402
    boxed_filter,
    extract_answer,
    gpqa_doc,
    gsm8k_doc,
    last_boxed,
    mmlu_doc,
    normalize_answer,
)
from helpers import build_tokenizer  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "functional"
SIMPLE = "Please put your final answer within \\boxed{}."
HARD = "Please put your final answer within \\boxed{} and keep your thought process as short as possible."

# responses keyed by a piece of the question; the comment says how each one scores
GSM8K_SCRIPT = {
    "Tom has 3 apples": "3 + 4 = 7, so the answer is \\boxed{7}.",          # right
    "A box holds 12 pens": "5 boxes times 12 is \\boxed{60.00}",          # right after normalization
    "Sara had 1,500": "First \\boxed{1250}, no wait: \\boxed{1300}",      # wrong: the last box counts
    "81 divided by 9": "It is 9.",                                        # wrong: no box
}
MMLU_SCRIPT = {
    "What is 2 + 2?": "\\boxed{B}",                 # right
    "Which number is prime?": "\\boxed{\\text{(C)}}",  # right
    "What is 10 - 3?": "The answer is \\boxed{B}",  # wrong (A)
}


class ScriptedLM(LM):
    """An lm-eval model that answers from a script and records what it was asked."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.tokenizer = build_tokenizer()
        self.requests = []

    def generate_until(self, requests, disable_tqdm=False):
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            self.requests.append((context, dict(gen_kwargs)))
            out.append(next(resp for key, resp in self.script.items() if key in context))
        return out

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError("generate_until only")

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError("generate_until only")

    @property
    def tokenizer_name(self):
        return "scripted"

    def chat_template(self, chat_template=False):
        return "scripted"

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in chat_history)
        return text + ("<|assistant|>" if add_generation_prompt else "")


# ----------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}} then", "\\frac{1}{2}"),
    ("a \\boxed{3} b \\boxed{4}", "4"),
    ("nested \\boxed{\\sqrt{x^{2}}}.", "\\sqrt{x^{2}}"),
    ("\\boxed 5$", "5"),
    ("first \\boxed{2} then \\boxed{unclosed", "2"),
    ("\\fbox{8}", "8"),
    ("no box here", None),
    ("", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("raw, mc, expected", [
    ("1,234.50", False, "1234.5"),
    (" 18.00 ", False, "18"),
    ("$18", False, "18"),
    ("\\dfrac{1}{2}", False, "\\frac{1}{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", False, "(3,\\frac{\\pi}{2})"),
    ("90^\\circ", False, "90"),
    ("\\text{(B)}", True, "B"),
    ("c.", True, "C"),
    ("D. Paris", True, "D"),
    ("Bob", True, "Bob"),
    (None, False, ""),
])
def test_normalize_answer(raw, mc, expected):
    assert normalize_answer(raw, mc) == expected


def test_boxed_filter_on_hand_written_outputs():
    resps = [["The answer: \\boxed{1,000}."], ["\\boxed{(a)}"], ["nothing"]]
    docs = [{"question": "q"}, {"question": "q", "choices": ["1", "2", "3", "4"]}, {"question": "q"}]
    assert boxed_filter(resps, docs) == [["1000"], ["A"], [""]]
    assert extract_answer("x \\boxed{7} y") == "7"


def test_docs_from_local_and_hf_layouts():
    assert gsm8k_doc({"question": "q", "answer": "work\n#### 1,250"})["target"] == "1250"
    assert mmlu_doc({"question": "q", "choices": list("wxyz"), "answer": 2})["answer"] == "C"
    raw = {"Question": "Which?", "Correct Answer": "right", "Incorrect Answer 1": "w1",
           "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3"}
    doc = gpqa_doc(raw)
    assert sorted(doc["choices"]) == ["right", "w1", "w2", "w3"]
    assert doc["choices"]["ABCD".index(doc["answer"])] == "right"
    assert gpqa_doc(raw) == doc  # the shuffle is fixed by the question
    with pytest.raises(ValueError, match="expected 4 choices"):
        mmlu_doc({"question": "q", "choices": ["a", "b"], "answer": 0})
    with pytest.raises(ValueError, match="answer must be A-D or 0-3"):
        mmlu_doc({"question": "q", "choices": list("wxyz"), "answer": "E"})
    with pytest.raises(ValueError, match=r"row 5 has none of the fields \['question'\]"):
        gsm8k_doc({"answer": "#### 3"}, 5)


# ----------------------------------------------------------------------------- scripted model
@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_scripted_model_prompts_settings_and_scores():
    lm = ScriptedLM({**GSM8K_SCRIPT, **MMLU_SCRIPT})
    table, per_run = evaluate_models({"scripted": lm}, ["gsm8k", "mmlu"], data_dir=DATA, runs=3,
                                     chat_template=True, return_runs=True)
    # every question asked once per run, with the paper's settings
    assert len(lm.requests) == 3 * (4 + 3)
    for context, gen_kwargs in lm.requests:
        assert gen_kwargs["temperature"] == 0.2 and gen_kwargs["top_p"] == 0.95
        assert gen_kwargs["do_sample"] is True and gen_kwargs["max_gen_toks"] == 1024
        assert gen_kwargs["until"] == []
    gsm8k_prompt = next(c for c, _ in lm.requests if "Tom has 3 apples" in c)
    assert gsm8k_prompt == (f"<|system|>{SIMPLE}<|end|><|user|>Tom has 3 apples and buys 4 more. "
                            "How many apples does he have now?<|end|><|assistant|>")
    mmlu_prompt = next(c for c, _ in lm.requests if "2 + 2" in c)
    assert mmlu_prompt == (f"<|system|>{HARD}<|end|><|user|>What is 2 + 2? You have four options, and they are: "
                           "A.3 B.4 C.5 D.22 Please select the correct option and just give A, B, C or D. "
                           "For example, if you think the answer is A, just give \\boxed{A} as the answer."
                           "<|end|><|assistant|>")
    # per-run rows: known scores, output length = characters (character-level tokenizer)
    assert list(per_run["task"]) == ["GSM8K"] * 3 + ["MMLU"] * 3
    assert list(per_run["seed"]) == [0, 1, 2] * 2
    gsm = per_run[per_run["task"] == "GSM8K"]
    assert np.allclose(gsm["accuracy"], 0.5) and (gsm["n_correct"] == 2).all() and (gsm["n_boxed"] == 3).all()
    assert np.allclose(gsm["mean_output_tokens"], np.mean([len(r) for r in GSM8K_SCRIPT.values()]))
    mmlu = per_run[per_run["task"] == "MMLU"]
    assert np.allclose(mmlu["accuracy"], 2 / 3) and (mmlu["n_questions"] == 3).all()
    # Table 1 layout
    assert list(table.index) == ["scripted"]
    assert table.loc["scripted", "GSM8K"] == "50.00 ± 0.00"
    assert table.loc["scripted", "MMLU mean"] == pytest.approx(200 / 3)
    assert table.loc["scripted", "GSM8K tokens mean"] == pytest.approx(gsm["mean_output_tokens"].iloc[0])


def test_plain_text_prompt_without_chat_template():
    lm = ScriptedLM(GSM8K_SCRIPT)
    run_benchmarks({"plain": lm}, "gsm8k", data_dir=DATA, runs=1, limit=1, chat_template=False)
    context, _ = lm.requests[0]
    assert context.startswith(SIMPLE) and "<|system|>" not in context
    assert context.rstrip().endswith("How many apples does he have now?")


def test_summarize_runs_mean_and_std():
    per_run = pd.DataFrame({"model": ["m"] * 3, "task": ["GSM8K"] * 3, "accuracy": [0.5, 0.6, 0.7],
                            "mean_output_tokens": [100.0, 110.0, 120.0]})
    table = summarize_runs(per_run)
    assert table.loc["m", "GSM8K mean"] == pytest.approx(60.0)
    assert table.loc["m", "GSM8K std"] == pytest.approx(100 * np.std([0.5, 0.6, 0.7]))
    assert table.loc["m", "GSM8K"] == "60.00 ± 8.16"
    assert table.loc["m", "GSM8K tokens"] == "110.00 ± 8.16"
    sample_std = summarize_runs(per_run, ddof=1).loc["m", "GSM8K std"]
    assert sample_std == pytest.approx(10.0)
    with pytest.raises(ValueError, match="expected run_benchmarks rows"):
        summarize_runs(pd.DataFrame({"model": ["m"]}))


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_export_hf_datasets_writes_local_files(tmp_path, monkeypatch):
    import datasets

    raw = {
        "openai/gsm8k": [{"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3+4=7\n#### 7"}],
        "cais/mmlu": [{"question": "What is 2 + 2?", "subject": "math", "choices": ["3", "4", "5", "22"],
                       "answer": 1}],
    }
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(raw[path])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    written = export_hf_datasets(tmp_path, ["gsm8k", "mmlu"])
    assert calls == [("openai/gsm8k", "main", "test"), ("cais/mmlu", "all", "dev")]
    rows = [json.loads(line) for line in written["mmlu"].read_text().splitlines()]
    assert rows == [{"question": "What is 2 + 2?", "choices": ["3", "4", "5", "22"], "answer": "B"}]
    monkeypatch.undo()
    lm = ScriptedLM({**GSM8K_SCRIPT, **MMLU_SCRIPT})
    per_run = run_benchmarks({"s": lm}, ["gsm8k", "mmlu"], data_dir=tmp_path, runs=1)
    assert list(per_run["accuracy"]) == [1.0, 1.0]


def test_hf_source_task_configs(tmp_path):
    manager = task_manager(tmp_path / "tasks", data_dir=None)
    for task in ("postsvd_gsm8k", "postsvd_math500", "postsvd_mmlu", "postsvd_gpqa"):
        assert task in manager.all_tasks
    text = (tmp_path / "tasks" / "postsvd_mmlu.yaml").read_text()
    assert 'dataset_path: "cais/mmlu"' in text and 'test_split: "dev"' in text


def test_bad_arguments(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="unknown benchmark 'arc'"):
        run_benchmarks({"m": tiny_model_dir}, ["arc"], data_dir=DATA)
    with pytest.raises(FileNotFoundError, match="math500.jsonl"):
        run_benchmarks({"m": tiny_model_dir}, ["math500"], data_dir=DATA, runs=1)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        run_benchmarks({"m": tmp_path}, ["gsm8k"], data_dir=DATA)
    with pytest.raises(ValueError, match="seeds: expected 3 seeds"):
        run_benchmarks({"m": tiny_model_dir}, ["gsm8k"], data_dir=DATA, seeds=[1, 2])
    with pytest.raises(ValueError, match="backend: expected"):
        run_benchmarks({"m": tiny_model_dir}, ["gsm8k"], data_dir=DATA, backend="tgi")
    assert "hf" in benchmarks.available_backends()


# ----------------------------------------------------------------------------- real hf backend
@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_tiny_models_end_to_end_hf(tiny_model_dir, tiny_model_dir_b):
    table, per_run = evaluate_models({"Instruct": tiny_model_dir, "replaced": tiny_model_dir_b}, ["gsm8k"],
                                     data_dir=DATA, runs=3, limit=2, max_new_tokens=8, backend="hf",
                                     device="cpu", dtype="float32", return_runs=True)
    assert per_run.shape[0] == 2 * 3
    assert set(per_run["backend"]) == {"hf"}
    assert list(per_run["run"]) == [0, 1, 2, 0, 1, 2]
    assert per_run["accuracy"].between(0.0, 1.0).all()
    assert (per_run["n_questions"] == 2).all()
    assert (per_run["mean_output_tokens"] > 0).all() and (per_run["mean_output_tokens"] <= 8).all()
    assert list(table.index) == ["Instruct", "replaced"]
    assert {"GSM8K", "GSM8K mean", "GSM8K std", "GSM8K tokens", "GSM8K tokens mean"} <= set(table.columns)
    assert table["GSM8K mean"].between(0.0, 100.0).all()
    assert all(" ± " in v for v in table["GSM8K"])
    assert not math.isnan(table.loc["Instruct", "GSM8K tokens mean"])
