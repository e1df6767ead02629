"""Frontier architectures (qwen3, gemma3 / gemma3_text, olmo2, olmo3, glm4_moe, gpt_oss, llama4 / llama4_text,
deepseek_v2 / deepseek_v3) from tiny random transformers models: postsvd's (layer, kind, expert) matrices equal
what the transformers modules compute with; compare() matches the float64 numpy reference; missing and misshapen
tensors give errors naming them; constructions load in transformers and generate."""
import json
import os

import numpy as np
import pytest

import postsvd
import reference
from frontier_models import (
    FRONTIER_MULTIMODAL_TYPES,
    FRONTIER_TEXT_TYPES,
    build_frontier_model,
    expected_matrices,
    perturbed,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

ALL_TYPES = FRONTIER_TEXT_TYPES + FRONTIER_MULTIMODAL_TYPES


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Factory: saved(model_type, which="base"|"post") -> (folder, model), float32 on disk, built once."""
    cache = {}

    def get(model_type, which="base"):
        key = (model_type, which)
        if key not in cache:
            model = build_frontier_model(model_type) if which == "base" else perturbed(model_type)
            folder = tmp_path_factory.mktemp(f"{model_type}-{which}")
            model.save_pretrained(folder)
            cache[key] = (str(folder), model)
        return cache[key]

    return get


def label(expert):
    return "shared" if expert == postsvd._core.SHARED_EXPERT else expert


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_matrices_equal_transformers_modules(saved, model_type):
    folder, model = saved(model_type)
    arch = postsvd.architecture(folder)
    assert arch["model_type"] == model_type and arch["num_layers"] == 2
    expected = expected_matrices(model, model_type)
    assert {(s["layer"], s["kind"], label(s["expert"])) for s in arch["matrices"]} == set(expected)
    checkpoint = postsvd.open_checkpoint(folder)
    for (layer, kind, expert), matrix in expected.items():
        got = postsvd.read_matrix(checkpoint, layer, kind, expert=expert)
        assert got.shape == matrix.shape, (layer, kind, expert)
        assert np.array_equal(got, matrix), (layer, kind, expert)


@pytest.mark.parametrize("model_type", ["qwen3", "gemma3", "glm4_moe", "gpt_oss", "llama4_text", "deepseek_v3",
                                        "deepseek_v2"])
def test_compare_matches_float64_reference(saved, model_type):
    base, base_model = saved(model_type)
    post, post_model = saved(model_type, "post")
    wb, wp = expected_matrices(base_model, model_type), expected_matrices(post_model, model_type)
    result = postsvd.compare(base, post, dtype="float64", progress=False)
    assert len(result.records) == len(wb)
    for record in result.records:
        key = (record["layer"], record["kind"], label(record["expert"]))
        ref = reference.measures(wb[key], wp[key])
        np.testing.assert_allclose(record["sigma_base"], ref["sigma_base"], rtol=1e-10, atol=1e-12, err_msg=str(key))
        np.testing.assert_allclose(record["scaling"], ref["scaling"], rtol=1e-8, err_msg=str(key))
        assert record["scaling_mean"] == pytest.approx(ref["scaling_mean"], rel=1e-9), key
        assert record["nf"] == pytest.approx(ref["nf"], rel=1e-6, abs=1e-9), key


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_moe_tables_name_the_shared_expert_and_select_experts(saved, tmp_path):
    base, _ = saved("deepseek_v3")
    post, _ = saved("deepseek_v3", "post")
    result = postsvd.compare(base, post, progress=False)
    table = result.table
    moe = table[(table.layer == 1) & (table.kind == "gate")]
    assert list(moe.expert) == [0, 1, 2, 3, "shared"]
    assert set(table[table.layer == 0].expert) == {-1}  # first_k_dense_replace = 1: layer 0 dense
    assert set(table.kind) == {"q_a", "q_b", "kv_a", "kv_b_k", "kv_b_v", "o", "gate", "up", "down"}
    kinds = result.kind_table().set_index("kind")
    assert kinds.loc["gate", "experts"] == 5 and kinds.loc["o", "experts"] == 0
    assert kinds.loc["gate", "expert_nf_mean_std"] > 0
    assert result.svsm("gate", expert="shared").shape == (12, 1)
    grid = result.nf_by_expert("down")
    assert list(grid.index) == [0, 1, 2, 3, "shared"] and list(grid.columns) == [1]
    row = table[(table.layer == 1) & (table.kind == "down") & (table.expert == "shared")]
    assert grid.loc["shared", 1] == row.nf.item()
    written = [os.path.basename(p) for p in result.save(tmp_path / "out")]
    assert "nf_experts.png" in written and "table.csv" in written

    chosen = postsvd.compare(base, post, experts="0-1,shared", kinds="mlp", progress=False).table
    assert set(chosen[chosen.layer == 1].expert) == {0, 1, "shared"}
    assert set(chosen[chosen.layer == 0].expert) == {-1}  # the dense layer is kept
    attention = postsvd.compare(base, post, kinds="attention", layers=0, progress=False)
    assert attention.kinds == ["o", "q_a", "q_b", "kv_a", "kv_b_k", "kv_b_v"]
    with pytest.raises(postsvd.InvalidArgumentError, match="7 not in this deepseek_v3 model"):
        postsvd.compare(base, post, experts="7", progress=False)
    with pytest.raises(postsvd.InvalidArgumentError, match="kinds: k not present in this model"):
        postsvd.compare(base, post, kinds="k", progress=False)


def test_kind_table_comes_from_the_core():
    pairs = postsvd._core.kinds()
    assert postsvd.KINDS == tuple(name for name, _ in pairs)
    groups = dict(pairs)
    assert {k for k, g in groups.items() if g == "mlp"} == {"gate", "up", "down"}
    assert {"q", "k", "v", "o", "q_a", "q_b", "kv_a", "kv_b_k", "kv_b_v"} == {
        k for k, g in groups.items() if g == "attention"}


def rewrite(folder, out, change):
    """A copy of `folder` with `change(tensors)` applied to its model.safetensors."""
    os.makedirs(out, exist_ok=True)
    tensors = safetensors_torch.load_file(os.path.join(folder, "model.safetensors"))
    change(tensors)
    safetensors_torch.save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json")) as f:
        config = f.read()
    with open(os.path.join(out, "config.json"), "w") as f:
        f.write(config)
    return str(out)


@pytest.mark.parametrize("model_type, tensor, expected_shape", [
    ("deepseek_v3", "model.layers.1.self_attn.kv_b_proj.weight", "[56, 16]"),
    ("llama4_text", "model.layers.1.feed_forward.experts.gate_up_proj", "[3, 32, 96]"),
    ("gpt_oss", "model.layers.0.mlp.experts.down_proj", "[3, 48, 32]"),
])
def test_missing_and_misshapen_tensors_are_named(saved, tmp_path, model_type, tensor, expected_shape):
    folder, _ = saved(model_type)
    missing = rewrite(folder, tmp_path / "missing", lambda t: t.pop(tensor))
    with pytest.raises(postsvd.BadCheckpointError, match=f"missing tensor '{tensor}'.*{model_type}"):
        postsvd.architecture(missing)

    def shrink(tensors):
        tensors[tensor] = tensors[tensor][..., :-1].contiguous()

    misshapen = rewrite(folder, tmp_path / "misshapen", shrink)
    with pytest.raises(postsvd.BadCheckpointError) as error:
        postsvd.architecture(misshapen)
    message = str(error.value)
    assert tensor in message and "model.safetensors" in message
    assert f"expected shape {expected_shape}" in message and "got [" in message


def test_multimodal_text_config_defaults(saved, tmp_path):
    """Hub gemma3 configs leave the text_config keys that equal Gemma3TextConfig's defaults out."""
    folder, _ = saved("gemma3")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    defaults = transformers.Gemma3TextConfig()
    assert config["text_config"]["num_attention_heads"] != defaults.num_attention_heads
    config["text_config"].pop("num_key_value_heads")
    out = tmp_path / "gemma3-defaults"
    rewrite(folder, out, lambda t: None)
    with open(out / "config.json", "w") as f:
        json.dump(config, f)
    # The tiny model has 2 kv heads; the default (4) now applies and k_proj's shape disagrees, by name.
    with pytest.raises(postsvd.BadCheckpointError, match=r"k_proj.weight.*expected shape \[32, 32\]"):
        postsvd.architecture(str(out))


def construct_14_reference(w_base, w_post):
    """Construction 14 in float64: U_post S_base V_post^T."""
    _, s_base, _ = reference.svd(w_base)
    u_post, _, v_post = reference.svd(w_post)
    return u_post @ np.diag(s_base) @ v_post.T


@pytest.mark.parametrize("model_type", ["deepseek_v3", "llama4_text", "qwen3"])
def test_construction_loads_in_transformers_and_generates(saved, tmp_path, model_type):
    base, base_model = saved(model_type)
    post, post_model = saved(model_type, "post")
    out = tmp_path / "constructed"
    postsvd.construct(14, base=base, post=post, out=out, dtype="float64", progress=False)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    wb, wp = expected_matrices(base_model, model_type), expected_matrices(post_model, model_type)
    got = expected_matrices(loaded, model_type)
    assert set(got) == set(wb)
    for key, w in got.items():
        expected = construct_14_reference(wb[key], wp[key])
        np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max(), err_msg=str(key))
    prompt = torch.tensor([[1, 5, 9, 13]])
    generated = loaded.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 8)
    with torch.no_grad():
        assert torch.isfinite(loaded(prompt).logits).all()


