"""postsvd.lineage on every architecture postsvd reads: tiny random transformers models of each family
(helpers.MODEL_FIXTURES) derived (weights moved by noise), independent (another seed) and disguised by
every function-preserving change the architecture allows (tests/python/disguise.py, each checked through
transformers: same logits); the null on independent pairs of each family; tied embeddings, a model without
lm_head, added tokens, re-indexed tokens; merges and a dense model upcycled into experts; pairs out of scope
or without the power to answer."""
import copy

import numpy as np
import pytest

import postsvd
from disguise import allowed, disguised_copy, fold_norms
from frontier_models import FRONTIER_MULTIMODAL_TYPES
from helpers import MODEL_FIXTURES, build_tokenizer, fixture_config, tiny_config
from postsvd.lineage import lineage

FAST = dict(num_threads=1, paper_nf=False)
FAMILIES = sorted(MODEL_FIXTURES)
#: Families a transformers causal LM holds whole (the multimodal ones are read through their text tower).
TEXT_FAMILIES = [t for t in FAMILIES if t not in FRONTIER_MULTIMODAL_TYPES]


def _moved(model, scale=0.05, seed=0):
    """A fine-tune stand-in: every weight moved by `scale` of its spread."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * parameter.std() * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """model_type -> folders a (seed 0), b (a moved), other (seed 1), built once per family."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("families")
    cache = {}

    def folders(model_type):
        if model_type not in cache:
            build = MODEL_FIXTURES[model_type]
            out = {name: str(root / f"{model_type}-{name}") for name in ("a", "b", "other")}
            model = build(model_type, seed=0)
            model.save_pretrained(out["a"])
            _moved(model).save_pretrained(out["b"])
            build(model_type, seed=1).save_pretrained(out["other"])
            cache[model_type] = out
        return cache[model_type]

    yield folders
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_architecture_tells_derived_from_independent(family, model_type):
    folders = family(model_type)
    derived = lineage(folders["a"], folders["b"], **FAST)
    assert derived.verdict == "derived" and derived.log10_p < -40, derived.summary()
    mlp = derived.table[derived.table["block"] == "mlp"]
    assert (mlp["statistic"] == mlp["units"]).all()  # every unit keeps its partner
    other = lineage(folders["a"], folders["other"], **FAST)
    assert other.verdict == "independent" and other.p_value > 0.01, other.summary()


@pytest.mark.parametrize("model_type", TEXT_FAMILIES)
def test_every_disguise_an_architecture_allows_at_once_stays_derived(family, model_type, tmp_path):
    folders = family(model_type)
    assert disguised_copy(folders["b"], str(tmp_path / "b"), "all", seed=3) < 1e-4  # same logits
    result = lineage(folders["a"], tmp_path / "b", **FAST)
    assert result.verdict == "derived" and result.log10_p < -40, result.summary()
    changes = {a["alignment"].split(":")[0]: a["change"] for a in result.alignments}
    assert changes["residual-stream rotation"] > 0.5  # a rotation or a signed permutation, undone
    assert changes["MLP hidden-unit permutation"] > 0.8 and changes["KV-group and head permutation"] > 0.3
    if "permute_experts" in allowed(tiny_config_of(folders["a"])):
        assert changes["routed-expert permutation"] > 0.3
    assert disguised_copy(folders["other"], str(tmp_path / "other"), "all", seed=4) < 1e-4
    assert lineage(folders["a"], tmp_path / "other", **FAST).verdict == "independent"


def tiny_config_of(folder):
    import transformers

    return transformers.AutoConfig.from_pretrained(folder)


@pytest.mark.slow
@pytest.mark.parametrize("model_type, disguise", [(t, d) for t in TEXT_FAMILIES for d in allowed(fixture_config(t))])
def test_each_disguise_of_each_architecture_stays_derived(family, model_type, disguise, tmp_path):
    folders = family(model_type)
    assert disguised_copy(folders["b"], str(tmp_path / "b"), disguise, seed=5) < 1e-4
    result = lineage(folders["a"], tmp_path / "b", **FAST)
    assert result.verdict == "derived" and result.log10_p < -40, result.summary()


