"""The bundled model family (examples/models): task splits, corpus, shipped folders (four models and the
LoRA adapter instruct_lora), recorded accuracies and the paper's weight measures recomputed in numpy float64."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from postsvd_family import card, check, corpus, tasks, train  # noqa: E402
from postsvd_family.evaluate import evaluate, load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "examples" / "models"
NAMES = ("base", "base_alt", "instruct", "reasoning")
ADAPTER = "instruct_lora"


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


def test_family_is_small_enough_to_ship(record):
    total = sum((MODELS / n / "model.safetensors").stat().st_size for n in NAMES)
    assert total < 25e6
    adapter = (MODELS / ADAPTER / "adapter_model.safetensors").stat().st_size
    assert adapter < 1e6
    assert record["sizes_bytes"] == {**{n: (MODELS / n / "model.safetensors").stat().st_size for n in NAMES},
                                     ADAPTER: adapter}


def test_shipped_adapter_is_the_recorded_lora_and_loads_offline_from_the_repository(record, monkeypatch):
    """instruct_lora is a PEFT LoRA folder of the recipe's settings whose base_model_name_or_path resolves from the
    repository root (peft and postsvd read it from the working directory); loaded and merged with peft, it
    generates."""
    from safetensors import safe_open

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO)
    folder = MODELS / ADAPTER
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                          "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((folder / "adapter_config.json").read_text())
    setup = record["recipe"][ADAPTER]
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"]) == (setup["r"], setup["lora_alpha"])
    assert config["target_modules"] == sorted(setup["target_modules"]) == sorted(train.LORA_TARGETS)
    assert not config["use_dora"] and not config["use_rslora"] and not config["rank_pattern"]
    assert config["base_model_name_or_path"] == "examples/models/base"
    assert (REPO / config["base_model_name_or_path"]).resolve() == (MODELS / "base").resolve()
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        names = list(f.keys())
        assert {f.get_slice(k).get_dtype() for k in names} == {"F32"}
        shapes = {k: f.get_slice(k).get_shape() for k in names}
    assert len(names) == 2 * 7 * 4  # lora_A and lora_B of every projection of the 4 layers
    assert record["stages"][ADAPTER]["trainable_parameters"] == sum(math.prod(s) for s in shapes.values())
    assert all(s[0] == setup["r"] for k, s in shapes.items() if ".lora_A." in k)
    import postsvd

    named = postsvd.open_checkpoint(folder)  # postsvd resolves the base the same way
    np.testing.assert_array_equal(postsvd.read_matrix(named, 1, "up"),
                                  postsvd.read_matrix(postsvd.open_checkpoint(folder, MODELS / "base"), 1, "up"))
    model, tok = load_model(folder)  # the base its config names, from the repository root
    assert type(model).__name__ == "LlamaForCausalLM"  # merged: no peft wrapper left
    out = model.generate(**tok(["Q: What is 12 + 34?\nA:"], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert tok.decode(out[0, -4:], skip_special_tokens=True).strip().startswith("46")


def test_model_card_is_the_record_rendered(record, monkeypatch):
    """README.md says what family.json records: card.model_card renders the shipped card from it (the machine
    and the date the card was written are taken from the shipped card)."""
    shipped = (MODELS / "README.md").read_text()
    machine, day = re.search(r"Wall time on (\S+) with .*?\), (\d{4}-\d{2}-\d{2}): pretraining", shipped).groups()
    monkeypatch.setattr(card.platform, "machine", lambda: machine)
    monkeypatch.setattr(card.time, "strftime", lambda fmt: day)
    assert card.model_card(record) == shipped


@pytest.mark.parametrize("name", ["instruct", "reasoning", ADAPTER])
def test_evaluator_reproduces_recorded_answers(name, record):
    recorded = record["accuracy"][name]
    n = recorded["batch_size"]  # the first batch exactly as recorded: same prompts, padding, threads
    result = evaluate(MODELS / name, n=n, batch_size=recorded["batch_size"], threads=1,
                      max_new_tokens=recorded["max_new_tokens"], base=MODELS / "base" if name == ADAPTER else None)
    got = "".join("1" if c else "0" for c in result["rows"]["correct"])
    assert got == recorded["correct_mask"][:n]
    assert result["accuracy"] > 0.8  # the post-trained models learned the task


def test_evaluator_names_an_adapter_base_it_cannot_find(tmp_path, monkeypatch):
    folder = tmp_path / "lora"
    folder.mkdir()
    config = json.loads((MODELS / ADAPTER / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)  # examples/models/base does not resolve from here
    with pytest.raises(FileNotFoundError, match=r"adapter_config.json: base_model_name_or_path "
                                                r"'examples/models/base' is not a folder .*pass base="):
        evaluate(folder, n=1)
    with pytest.raises(ValueError, match="base: given, but .* is not a PEFT adapter folder"):
        evaluate(MODELS / "instruct", n=1, base=MODELS / "base")


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


@pytest.fixture(scope="module")
def measures():
    return check.family_measures(MODELS)


def test_post_models_stay_closer_to_base_than_base_alt(record, measures):
    assert measures["nf_post_below_base_alt_everywhere"] == {"instruct": True, "reasoning": True, ADAPTER: True}
    alt = {(r["layer"], r["kind"]): r["nf"] for r in measures["per_matrix"]["base_alt"]}
    for post in check.POSTS:
        for row in measures["per_matrix"][post]:
            assert row["nf"] < 0.5 * alt[(row["layer"], row["kind"])], (post, row)
        for kind, stats in measures["pooled_scaling"][post].items():
            assert abs(stats["mean"] - 1.0) < 0.05, (post, kind, stats)
            # full fine-tuning scales near-uniformly; the rank-8 adapter moves a few singular values of the MLP
            # matrices by far more than the rest (std 0.08-0.13), so the uniformity check is theirs only
            assert stats["std"] < 0.05 or post == ADAPTER, (post, kind, stats)
    assert measures["per_matrix"] == record["weights"]["per_matrix"]
    assert measures["intruders"] == record["weights"]["intruders"]
    # an unrelated model: every top vector is an intruder (4 layers x top 10 per kind)
    assert set(measures["intruders"]["by_kind"]["base_alt"].values()) == {40}


def test_adapter_reference_merge_is_peft_merge_and_postsvd_reads_it(monkeypatch):
    """check's numpy merge of the shipped adapter (W + alpha/r B A) is what peft's merge_and_unload gives and
    what postsvd reads, to float32 rounding."""
    import postsvd

    base = check.load_matrices(MODELS / "base")
    merged = check.load_adapter_matrices(MODELS / ADAPTER, base)
    model, _ = load_model(MODELS / ADAPTER, base=MODELS / "base")
    state = model.state_dict()
    checkpoint = postsvd.open_checkpoint(MODELS / ADAPTER, MODELS / "base")
    changed = 0
    for (layer, kind), w in merged.items():
        peft_w = state[f"model.layers.{layer}.{check.KIND_TENSORS[kind]}.weight"].double().numpy().T
        np.testing.assert_allclose(w, peft_w, rtol=0, atol=1e-6 * np.abs(w).max())
        np.testing.assert_allclose(postsvd.read_matrix(checkpoint, layer, kind), w, rtol=0,
                                   atol=1e-6 * np.abs(w).max())
        changed += not np.array_equal(w, base[(layer, kind)])
    assert changed == 28


def test_intruder_counts_agree_with_postsvd(measures):
    """check's float64 Algorithm 1 and postsvd's intruders column count the same on the family's pairs."""
    import postsvd

    for name in ("instruct", ADAPTER):
        table = postsvd.compare(MODELS / "base", MODELS / name, progress=False).table
        got = {(int(r.layer), r.kind): int(r.intruders) for r in table.itertuples()}
        assert got == {(r["layer"], r["kind"]): r["intruders"] for r in measures["per_matrix"][name]}, name


