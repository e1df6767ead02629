"""The bundled model family (examples/models): task splits, corpus, shipped folders,
recorded accuracies and the paper's weight measures recomputed in numpy float64."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from postsvd_family import card, check, corpus, tasks, train  # noqa: E402
from postsvd_family.evaluate import evaluate  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"
NAMES = ("base", "base_alt", "instruct", "reasoning")


@pytest.fixture(scope="module")
def record():
    return json.loads((MODELS / "family.json").read_text())


# --- task generator -------------------------------------------------------------------------

def test_splits_are_disjoint_symmetric_and_cover_every_pair():
    train_pairs = {(p.a, p.b) for p in tasks.all_problems("train")}
    test_pairs = {(p.a, p.b) for p in tasks.all_problems("test")}
    assert not train_pairs & test_pairs
    assert len(train_pairs) + len(test_pairs) == 90 * 90
    assert all((b, a) in test_pairs for a, b in test_pairs)  # a + b and b + a held out together
    assert 0.08 < len(test_pairs) / 8100 < 0.16


def test_problem_lists_are_deterministic():
    first = tasks.problems("test", 50)
    assert first == tasks.problems("test", 50)
    assert first == tasks.problems("test")[:50]
    assert first != tasks.problems("test", 50, seed=1)
    with pytest.raises(ValueError, match="split"):
        tasks.problems("validation")
    with pytest.raises(ValueError, match="n: expected"):
        tasks.problems("test", 10**6)


def test_worked_traces_add_up():
    for p in tasks.all_problems("train")[::7]:
        trace = p.reasoning_target()
        written = [int(d) for d in re.findall(r"write (\d)", trace)]
        carry = re.search(r"last carry (\d)", trace)
        digits = ([int(carry.group(1))] if carry else []) + written[::-1]
        assert int("".join(map(str, digits))) == p.answer
        assert trace.endswith(f"\\boxed{{{p.answer}}}")
        for x, y, rest, total in re.findall(r"(\d) \+ (\d)( \+ 1)? = (\d+)", trace):
            assert int(x) + int(y) + (1 if rest else 0) == int(total)


def test_pretraining_text_holds_no_held_out_sum_and_no_instruction_format():
    docs = corpus.pretraining_documents("pydoc", 30_000, task_fraction=0.5, seed=7)
    text = "\n\n".join(docs)
    # operand pairs (two digits each; column steps add single digits)
    pairs = re.findall(r"\b(\d\d) (?:\+|plus|and) (\d\d)\b", text)
    assert len(pairs) > 100
    assert all(tasks.split_of(int(a), int(b)) == "train" for a, b in pairs)
    assert "Q: What is" not in text
    assert docs == corpus.pretraining_documents("pydoc", 30_000, task_fraction=0.5, seed=7)
    assert set(text) <= set(corpus.ALPHABET)


def test_tokenizer_is_character_level_and_loads_offline(tmp_path):
    corpus.build_tokenizer(tmp_path, 512)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    p = tasks.Problem(37, 85)
    text = p.prompt + p.reasoning_target()
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.padding_side == "left" and tok.pad_token_id != tok.eos_token_id


# --- the shipped folders --------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_loads_offline_in_bf16_and_generates(name, monkeypatch):
    from safetensors import safe_open

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = MODELS / name
    for needed in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json"):
        assert (folder / needed).is_file(), f"{folder / needed} missing"
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    config = transformers.AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.head_dim in (32, 64)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # a class every version knows
    assert tokenizer_config["model_max_length"] == config.max_position_embeddings
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    out = model.generate(**tok(["Q: What is 12 + 34?\nA:"], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, len("Q: What is 12 + 34?\nA:") + 1 + 4) or tok.eos_token_id in out[0].tolist()


def test_family_is_small_enough_to_ship():
    total = sum((MODELS / n / "model.safetensors").stat().st_size for n in NAMES)
    assert total < 25e6


def test_model_card_is_the_record_rendered(record, monkeypatch):
    """README.md says what family.json records: card.model_card renders the shipped card from it (the machine
    and the date the card was written are taken from the shipped card)."""
    shipped = (MODELS / "README.md").read_text()
    machine, day = re.search(r"Wall time on (\S+) with .*?\), (\d{4}-\d{2}-\d{2}): pretraining", shipped).groups()
    monkeypatch.setattr(card.platform, "machine", lambda: machine)
    monkeypatch.setattr(card.time, "strftime", lambda fmt: day)
    assert card.model_card(record) == shipped


@pytest.mark.parametrize("name", ["instruct", "reasoning"])
def test_evaluator_reproduces_recorded_answers(name, record):
    recorded = record["accuracy"][name]
    n = recorded["batch_size"]  # the first batch exactly as recorded: same prompts, padding, threads
    result = evaluate(MODELS / name, n=n, batch_size=recorded["batch_size"], threads=1,
                      max_new_tokens=recorded["max_new_tokens"])
    got = "".join("1" if c else "0" for c in result["rows"]["correct"])
    assert got == recorded["correct_mask"][:n]
    assert result["accuracy"] > 0.8  # the post-trained models learned the task


def test_evaluator_on_base_matches_record_on_a_few_prompts(record):
    # other batch size and length than recorded: allow one flipped answer out of 8
    result = evaluate(MODELS / "base", n=8, batch_size=8, threads=1, max_new_tokens=40)
    recorded = record["accuracy"]["base"]["correct_mask"][:8].count("1") / 8
    assert abs(result["accuracy"] - recorded) <= 1 / 8
    assert result["accuracy"] < 0.5


# --- weight measures (numpy float64) --------------------------------------------------------

def test_pair_measures_known_answers():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 32))
    same = check.pair_measures(w, w)
    assert same["nf"] < 1e-12 and np.allclose(same["ratios"], 1.0)
    scaled = check.pair_measures(w, 0.5 * w)
    assert scaled["nf"] < 1e-12 and np.allclose(scaled["ratios"], 0.5)
    assert scaled["scaling_std"] < 1e-12 and len(scaled["ratios"]) == math.ceil(0.9 * 32)
    # an unrelated matrix: NF near the random-rotation level sqrt(2k)/k
    other = check.pair_measures(w, rng.standard_normal((48, 32)))
    assert 0.5 * math.sqrt(2 * 32) / 32 < other["nf"] < 2 * math.sqrt(2 * 32) / 32
    with pytest.raises(ValueError, match="expected equal shapes"):
        check.pair_measures(w, w[:, :8])


def test_post_models_stay_closer_to_base_than_base_alt(record):
    measures = check.family_measures(MODELS)
    assert measures["nf_post_below_base_alt_everywhere"] == {"instruct": True, "reasoning": True}
    alt = {(r["layer"], r["kind"]): r["nf"] for r in measures["per_matrix"]["base_alt"]}
    for post in ("instruct", "reasoning"):
        for row in measures["per_matrix"][post]:
            assert row["nf"] < 0.5 * alt[(row["layer"], row["kind"])], (post, row)
        for kind, stats in measures["pooled_scaling"][post].items():
            assert abs(stats["mean"] - 1.0) < 0.05 and stats["std"] < 0.05, (post, kind, stats)
    assert measures["per_matrix"] == record["weights"]["per_matrix"]


# --- the training entry point ---------------------------------------------------------------

@pytest.mark.slow  # trains the family's scripts for a few steps
def test_training_smoke_run(tmp_path):
    assert train.main(["--tiny", "--jobs", "1", "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "family.json").read_text())
    assert set(written["accuracy"]) == set(NAMES)
    assert (tmp_path / "README.md").read_text().startswith("# The postsvd model family")
    for name in NAMES:
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / name)
    assert not (tmp_path / ".tokenizer").exists()