def test_a_disguise_the_architecture_does_not_allow_is_refused(family, tmp_path):
    # Norms after each block (OLMo 2, Gemma) share the config's eps with the final norm, and a rotation of the
    # residual stream would change what they compute.
    assert "scale_uniformly" not in allowed(tiny_config_of(family("olmo2")["a"]))
    with pytest.raises(ValueError, match="does not allow the disguise scale_uniformly"):
        disguised_copy(family("olmo2")["a"], str(tmp_path / "x"), "scale_uniformly")
    with pytest.raises(ValueError, match="norms fold into the readers only before each block"):
        fold_norms(*_state_and_config(family("gemma2")["a"]))


def _state_and_config(folder):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    return dict(model.state_dict()), model.config


@pytest.mark.parametrize("model_type", FAMILIES)
def test_independent_pairs_of_each_family_hold_the_null(model_type, tmp_path):
    """The FAST subset of the calibration (benchmarks/calibrate_lineage.py): three pairs of independently
    initialized models per family, none derived, p-values not small."""
    build = MODEL_FIXTURES[model_type]
    p_values = []
    for seed in range(3):
        build(model_type, seed=10 + 2 * seed).save_pretrained(tmp_path / f"a{seed}")
        build(model_type, seed=11 + 2 * seed).save_pretrained(tmp_path / f"b{seed}")
        result = lineage(tmp_path / f"a{seed}", tmp_path / f"b{seed}", **FAST)
        assert result.verdict == "independent", result.summary()
        p_values.append(result.p_value)
    assert max(p_values) > 0.05


# ---------------------------------------------------------------------- embeddings and vocabularies

def _llama(seed=0, **changes):
    import torch
    import transformers

    config = tiny_config("llama")
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def test_tied_embeddings_and_a_model_without_lm_head(tmp_path):
    tied = _llama(seed=3, tie_word_embeddings=True)
    tied.save_pretrained(tmp_path / "tied")
    _moved(copy.deepcopy(tied)).save_pretrained(tmp_path / "tied-b")
    result = lineage(tmp_path / "tied", tmp_path / "tied-b", **FAST)
    assert result.verdict == "derived", result.summary()
    # A bare LlamaModel: no lm_head, names without "model.": read through its embedding, tied.
    parent = _llama(seed=0)
    parent.save_pretrained(tmp_path / "parent")
    _moved(copy.deepcopy(parent)).model.save_pretrained(tmp_path / "bare")
    assert "lm_head.weight" not in postsvd.checkpoint.open_checkpoint(tmp_path / "bare")
    assert lineage(tmp_path / "parent", tmp_path / "bare", **FAST).verdict == "derived"
    assert lineage(tmp_path / "tied", tmp_path / "bare", **FAST).verdict == "independent"


def test_added_tokens_are_compared_on_the_shared_rows(tmp_path):
    tokenizer = build_tokenizer()
    parent = _llama(seed=0, vocab_size=len(tokenizer))
    parent.save_pretrained(tmp_path / "a")
    tokenizer.save_pretrained(tmp_path / "a")
    chat = _moved(copy.deepcopy(parent))
    added = tokenizer.add_tokens(["<|user|>", "<|assistant|>", "<|end|>"], special_tokens=True)
    chat.resize_token_embeddings(len(tokenizer) + 5)  # and padded: 8 rows more
    chat.save_pretrained(tmp_path / "chat")
    tokenizer.save_pretrained(tmp_path / "chat")
    result = lineage(tmp_path / "a", tmp_path / "chat", **FAST)
    assert added == 3 and result.verdict == "derived", result.summary()
    vocabulary = result.alignments[-1]
    assert vocabulary["change"] == 8 and f"the {len(tokenizer) - 3} token rows" in vocabulary["alignment"]
    # An unrelated model with the grown vocabulary: independent on the same rows.
    other = _llama(seed=1, vocab_size=len(tokenizer) + 5)
    other.save_pretrained(tmp_path / "other")
    assert lineage(tmp_path / "a", tmp_path / "other", **FAST).verdict == "independent"