# --- the training entry point ---------------------------------------------------------------

@pytest.mark.slow  # trains the family's scripts for a few steps
def test_training_smoke_run(tmp_path):
    assert train.main(["--tiny", "--jobs", "1", "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "family.json").read_text())
    assert set(written["accuracy"]) == set(NAMES) | {ADAPTER}
    assert (tmp_path / "README.md").read_text().startswith("# The postsvd model family")
    for name in NAMES:
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / name)
    assert not (tmp_path / ".tokenizer").exists()
    config = json.loads((tmp_path / ADAPTER / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
    load_model(tmp_path / ADAPTER)  # its base resolves
    assert set(written["weights"]["intruders"]["by_kind"]) == set(check.COMPARED)
    # --lora trains the adapter again from the saved base: the same seed gives the same factors
    before = (tmp_path / ADAPTER / "adapter_model.safetensors").read_bytes()
    assert train.main(["--tiny", "--jobs", "1", "--out", str(tmp_path), "--lora"]) == 0
    assert (tmp_path / ADAPTER / "adapter_model.safetensors").read_bytes() == before
    assert json.loads((tmp_path / "family.json").read_text())["accuracy"]["base"] == written["accuracy"]["base"]


def test_lora_option_needs_a_trained_family(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="family.json: expected the record of a training run"):
        train.main(["--out", str(tmp_path), "--lora"])
    with pytest.raises(SystemExit):
        train.main(["--out", str(tmp_path), "--lora", "--redo-post", "instruct"])
    assert "--lora: give it or --redo-post, not both" in capsys.readouterr().err
