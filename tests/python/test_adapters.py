"""PEFT LoRA adapter folders as post models (issue 22 items 1, 2, 6; docs/adapters.md): the matrices postsvd
forms equal peft's merge_and_unload in float32 for every variant (LoRA, rsLoRA with rank and alpha patterns,
layers_to_transform, modules_to_save, DoRA, fan_in_fan_out on gpt2's Conv1D, fused parts, target_parameters on
fused MoE experts of four layouts), comparing the adapter equals comparing the merged checkpoint, every entry
point takes an adapter, and bad adapters fail with one line naming the file and the tensor or option."""
import json
import os
import shutil

import numpy as np
import pytest

import postsvd
from adapter_models import VARIANTS, build_adapter, edit_config, edit_tensors
from postsvd import cli
from postsvd.errors import BadCheckpointError, HubError, InvalidArgumentError

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """name -> (base, adapter, merged) folders of every variant, built once."""
    root = tmp_path_factory.mktemp("adapters")
    return {name: build_adapter(root / name, model_type, **lora) for name, (model_type, lora) in VARIANTS.items()}


def adapter_copy(variants, tmp_path, name="llama-lora"):
    """(base, a private copy of the variant's adapter folder) for tests that edit it."""
    base, adapter, _ = variants[name]
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    return base, str(copy)


# ---------------------------------------------------------------- checked against peft