def test_tokens_at_other_ids_are_out_of_scope(tmp_path):
    import json

    parent = _llama(seed=0, vocab_size=len(build_tokenizer()))
    for name in ("a", "b"):
        parent.save_pretrained(tmp_path / name)
        build_tokenizer().save_pretrained(tmp_path / name)
    path = tmp_path / "b" / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[10:12]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # two tokens swap ids
    path.write_text(json.dumps(data))
    result = lineage(tmp_path / "a", tmp_path / "b", **FAST)
    assert result.verdict == "inconclusive" and result.p_value is None
    assert any("map tokens to other ids (2 of the" in r for r in result.reasons), result.reasons


# ---------------------------------------------------------------------- merges and upcycling

def test_a_merge_is_derived_from_each_parent(tmp_path):
    import torch

    parents = [_llama(seed=s) for s in (0, 1)]
    merged = _llama(seed=0)
    with torch.no_grad():
        for key, value in merged.state_dict().items():
            value.copy_(0.5 * parents[0].state_dict()[key] + 0.5 * parents[1].state_dict()[key])
    for i, model in enumerate(parents + [merged, _llama(seed=2)]):
        model.save_pretrained(tmp_path / f"m{i}")
    assert lineage(tmp_path / "m0", tmp_path / "m2", **FAST).verdict == "derived"
    assert lineage(tmp_path / "m1", tmp_path / "m2", **FAST).verdict == "derived"
    assert lineage(tmp_path / "m3", tmp_path / "m2", **FAST).verdict == "independent"
    # Layers taken whole from a parent: that parent's layers carry the verdict.
    spliced = copy.deepcopy(parents[0])
    spliced.model.layers[1].load_state_dict(_moved(copy.deepcopy(parents[0])).model.layers[1].state_dict())
    spliced.model.layers[0].load_state_dict(_llama(seed=4).model.layers[0].state_dict())
    spliced.save_pretrained(tmp_path / "spliced")
    result = lineage(tmp_path / "m0", tmp_path / "spliced", **FAST)
    mlp = result.table[result.table["block"] == "mlp"]
    assert result.verdict == "derived" and list(mlp["supports"]) == [False, True], result.summary()