def test_construction_9_alpha_on_mla_kinds(saved, tmp_path, related_pair):
    """Construction 9's alpha' applies to DeepSeek's MLA kinds (sigma of the output = alpha' sigma_base,
    and the model generates); an alpha' for a kind the model lacks is an error, not silently ignored."""
    base, base_model = saved("deepseek_v3")
    post, _ = saved("deepseek_v3", "post")
    alpha = {"q_a": 0.5, "kv_b_k": 1.25, "kv_b_v": 0.75, "o": 1.0, "q_b": 1.0, "kv_a": 2.0}
    out = tmp_path / "nine"
    result = postsvd.construct(9, base=base, post=post, out=out, group="attention", alpha=alpha, dtype="float64",
                               progress=False)
    assert result.alpha == alpha
    for kind, a in alpha.items():
        for layer in (0, 1):
            expected = a * np.linalg.svd(postsvd.read_matrix(base, layer, kind, dtype="float64"), compute_uv=False)
            got = np.linalg.svd(postsvd.read_matrix(str(out), layer, kind, dtype="float64"), compute_uv=False)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * expected.max(), err_msg=(kind, layer))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    generated = loaded.generate(torch.tensor([[1, 5, 9, 13]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 8)
    with pytest.raises(postsvd.InvalidArgumentError, match=r"this llama model has no 'q_a' matrices; its kinds "
                                                           r"are q, k, v, o, gate, up, down"):
        postsvd.construct(9, base=related_pair.base, post=related_pair.post, out=tmp_path / "x", alpha={"q_a": 0.5},
                          progress=False)
    assert not (tmp_path / "x").exists()


def test_gpt_oss_mxfp4_blocks_without_scales_are_named(saved, tmp_path):
    """MXFP4 experts are read (test_quantized.py); blocks without their scales, or misshapen ones, are
    an error naming the tensor, not a misread."""
    folder, _ = saved("gpt_oss")

    def to_blocks(tensors):
        for layer in (0, 1):
            name = f"model.layers.{layer}.mlp.experts.gate_up_proj"
            tensors[name + "_blocks"] = torch.zeros(3, 96, 1, 16, dtype=torch.uint8)
            tensors.pop(name)

    quantized = rewrite(folder, tmp_path / "mxfp4", to_blocks)
    with pytest.raises(postsvd.BadCheckpointError,
                       match=r"missing tensor 'model\.layers\.0\.mlp\.experts\.gate_up_proj_scales'.*in pairs"):
        postsvd.architecture(quantized)

    def misshapen(tensors):
        for layer in (0, 1):
            name = f"model.layers.{layer}.mlp.experts.gate_up_proj"
            tensors[name + "_blocks"] = torch.zeros(3, 48, 1, 16, dtype=torch.uint8)  # 48 rows: not 2 * inter
            tensors[name + "_scales"] = torch.zeros(3, 48, 1, dtype=torch.uint8)
            tensors.pop(name)

    quantized = rewrite(folder, tmp_path / "mxfp4-bad", misshapen)
    with pytest.raises(postsvd.BadCheckpointError,
                       match=r"gate_up_proj_blocks' \(layer 0, gate, expert 0\): expected MXFP4 blocks U8 "
                             r"\[3, 96, 1, 16\] from config\.json, got U8 \[3, 48, 1, 16\]"):
        postsvd.architecture(quantized)