@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_matrices_equal_peft_merge_and_unload(variants, name):
    base, adapter, merged = variants[name]
    post = postsvd.open_checkpoint(adapter, base)
    reference, original = postsvd.open_checkpoint(merged), postsvd.open_checkpoint(base)
    summary = post.adapter
    changed = 0
    for source in postsvd.architecture(post)["matrices"]:
        formed = postsvd._core.read_matrix(post, source, "float32")
        expected = postsvd._core.read_matrix(reference, source, "float32")
        np.testing.assert_allclose(formed, expected, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name}: {source['tensor']} {source['layer']} {source['kind']}")
        changed += not np.array_equal(expected, postsvd._core.read_matrix(original, source, "float32"))
    # ΔW != 0 wherever the adapter acts, and the projections it changes are exactly those the merge changed.
    assert summary["adapted"] + summary["replaced"] == changed > 0


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_comparing_the_adapter_equals_comparing_the_merged_checkpoint(variants, name):
    base, adapter, merged = variants[name]
    from_adapter = postsvd.compare(base, adapter, progress=False)
    from_merged = postsvd.compare(base, merged, progress=False)
    a, m = from_adapter.table, from_merged.table
    assert list(a["tensor"]) == list(m["tensor"])
    np.testing.assert_allclose(a["nf"], m["nf"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(a["scaling_mean"], m["scaling_mean"], rtol=1e-4)
    assert (m["nf"] > 1e-4).any()  # the adapter moved something
    assert from_adapter.adapter["adapted"] > 0 and from_merged.adapter is None


def test_float64_and_the_factor_cache_keep_adapter_and_base_apart(variants, tmp_path):
    base, adapter, merged = variants["qwen3-dora"]
    cache = tmp_path / "factors"
    plain = postsvd.compare(base, adapter, progress=False, dtype="float64").table
    first = postsvd.compare(base, adapter, progress=False, dtype="float64", cache=cache)
    second = postsvd.compare(base, adapter, progress=False, dtype="float64", cache=cache)
    np.testing.assert_allclose(first.table["nf"], plain["nf"], atol=1e-12)
    assert second.decompositions["computed"] == 0 and second.decompositions["loaded"] > 0
    # The merged checkpoint's post matrices equal the adapter's to float32 rounding, not bit for bit: its
    # decompositions are computed, not taken from the adapter's entries, and agree to that rounding.
    merged_run = postsvd.compare(base, merged, progress=False, dtype="float64", cache=cache)
    assert merged_run.decompositions["computed"] > 0
    np.testing.assert_allclose(merged_run.table["nf"], plain["nf"], atol=1e-5)


# ---------------------------------------------------------------- every entry point

def test_base_left_out_comes_from_base_model_name_or_path(variants):
    base, adapter, _ = variants["llama-lora"]
    assert json.load(open(os.path.join(adapter, "adapter_config.json")))["base_model_name_or_path"] == str(base)
    named = postsvd.compare(base, adapter, progress=False)
    implied = postsvd.compare(None, adapter, progress=False)
    assert implied.base == str(base)
    np.testing.assert_array_equal(implied.table["nf"], named.table["nf"])
    assert np.array_equal(postsvd.read_matrix(postsvd.open_checkpoint(adapter), 0, "q"),
                          postsvd.read_matrix(postsvd.open_checkpoint(adapter, base), 0, "q"))


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_cli_compare_report_and_info_take_an_adapter(variants, tmp_path, capsys):
    base, adapter, merged = variants["llama-layers-modules-to-save"]
    assert cli.main(["compare", adapter, "--out", str(tmp_path / "c"), "--no-plots", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Adapter: PEFT LoRA" in out and "replaced (modules_to_save)" in out
    run = json.load(open(tmp_path / "c" / "run.json"))
    assert run["base"] == str(base) and run["adapter"]["adapted"] == 2 and run["adapter"]["replaced"] == 2
    assert cli.main(["report", base, adapter, merged, "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    page = open(tmp_path / "r" / "report.html").read()
    assert "Adapter: PEFT LoRA" in page
    assert cli.main(["info", adapter]) == 0
    assert "adapter:      PEFT LoRA r 4" in capsys.readouterr().out
    assert cli.main(["compare", merged, "--out", str(tmp_path / "x")]) == 1  # one folder must be an adapter
    assert "a single model must be a PEFT adapter" in capsys.readouterr().err


def test_track_over_adapter_checkpoints(variants, tmp_path):
    base, _, _ = variants["llama-lora"]
    lora = VARIANTS["llama-lora"][1]
    run = tmp_path / "run"
    folders = []
    for step, seed in ((10, 3), (20, 4)):
        _, adapter, _ = build_adapter(tmp_path / f"build{step}", "llama", adapter_seed=seed, save_base=False,
                                      base_name=str(base), **lora)
        folders.append(shutil.copytree(adapter, run / f"checkpoint-{step}"))
    trajectory = postsvd.track(None, folders, cache=tmp_path / "factors", progress=False)
    assert trajectory.steps == [10, 20]
    for folder, comparison in zip(folders, trajectory.comparisons):
        np.testing.assert_allclose(comparison.table["nf"], postsvd.compare(base, folder, progress=False).table["nf"],
                                   atol=1e-6)


def test_construct_writes_the_merged_projections_it_leaves(variants, tmp_path):
    base, adapter, merged = variants["llama-lora"]
    from_adapter = postsvd.construct(10, base, adapter, tmp_path / "a", kinds="q", progress=False)
    from_merged = postsvd.construct(10, base, merged, tmp_path / "m", kinds="q", progress=False)
    assert os.path.exists(tmp_path / "a" / "config.json")  # the base's other files
    written, reference = postsvd.open_checkpoint(from_adapter.out), postsvd.open_checkpoint(from_merged.out)
    for source in postsvd.architecture(written)["matrices"]:
        np.testing.assert_allclose(postsvd._core.read_matrix(written, source, "float64"),
                                   postsvd._core.read_matrix(reference, source, "float64"), rtol=1e-4, atol=1e-6,
                                   err_msg=source["tensor"])
    record = json.load(open(tmp_path / "a" / "postsvd_construction.json"))
    assert list(record["sources"]["post"]["safetensors_sha256"]) == ["adapter_model.safetensors"]


def test_construct_refuses_an_adapter_that_changes_other_tensors(tmp_path):
    base, adapter, _ = build_adapter(tmp_path, "llama", target_modules=["q_proj", "lm_head"])
    with pytest.raises(InvalidArgumentError, match="lm_head.*merge the adapter with peft"):
        postsvd.construct(10, base, adapter, tmp_path / "out", progress=False)
    assert not os.path.exists(tmp_path / "out")


def test_lineage_applies_the_adapter_to_a(variants):
    base, adapter, _ = variants["llama-lora"]
    result = postsvd.lineage(base, adapter, paper_nf=True)
    assert result.verdict == "derived"
    assert result.nf_table is not None and (result.nf_table["nf"] > 0).any()


@pytest.mark.ray
def test_ray_tasks_open_the_adapter(variants):
    ray = pytest.importorskip("ray")
    base, adapter, _ = variants["qwen3_moe-target-parameters"]
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        remote = postsvd.compare(None, adapter, progress=False, executor="ray")
    finally:
        ray.shutdown()
    local = postsvd.compare(base, adapter, progress=False)
    np.testing.assert_array_equal(remote.table["nf"], local.table["nf"])


def test_skipped_tensors_and_qlora_are_said(tmp_path, variants):
    base, adapter, _ = build_adapter(tmp_path, "llama", target_modules=["q_proj", "embed_tokens", "lm_head"])
    quantized = tmp_path / "quantized"  # what a bitsandbytes 4-bit copy's config says
    quantized.mkdir()
    config = json.load(open(os.path.join(base, "config.json")))
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    json.dump(config, open(quantized / "config.json", "w"))
    edit_config(adapter, base_model_name_or_path=str(quantized))
    result = postsvd.compare(base, adapter, progress=False)
    summary = result.summary()
    assert "Not compared (not projections): " in summary and "lm_head" in summary and "embed_tokens" in summary
    assert f"QLoRA: the adapter was trained on the quantized model '{quantized}' (bitsandbytes 4-bit)" in summary
    assert result.adapter["qlora"] == {"trained_on": str(quantized), "quantization": "bitsandbytes 4-bit"}
    assert any(name.endswith("lora_embedding_A") for name in result.adapter["skipped"])
    with pytest.raises(InvalidArgumentError, match="bitsandbytes 4-bit.*QLoRA adapter; name its unquantized base"):
        postsvd.compare(None, adapter, progress=False)  # the base it names cannot be read
    assert result.adapter["adapted"] == 2  # q_proj of both layers; lm_head and the embedding are not projections


def test_a_hub_base_that_cannot_be_resolved_is_one_line(variants, tmp_path, monkeypatch):
    _, adapter = adapter_copy(variants, tmp_path)
    edit_config(adapter, base_model_name_or_path="postsvd-tests/no-such-model", revision="v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("POSTSVD_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises((HubError, InvalidArgumentError)) as info:
        postsvd.compare(None, adapter, progress=False)
    message = str(info.value)
    assert "\n" not in message and "base_model_name_or_path" in message and "no-such-model" in message


# ---------------------------------------------------------------- bad adapters (item 6)

def refused(error, base, adapter, *fragments, **options):
    """The comparison fails with `error`, one line holding every fragment."""
    with pytest.raises(error) as info:
        postsvd.compare(base, adapter, progress=False, **options)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def test_an_adapter_without_weights(variants, tmp_path):
    base, adapter = adapter_copy(variants, tmp_path)
    os.remove(os.path.join(adapter, "adapter_model.safetensors"))
    refused(BadCheckpointError, base, adapter, os.path.join(adapter, "adapter_model.safetensors"),
            "without its weights")
    open(os.path.join(adapter, "adapter_model.bin"), "wb").close()
    refused(BadCheckpointError, base, adapter, "adapter_model.bin, a pickle, is not read")


def test_factors_that_do_not_fit_the_base(variants, tmp_path):
    base, adapter = adapter_copy(variants, tmp_path)
    edit_tensors(adapter, lambda t: t.update({A: torch.ones(4, 33)}))
    refused(BadCheckpointError, base, adapter, "adapter_model.safetensors", A, "[4, 33]", "do not fit",
            "model.layers.0.self_attn.q_proj.weight")
    base, adapter = adapter_copy(variants, tmp_path / "rank")
    edit_tensors(adapter, lambda t: t.update({A: t[A][:3], B: t[B][:, :3]}))
    refused(BadCheckpointError, base, adapter, A, "rank 4 (r / rank_pattern)")


@pytest.mark.parametrize("tensor, value", [(A, float("nan")), (B, float("inf")),
                                           ("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                                            float("nan"))])
def test_non_finite_factors_and_magnitudes(variants, tmp_path, tensor, value):
    base, adapter = adapter_copy(variants, tmp_path, "qwen3-dora")

    def poison(tensors):
        tensors[tensor] = tensors[tensor].clone()
        tensors[tensor].view(-1)[3] = value

    edit_tensors(adapter, poison)
    refused(InvalidArgumentError, base, adapter, "adapter_model.safetensors", tensor, "non-finite value",
            "element 3")


def test_rank_zero(variants, tmp_path):
    base, adapter = adapter_copy(variants, tmp_path)
    edit_config(adapter, r=0)
    refused(InvalidArgumentError, base, adapter, "adapter_config.json", '"r" is 0', "rank >= 1")
    edit_config(adapter, r=4, rank_pattern={"q_proj": 0})
    refused(InvalidArgumentError, base, adapter, "rank_pattern", "q_proj", "rank 0")
    edit_config(adapter, rank_pattern={})
    edit_tensors(adapter, lambda t: t.update({A: t[A][:0], B: t[B][:, :0]}))
    refused(InvalidArgumentError, base, adapter, A, "rank 0")


def test_target_modules_the_base_lacks(variants, tmp_path):
    base, adapter = adapter_copy(variants, tmp_path)
    edit_tensors(adapter, lambda t: t.update({A.replace("q_proj", "qq_proj"): t.pop(A),
                                              B.replace("q_proj", "qq_proj"): t.pop(B)}))
    refused(BadCheckpointError, base, adapter, "adapter_model.safetensors", A.replace("q_proj", "qq_proj"),
            "module 'model.layers.0.self_attn.qq_proj'", "does not have")


def test_a_base_of_another_architecture(variants, tmp_path):
    _, adapter = adapter_copy(variants, tmp_path)  # trained on LlamaForCausalLM (auto_mapping)
    assert json.load(open(os.path.join(adapter, "adapter_config.json")))["auto_mapping"]["base_model_class"] == \
        "LlamaForCausalLM"
    other = build_adapter(tmp_path / "qwen2", "qwen2", target_modules=["q_proj"])[0]  # the same shapes
    refused(BadCheckpointError, other, adapter, "adapter_config.json", "trained on a LlamaForCausalLM",
            "Qwen2ForCausalLM", "model_type 'qwen2'")
    # Without auto_mapping: the base its config names, a folder of another model_type.
    edit_config(adapter, auto_mapping=None, base_model_name_or_path=variants["llama-lora"][0])
    refused(BadCheckpointError, other, adapter, "base_model_name_or_path", "model_type 'llama'",
            "model_type 'qwen2'")


@pytest.mark.parametrize("changes, error, fragments", [
    (dict(use_qalora=True), InvalidArgumentError, ['"use_qalora" is true', "QALoRA"]),
    (dict(layer_replication=[[0, 2], [1, 2]]), InvalidArgumentError, ['"layer_replication"', "refused"]),
    (dict(alora_invocation_tokens=[5, 6]), InvalidArgumentError, ["aLoRA", "no merged weights"]),
    (dict(some_future_option={"on": True}), InvalidArgumentError, ['option "some_future_option"', "refused"]),
    (dict(peft_type="IA3", feedforward_modules=["down_proj"]), InvalidArgumentError,
     ["peft_type 'IA3' is not supported"]),
    (dict(init_lora_weights="pissa_niter_4"), InvalidArgumentError,
     ["'pissa_niter_4'", "residual base", "--residual-base"]),
    (dict(init_lora_weights="olora"), InvalidArgumentError, ["'olora'", "residual base"]),
    (dict(init_lora_weights="something_new"), InvalidArgumentError, ["'something_new'", "does not know"]),
    (dict(fan_in_fan_out=True), InvalidArgumentError, ['"fan_in_fan_out" is true', "nn.Linear"]),
    (dict(use_dora=True), BadCheckpointError, ["use_dora", "lora_magnitude_vector"]),
    (dict(rank_pattern={"(a*)*q_proj": 2}), InvalidArgumentError, ["'(a*)*q_proj'", "exponential time"]),
    (dict(alpha_pattern={"((q|k)_proj)+": 2}), InvalidArgumentError, ["alpha_pattern", "exponential time"]),
])
def test_options_that_change_the_merge_are_refused(variants, tmp_path, changes, error, fragments):
    base, adapter = adapter_copy(variants, tmp_path)
    edit_config(adapter, **changes)
    refused(error, base, adapter, "adapter_config.json" if error is InvalidArgumentError else "adapter", *fragments)


def test_a_declared_residual_base_is_accepted_and_said(variants, tmp_path):
    base, adapter = adapter_copy(variants, tmp_path)
    edit_config(adapter, init_lora_weights="pissa")
    result = postsvd.compare(base, adapter, progress=False, residual_base=True)
    assert "Residual base: declared the residual model that init_lora_weights 'pissa' left" in result.summary()
    assert result.adapter["residual_base"] is True
    # Options that leave the merge as LoRA's are taken: dropout, biases, VeLoRA, an EVA or orthogonal init.
    edit_config(adapter, init_lora_weights="orthogonal", lora_dropout=0.1, bias="all", velora_config={"rank": 2})
    np.testing.assert_allclose(postsvd.compare(base, adapter, progress=False).table["nf"], result.table["nf"])