def _upcycled(dense, experts, split, tmp_path):
    """A Mixtral whose experts start from `dense`'s MLP: copies of it (sparse upcycling), or `split`: each
    expert a slice of its units (fine-grained); attention, norms and embeddings copied; moved by noise."""
    import torch
    import transformers

    base = dense.config
    width = base.intermediate_size // experts if split else base.intermediate_size
    config = transformers.MixtralConfig(
        **{key: getattr(base, key) for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                               "num_key_value_heads", "vocab_size", "max_position_embeddings")},
        intermediate_size=width, num_local_experts=experts, num_experts_per_tok=2)
    torch.manual_seed(9)
    moe = transformers.MixtralForCausalLM(config).eval()
    state, source = moe.state_dict(), dense.state_dict()
    order = torch.as_tensor(np.random.default_rng(0).permutation(base.intermediate_size))
    with torch.no_grad():
        for key, value in state.items():
            if key in source and value.shape == source[key].shape:
                value.copy_(source[key])
        for layer in range(base.num_hidden_layers):
            gate, up, down = (source[f"model.layers.{layer}.mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
            for e in range(experts):
                units = order[e * width:(e + 1) * width] if split else order
                state[f"model.layers.{layer}.mlp.experts.gate_up_proj"][e].copy_(torch.cat([gate[units], up[units]]))
                state[f"model.layers.{layer}.mlp.experts.down_proj"][e].copy_(down[:, units])
    moe.load_state_dict(state)
    folder = tmp_path / f"upcycled-{experts}-{split}"
    _moved(moe, 0.1).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("split", [False, True])
def test_a_dense_model_upcycled_into_experts_is_derived_from_it(tmp_path, split):
    dense = _llama(seed=0)
    dense.save_pretrained(tmp_path / "dense")
    _llama(seed=1).save_pretrained(tmp_path / "other")
    folder = _upcycled(dense, 3 if split else 2, split, tmp_path)
    result = lineage(tmp_path / "dense", folder, **FAST)
    assert result.verdict == "derived", result.summary()
    mlp = result.table[result.table["block"] == "mlp"]
    assert (mlp["statistic"] == mlp["units"]).all() and "routed experts" in mlp["kinds"].iloc[0]
    assert result.nf_table is None  # no projection pairs to compare: not the same architecture
    assert lineage(tmp_path / "other", folder, **FAST).verdict == "independent"


# ---------------------------------------------------------------------- scope and power

def test_architectures_that_read_the_residual_stream_otherwise_are_out_of_scope(family):
    result = lineage(family("llama")["a"], family("gemma2")["a"], **FAST)
    assert result.verdict == "inconclusive"
    assert any("the architectures differ (llama: RMSNorm before each block" in r and
               "gemma2: GemmaRMSNorm before and after each block" in r for r in result.reasons), result.reasons


def test_moe_layers_that_cannot_be_paired_are_out_of_scope(tmp_path):
    import transformers

    for experts in (3, 4):
        config = transformers.MixtralConfig(**{k: getattr(tiny_config("llama"), k) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "vocab_size")}, num_local_experts=experts, num_experts_per_tok=2)
        transformers.MixtralForCausalLM(config).save_pretrained(tmp_path / f"e{experts}")
    result = lineage(tmp_path / "e3", tmp_path / "e4", **FAST)
    assert result.verdict == "inconclusive"
    assert result.reasons == ["layer 0: the routed experts differ (3 experts of 48 units and 4 of 48): experts are "
                              "matched one to one"]


def test_too_few_experts_and_units_is_inconclusive(tmp_path):
    import transformers

    config = transformers.MixtralConfig(hidden_size=32, intermediate_size=2, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                        num_local_experts=2, num_experts_per_tok=1)
    transformers.MixtralForCausalLM(config).save_pretrained(tmp_path / "a")
    result = lineage(tmp_path / "a", tmp_path / "a", **FAST)  # identical, yet 4 units in 2 experts
    assert result.verdict == "inconclusive"
    assert any("too few MLP units" in r and "4 units in 1 layer" in r for r in result.reasons), result.reasons


def test_the_text_tower_of_a_multimodal_folder_is_its_text_model(tmp_path):
    import transformers

    multimodal = MODEL_FIXTURES["gemma3"]("gemma3", seed=0)
    multimodal.save_pretrained(tmp_path / "multimodal")
    text = transformers.Gemma3ForCausalLM(multimodal.config.text_config).eval()
    tower = {key.replace("model.language_model.", "model."): value for key, value in multimodal.state_dict().items()
             if key.startswith("model.language_model.")}
    text.load_state_dict({**tower, "lm_head.weight": tower["model.embed_tokens.weight"]})
    _moved(text).save_pretrained(tmp_path / "text")
    result = lineage(tmp_path / "multimodal", tmp_path / "text", **FAST)
    assert result.verdict == "derived" and result.nf_table is None, result.summary()


def test_cli_answers_a_mismatched_pair_with_the_reason(family, capsys):
    from postsvd import cli

    code = cli.main(["lineage", family("llama")["a"], family("olmo2")["a"], "--threads", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "INCONCLUSIVE" in out and "inconclusive: the architectures differ" in out
