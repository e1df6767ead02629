"""Quantized checkpoints (FP8 block-scaled, compressed-tensors FP8, MXFP4): postsvd's
dequantized matrices equal a numpy reference bit for bit, scales may sit in another
shard, ignored modules read unquantized, bad scales are named, and a model against
its own FP8 copy stays within the quantization bound (and the summary says so)."""
import json
import os

import numpy as np
import pytest

import postsvd
from postsvd import _core
from postsvd.checkpoint import find_source
from postsvd.errors import BadCheckpointError

import quantize

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

PAIRS = [(0, "q"), (0, "k"), (0, "v"), (0, "o"), (1, "gate"), (1, "up"), (1, "down")]


def _hf_tensor(folder, name):
    """One stored tensor through the official library (float8 as raw codes, others as float32 numpy)."""
    for file in sorted(os.listdir(folder)):
        if not file.endswith(".safetensors"):
            continue
        with safetensors_torch.safe_open(os.path.join(folder, file), "pt") as f:
            if name in f.keys():
                t = f.get_tensor(name)
                if t.dtype == torch.float8_e4m3fn:
                    return t.view(torch.uint8).numpy()
                return t.float().numpy()
    raise KeyError(name)


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_e4m3_reference_matches_torch():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    from_torch = codes.view(torch.float8_e4m3fn).float().numpy()
    table = quantize.e4m3_table()
    assert np.array_equal(np.isnan(from_torch), np.isnan(table))
    finite = ~np.isnan(table)
    assert _same_bits(from_torch[finite], table[finite])
    assert np.nanmax(table) == 448.0


@pytest.mark.parametrize("scale_dtype", ["float32", "bfloat16", "float16"])
def test_block_fp8_bit_exact(tiny_models, tmp_path, scale_dtype):
    src, _ = tiny_models("llama", "bfloat16")
    dst = str(tmp_path / "fp8")
    block = (16, 12)  # hidden 32, intermediate 48: edge blocks along every input dim of 32
    quantize.write_block_fp8(src, dst, block=block, scale_dtype=scale_dtype)
    arch = postsvd.architecture(dst)
    for layer, kind in PAIRS:
        source = find_source(arch, layer, kind)
        codes = _hf_tensor(dst, source["tensor"])
        scale = _hf_tensor(dst, source["tensor"] + "_scale_inv")
        for dtype, np_dtype in (("float32", np.float32), ("float64", np.float64)):
            expected = quantize.dequantize_fp8_reference(codes, scale, block, np_dtype).T
            got = postsvd.read_matrix(dst, layer, kind, dtype=dtype)
            assert _same_bits(np.ascontiguousarray(got), np.ascontiguousarray(expected)), (layer, kind, dtype)
        assert _core.stored_format(_core.Checkpoint(dst), source)["scheme"] == "scaled-fp8"


def test_scale_in_other_shard_and_ignored_module(tiny_models, tmp_path):
    src, model = tiny_models("llama", "bfloat16")
    dst = str(tmp_path / "fp8-sharded")
    quantize.write_block_fp8(src, dst, block=(16, 16), modules_to_not_convert=["mlp.down_proj"],
                             scales_in_other_shard=True)
    cp = _core.Checkpoint(dst)
    assert cp.sharded
    name = "model.layers.1.self_attn.o_proj.weight"
    assert cp.info(name)["file"] != cp.info(name + "_scale_inv")["file"]
    expected = quantize.dequantize_fp8_reference(_hf_tensor(dst, name), _hf_tensor(dst, name + "_scale_inv"),
                                                 (16, 16)).T
    assert _same_bits(np.ascontiguousarray(postsvd.read_matrix(dst, 1, "o")), np.ascontiguousarray(expected))
    # The ignored module stays BF16 and reads as the model's own weights.
    down = "model.layers.0.mlp.down_proj.weight"
    assert cp.info(down)["dtype"] == "BF16"
    assert _core.stored_format(cp, find_source(postsvd.architecture(cp), 0, "down"))["scheme"] == "none"
    bf16 = model.model.layers[0].mlp.down_proj.weight.detach().float().numpy()
    assert _same_bits(np.ascontiguousarray(postsvd.read_matrix(dst, 0, "down")), np.ascontiguousarray(bf16.T))


@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_compressed_tensors_bit_exact(tiny_models, tmp_path, strategy):
    src, _ = tiny_models("qwen2", "bfloat16")
    dst = str(tmp_path / strategy)
    quantize.write_compressed_fp8(src, dst, strategy=strategy)
    arch = postsvd.architecture(dst)
    for layer, kind in PAIRS:
        source = find_source(arch, layer, kind)
        module = source["tensor"][: -len(".weight")]
        scale = _hf_tensor(dst, module + ".weight_scale")
        assert scale.shape == ((1,) if strategy == "tensor" else (source["out_features"], 1))
        expected = quantize.dequantize_fp8_reference(_hf_tensor(dst, source["tensor"]), scale, None).T
        got = postsvd.read_matrix(dst, layer, kind)
        assert _same_bits(np.ascontiguousarray(got), np.ascontiguousarray(expected)), (layer, kind)


def test_bad_scale_shape_names_tensor_and_file(tiny_models, tmp_path):
    src, _ = tiny_models("llama", "bfloat16")
    dst = str(tmp_path / "bad")
    quantize.write_block_fp8(src, dst, block=(16, 16))
    # Declare 8 x 8 blocks: the stored [2, 2] grid of q_proj [32, 32] should be [4, 4].
    path = os.path.join(dst, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["quantization_config"]["weight_block_size"] = [8, 8]
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(BadCheckpointError) as error:
        postsvd.read_matrix(dst, 0, "q")
    message = str(error.value)
    for part in ("model.layers.0.self_attn.q_proj.weight_scale_inv", "model.safetensors", "[2, 2]", "expected [4, 4]"):
        assert part in message


def test_mxfp4_matches_numpy_and_transformers(tmp_path):
    from safetensors.torch import save_file

    rng = np.random.default_rng(5)
    experts, out, inp = 3, 6, 64  # gpt-oss down_proj layout: blocks [E, out, in / 32, 16]
    weight = (rng.standard_normal((experts, out, inp)) * np.exp(rng.uniform(-3, 3, (experts, out, 1)))).astype(np.float32)
    blocks, scales = quantize.quantize_mxfp4(weight)
    assert blocks.shape == (experts, out, inp // 32, 16) and scales.shape == (experts, out, inp // 32)
    folder = tmp_path / "mxfp4"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_oss",
                                                    "quantization_config": {"quant_method": "mxfp4"}}))
    save_file({"mlp.experts.down_proj_blocks": torch.from_numpy(blocks),
               "mlp.experts.down_proj_scales": torch.from_numpy(scales)}, str(folder / "model.safetensors"))
    dequantized = quantize.dequantize_mxfp4_reference(blocks, scales)  # [E, out, in]
    # Quantization itself: within E2M1's rounding of each 32-value group's largest entry.
    assert np.all(np.abs(dequantized - weight) <= 0.25 * np.abs(weight).max(axis=-1, keepdims=True) + 1e-30)
    cp = _core.Checkpoint(str(folder))
    for e in range(experts):
        got = _core.read_mxfp4(cp, "mlp.experts.down_proj_blocks", "mlp.experts.down_proj_scales", e * out * inp,
                               inp, out, 1, inp, "float32")
        assert _same_bits(np.ascontiguousarray(got), np.ascontiguousarray(dequantized[e].T)), e
    # transformers' own dequantization (gpt-oss loading path) gives [E, in, out]: the same values.
    mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    reference = mxfp4.convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                                 dtype=torch.float32).numpy()
    assert _same_bits(np.ascontiguousarray(reference), np.ascontiguousarray(dequantized.transpose(0, 2, 1)))


def _gpt_oss_mxfp4(tmp_path):
    """A tiny gpt_oss (float32; intermediate 64 so that every expert input dim packs into 32-value
    blocks) and its copy with the experts in MXFP4 as the gpt-oss release stores them."""
    from frontier_models import build_frontier_model

    model = build_frontier_model("gpt_oss", intermediate_size=64)
    src = str(tmp_path / "gpt-oss-f32")
    model.save_pretrained(src)
    dst = str(tmp_path / "gpt-oss-mxfp4")
    quantize.write_mxfp4_gpt_oss(src, dst)
    return src, dst, model.config


def test_gpt_oss_mxfp4_experts_bit_exact(tmp_path):
    """Each expert's gate, up (interleaved rows of gate_up_proj_blocks) and down matrix equals the numpy
    dequantization of the stored blocks and scales, and transformers' own, bit for bit."""
    mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    src, dst, config = _gpt_oss_mxfp4(tmp_path)
    cp = _core.Checkpoint(dst)
    assert "model.layers.0.mlp.experts.gate_up_proj" not in cp.tensor_names()
    arch = postsvd.architecture(dst)
    experts, hidden, inter = config.num_local_experts, config.hidden_size, config.intermediate_size
    for layer in range(config.num_hidden_layers):
        stored = {}
        for proj in ("gate_up_proj", "down_proj"):
            name = f"model.layers.{layer}.mlp.experts.{proj}"
            blocks, scales = _hf_tensor(dst, name + "_blocks"), _hf_tensor(dst, name + "_scales")
            blocks, scales = blocks.astype(np.uint8), scales.astype(np.uint8)
            dequantized = quantize.dequantize_mxfp4_reference(blocks, scales)  # [E, out, in]
            loaded = mxfp4.convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales),
                                                      dtype=torch.float32).numpy()  # [E, in, out], as the model
            assert _same_bits(np.ascontiguousarray(loaded), np.ascontiguousarray(dequantized.transpose(0, 2, 1)))
            stored[proj] = loaded
        assert stored["gate_up_proj"].shape == (experts, hidden, 2 * inter)
        for e in range(experts):
            expected = {"gate": stored["gate_up_proj"][e][:, ::2], "up": stored["gate_up_proj"][e][:, 1::2],
                        "down": stored["down_proj"][e]}
            for kind, w in expected.items():
                for dtype in ("float32", "float64"):
                    got = postsvd.read_matrix(dst, layer, kind, expert=e, dtype=dtype)
                    want = np.ascontiguousarray(w.astype(dtype))
                    assert _same_bits(np.ascontiguousarray(got), want), (layer, kind, e, dtype)
                source = find_source(arch, layer, kind, e)
                fmt = _core.stored_format(cp, source)
                assert fmt["scheme"] == "mxfp4" and fmt["scale_tensor"].endswith("_scales")
    # Attention stays BF16/F32 and reads as the unquantized model's.
    assert _same_bits(np.ascontiguousarray(postsvd.read_matrix(dst, 1, "o")),
                      np.ascontiguousarray(postsvd.read_matrix(src, 1, "o")))


def test_gpt_oss_mxfp4_compare_and_construction(tmp_path):
    """The float32 model against its MXFP4 copy: every expert pair is compared on the dequantized
    matrices (singular values as numpy's of the reference), attention pairs are identical; a
    construction on the MXFP4 copy writes its experts back as BF16 (_check_mxfp4_construction)."""
    src, dst, config = _gpt_oss_mxfp4(tmp_path)
    r = postsvd.compare(src, dst, dtype="float64", progress=False)
    table = r.table
    experts = table[table["expert"] != -1]
    assert len(experts) == config.num_hidden_layers * config.num_local_experts * 3
    attention = table[table["expert"] == -1]
    assert np.allclose(attention["scaling_mean"], 1.0, rtol=0, atol=1e-12) and attention["nf"].max() < 1e-10
    assert experts["nf"].max() > 1e-4  # MXFP4 rounding is visible
    for record in r.records:
        if record["expert"] == -1:
            continue
        w = postsvd.read_matrix(dst, record["layer"], record["kind"], expert=record["expert"], dtype="float64")
        np.testing.assert_allclose(record["sigma_post"], np.linalg.svd(w, compute_uv=False), rtol=1e-10, atol=1e-12)
    assert "post MXFP4" in r.summary() and "within MXFP4 rounding" in r.summary()
    _check_mxfp4_construction(tmp_path, src, dst, config)


def test_gpt_oss_construction_on_two_mxfp4_checkpoints(tmp_path):
    """Base and post both MXFP4 (the post a perturbed copy of the base, quantized the same way)."""
    src, base, config = _gpt_oss_mxfp4(tmp_path)
    rng = np.random.default_rng(7)
    tensors = quantize._load(src)
    perturbed = {name: t + torch.from_numpy(rng.standard_normal(tuple(t.shape)).astype(np.float32)) * 0.1 * t.std()
                 if t.dim() >= 2 else t for name, t in tensors.items()}
    post_float = str(tmp_path / "gpt-oss-f32-post")
    quantize._write(post_float, src, perturbed, None)
    post = str(tmp_path / "gpt-oss-mxfp4-post")
    quantize.write_mxfp4_gpt_oss(post_float, post)
    _check_mxfp4_construction(tmp_path, base, post, config)


def _is_mxfp4(folder):
    return (json.loads(open(os.path.join(folder, "config.json")).read()).get("quantization_config") or {}).get(
        "quant_method") == "mxfp4"


def _check_mxfp4_construction(tmp_path, base, post, config):
    """Construction 14 of layer 0's gate and down on MXFP4 `post` (`base` float32 or MXFP4) writes a BF16
    gpt_oss that transformers loads unquantized and generates with: the experts as X [E, in, out] (the
    _blocks / _scales pairs gone, quantization_config removed); values the construction leaves alone
    (layer 0's up, interleaved with its gate, and all of layer 1) are numpy's dequantization rounded to
    BF16, bit for bit; the changed ones are the same construction on the numpy-dequantized float32 pair,
    rounded to BF16; compare(base, out) reads the output."""
    transformers = pytest.importorskip("transformers")
    selection = dict(layers=[0], kinds=["gate", "down"], progress=False)
    out = str(tmp_path / "out")
    postsvd.construct(14, base, post, out, **selection)
    dequantized = {}
    for role, folder in (("base", base), ("post", post)):
        dequantized[role] = folder
        if _is_mxfp4(folder):
            dequantized[role] = str(tmp_path / f"{role}-dequantized")
            quantize.write_dequantized_mxfp4(folder, dequantized[role])
    reference = str(tmp_path / "out-float")
    postsvd.construct(14, dequantized["base"], dequantized["post"], reference, **selection)

    assert "quantization_config" not in json.loads(open(os.path.join(out, "config.json")).read())
    cp = _core.Checkpoint(out)
    assert set(cp.tensor_names()) == set(_core.Checkpoint(reference).tensor_names())  # no _blocks / _scales
    experts, hidden, inter = config.num_local_experts, config.hidden_size, config.intermediate_size
    shapes = {"gate_up_proj": [experts, hidden, 2 * inter], "down_proj": [experts, inter, hidden]}
    for layer in range(config.num_hidden_layers):
        for proj, shape in shapes.items():
            name = f"model.layers.{layer}.mlp.experts.{proj}"
            assert cp.info(name)["dtype"] == "BF16" and cp.info(name)["shape"] == shape, name
            got = _hf_tensor(out, name)
            rounded = torch.from_numpy(_hf_tensor(dequantized["post"], name)).bfloat16().float().numpy()
            constructed = _hf_tensor(reference, name)
            changed = np.zeros(got.shape, dtype=bool)
            if layer == 0:
                changed[..., (slice(0, None, 2) if proj == "gate_up_proj" else slice(None))] = True  # gate: even
            assert _same_bits(got[~changed], rounded[~changed]), name
            if changed.any():
                assert not np.array_equal(got[changed], rounded[changed]), name  # the construction did something
                np.testing.assert_allclose(got[changed], constructed[changed], rtol=2.0 ** -8, atol=1e-30)
    # Unquantized gpt_oss in transformers: the tensors land as the model's parameters and it generates.
    model = transformers.GptOssForCausalLM.from_pretrained(out).eval()
    assert getattr(model.config, "quantization_config", None) is None
    layer0 = model.model.layers[0].mlp.experts
    assert _same_bits(layer0.gate_up_proj.detach().float().numpy(),
                      _hf_tensor(out, "model.layers.0.mlp.experts.gate_up_proj"))
    float_model = transformers.GptOssForCausalLM.from_pretrained(reference).eval()
    tokens = torch.tensor([[1, 5, 7, 9, 11]])
    with torch.no_grad():
        generated = model.generate(tokens[:, :3], max_new_tokens=4, do_sample=False)
        logits, float_logits = model(tokens).logits.numpy(), float_model(tokens).logits.numpy()
    assert generated.shape == (1, 7)
    # Only BF16 rounding of the experts separates it from the float32 construction's model.
    assert np.abs(logits - float_logits).max() <= 0.02 * np.abs(float_logits).max()
    # compare(base, out) reads the BF16 experts (layer 1's: numpy's dequantization rounded to BF16).
    r = postsvd.compare(base, out, dtype="float64", progress=False)
    assert len(r.table[r.table["expert"] != -1]) == config.num_hidden_layers * experts * 3
    gate_up = torch.from_numpy(_hf_tensor(dequantized["post"], "model.layers.1.mlp.experts.gate_up_proj"))
    for record in r.records:
        if record["layer"] == 1 and record["kind"] == "up" and record["expert"] != -1:
            w = gate_up[record["expert"]][:, 1::2].bfloat16().double().numpy()
            np.testing.assert_allclose(record["sigma_post"], np.linalg.svd(w, compute_uv=False), rtol=1e-10, atol=1e-12)


def _llama4_fbgemm(tmp_path):
    """A tiny llama4_text (BF16) and its copy in the Llama-4 FP8 layout (fbgemm_fp8), layer 0's attention kept."""
    from frontier_models import build_frontier_model

    model = build_frontier_model("llama4_text").to(torch.bfloat16)
    src = str(tmp_path / "llama4-bf16")
    model.save_pretrained(src)
    dst = str(tmp_path / "llama4-fp8")
    quantize.write_fbgemm_fp8(src, dst, modules_to_not_convert=("lm_head", "layers.0.self_attn"))
    return src, dst, model.config


def test_llama4_fused_expert_fp8_bit_exact(tmp_path):
    """Fused 3-D FP8 experts with one scale per expert and output channel ([E, 1, 2 inter] for gate_up,
    [E, hidden, 1] for down): every expert's gate, up and down equal q * scale in numpy, bit for bit;
    per-channel nn.Linear scales and the ignored attention read as well."""
    src, dst, config = _llama4_fbgemm(tmp_path)
    cp = _core.Checkpoint(dst)
    arch = postsvd.architecture(dst)
    table = quantize.e4m3_table()
    moe = [s for s in arch["matrices"] if s["expert"] not in (-1, _core.SHARED_EXPERT)]
    assert moe and {s["tensor"].split(".")[-1] for s in moe} == {"gate_up_proj", "down_proj"}
    inter = config.intermediate_size
    for source in moe:
        name, e = source["tensor"], source["expert"]
        codes, scale = _hf_tensor(dst, name), _hf_tensor(dst, name + "_scale")
        assert cp.info(name)["dtype"] == "F8_E4M3" and scale.shape in ((codes.shape[0], 1, codes.shape[2]),
                                                                         (codes.shape[0], codes.shape[2], 1))
        for dtype, np_dtype in (("float32", np.float32), ("float64", np.float64)):
            w = table[codes[e].astype(np.int64)].astype(np_dtype) * scale[e].reshape(1, -1).astype(np_dtype)
            expected = {"gate": w[:, :inter], "up": w[:, inter:], "down": w}[source["kind"]]
            got = postsvd.read_matrix(dst, source["layer"], source["kind"], expert=e, dtype=dtype)
            assert _same_bits(np.ascontiguousarray(got), np.ascontiguousarray(expected)), (source["kind"], e, dtype)
        assert _core.stored_format(cp, source)["scale_tensor"] == name + "_scale"
    # nn.Linear weights (attention of layer 1, the shared expert): weight_scale [out, 1].
    for layer, kind, expert in ((1, "q", -1), (1, "gate", "shared")):
        source = find_source(arch, layer, kind, expert)
        module = source["tensor"][: -len(".weight")]
        expected = quantize.dequantize_fp8_reference(_hf_tensor(dst, source["tensor"]),
                                                     _hf_tensor(dst, module + ".weight_scale"), None).T
        got = postsvd.read_matrix(dst, layer, kind, expert=expert)
        assert _same_bits(np.ascontiguousarray(got), np.ascontiguousarray(expected)), (layer, kind)
    # Layer 0's attention is in modules_to_not_convert: BF16, as in the source.
    assert cp.info("model.layers.0.self_attn.q_proj.weight")["dtype"] == "BF16"
    assert _same_bits(np.ascontiguousarray(postsvd.read_matrix(dst, 0, "q")),
                      np.ascontiguousarray(postsvd.read_matrix(src, 0, "q")))


def test_llama4_fused_expert_fp8_bad_scale_and_construction(tmp_path):
    """A fused expert scale of the wrong shape is named with what was expected; Construction 14 on the
    FP8 copy writes BF16 fused experts (scales dropped, quantization_config removed) that transformers
    loads and generates with."""
    transformers = pytest.importorskip("transformers")
    src, dst, config = _llama4_fbgemm(tmp_path)
    r = postsvd.compare(src, dst, progress=False)
    assert "within F8_E4M3 rounding" in r.summary()
    out = tmp_path / "out"
    postsvd.construct(14, src, dst, out, group="mlp", progress=False)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    cp = _core.Checkpoint(str(out))
    assert not any(n.endswith("_scale") for n in cp.tensor_names())
    assert {cp.info(n)["dtype"] for n in cp.tensor_names()} == {"BF16"}
    # An FP8 fused expert tensor left alone by the construction (no MoE kind is left alone with group mlp,
    # so check attention): float32 dequantization rounded to BF16.
    got = postsvd.read_matrix(str(out), 1, "k")
    expected = torch.from_numpy(postsvd.read_matrix(dst, 1, "k")).bfloat16().float().numpy()
    assert _same_bits(np.ascontiguousarray(got), np.ascontiguousarray(expected))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        generated = model.generate(torch.tensor([[1, 5, 7]]), max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)
    # A scale of the wrong shape: [E, 1, inter] instead of [E, 1, 2 inter].
    bad = str(tmp_path / "bad")
    tensors = quantize._load(dst)
    name = "model.layers.1.feed_forward.experts.gate_up_proj_scale"
    tensors[name] = tensors[name][:, :, : config.intermediate_size].contiguous()
    quantize._write(bad, dst, tensors, json.loads(open(os.path.join(dst, "config.json")).read())["quantization_config"])
    with pytest.raises(BadCheckpointError) as error:
        postsvd.read_matrix(bad, 1, "gate", expert=0)
    message = str(error.value)
    for part in (name, "model.safetensors", f"[3, 1, {config.intermediate_size}]",
                 f"[3, 1, {2 * config.intermediate_size}]", "per expert and output channel"):
        assert part in message, part


def test_bf16_against_its_fp8_copy_within_bound(tiny_models, tmp_path, related_pair):
    src, _ = tiny_models("llama", "bfloat16")
    dst = str(tmp_path / "fp8-copy")
    quantize.write_block_fp8(src, dst, block=(16, 16))
    result = postsvd.compare(src, dst, progress=False)
    bound = quantize.relative_bound_e4m3()
    table = result.table
    assert (table["scaling_mean"] - 1).abs().max() <= bound
    assert table["nf"].max() <= bound
    for r in result.records:
        sb, sp = np.asarray(r["sigma_base"], float), np.asarray(r["sigma_post"], float)
        assert np.linalg.norm(sp - sb) <= bound * np.linalg.norm(sb)  # Mirsky: ||dσ|| <= ||dW||_F <= u ||W||_F
    summary = result.summary()
    assert "within F8_E4M3 rounding" in summary and "may differ only by quantization" in summary
    # A real change on top of the same formats is not reported as quantization alone.
    other = postsvd.compare(related_pair.base, related_pair.post, progress=False).summary()
    assert "quantization" not in other.lower()


@pytest.mark.parametrize("sharded", [False, True])
def test_construction_on_fp8_writes_bf16_without_quantization_config(tiny_models, tmp_path, sharded):
    transformers = pytest.importorskip("transformers")
    src, _ = tiny_models("llama", "bfloat16")
    fp8 = str(tmp_path / "fp8")
    quantize.write_block_fp8(src, fp8, block=(16, 16), modules_to_not_convert=["mlp.down_proj"],
                             scales_in_other_shard=sharded)
    out = tmp_path / "out"
    postsvd.construct(14, src, fp8, out, group="attention", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    cp = _core.Checkpoint(str(out))
    names = cp.tensor_names()
    assert not any(n.endswith(("_scale_inv", "_scale")) for n in names)
    assert {cp.info(n)["dtype"] for n in names} <= {"BF16"}
    assert set(names) == {n for n in _core.Checkpoint(fp8).tensor_names() if not n.endswith("_scale_inv")}
    if sharded:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(names)
    # An FP8 weight the construction left alone: its float32 dequantization rounded to BF16.
    up = postsvd.read_matrix(str(out), 1, "up")
    expected = torch.from_numpy(postsvd.read_matrix(fp8, 1, "up")).bfloat16().float().numpy()
    assert _same_bits(np.ascontiguousarray(up), np.ascontiguousarray(expected))
    # The ignored BF16 module is copied as it was.
    assert _same_bits(np.ascontiguousarray(postsvd.read_matrix(str(out), 0, "down")),
                      np.ascontiguousarray(postsvd.read_matrix(src, 0, "down")))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        generated = model.generate(torch.tensor([[1, 5, 7]]), max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)



def _deepseek_v3_fp8(tmp_path, block):
    """A tiny deepseek_v3 (float32) and its copy with every kv_b_proj block-quantized (DeepSeek-V3 FP8 layout)."""
    from frontier_models import build_frontier_model

    model = build_frontier_model("deepseek_v3")
    src = str(tmp_path / "deepseek-f32")
    model.save_pretrained(src)
    dst = str(tmp_path / "deepseek-fp8")
    out = {}
    for name, t in quantize._load(src).items():
        if name.endswith("self_attn.kv_b_proj.weight"):
            out[name], out[name + "_scale_inv"] = quantize.quantize_block_fp8(t, block)
        else:
            out[name] = t
    quantize._write(dst, src, out, {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "weight_block_size": list(block)})
    return src, dst, model.config


def test_deepseek_v3_fp8_kv_b_per_head_parts(tmp_path):
    """kv_b_proj [heads * (nope + v), rank] is read as grouped per-head K and V parts; with blocks of 16
    stored rows (heads of 8 + 6 rows) blocks straddle heads and parts, so each element must find the
    scale of its stored position through the grouped view, in both orientations."""
    block = (16, 12)  # rank 16: an edge block along the input dim too
    src, dst, config = _deepseek_v3_fp8(tmp_path, block)
    heads, nope, v_head = config.num_attention_heads, config.qk_nope_head_dim, config.v_head_dim
    for layer in range(config.num_hidden_layers):
        name = f"model.layers.{layer}.self_attn.kv_b_proj.weight"
        codes = _hf_tensor(dst, name)
        scale = _hf_tensor(dst, name + "_scale_inv")
        assert codes.shape == (heads * (nope + v_head), config.kv_lora_rank)
        for dtype, np_dtype in (("float32", np.float32), ("float64", np.float64)):
            full = quantize.dequantize_fp8_reference(codes, scale, block, np_dtype)
            per_head = full.reshape(heads, nope + v_head, -1)
            for kind, rows in (("kv_b_k", per_head[:, :nope]), ("kv_b_v", per_head[:, nope:])):
                expected = rows.reshape(-1, full.shape[1]).T  # W [rank, heads * part]
                got = postsvd.read_matrix(dst, layer, kind, dtype=dtype)
                assert _same_bits(np.ascontiguousarray(got), np.ascontiguousarray(expected)), (layer, kind, dtype)
                source = find_source(postsvd.architecture(dst), layer, kind)
                assert _core.stored_format(_core.Checkpoint(dst), source)["scheme"] == "scaled-fp8"
    # The comparison decomposes the dequantized parts: against the float32 original every kv_b
    # difference is within what quantization can cause.
    # W [rank, heads * part] is wide, so the SVD reads the transposed grouped view.
    r = postsvd.compare(src, dst, kinds=["kv_b_k", "kv_b_v"], dtype="float64", progress=False)
    assert len(r.table) == 2 * config.num_hidden_layers
    assert "within F8_E4M3 rounding" in r.summary()
    for kind in ("kv_b_k", "kv_b_v"):
        sigma = r.sigma(kind, "post")
        for layer in range(config.num_hidden_layers):
            w = postsvd.read_matrix(dst, layer, kind, dtype="float64")
            np.testing.assert_allclose(sigma[:, layer], np.linalg.svd(w, compute_uv=False), rtol=1e-10,
                                       atol=1e-12, err_msg=(kind, layer))


def test_construction_on_deepseek_v3_fp8_writes_per_head_bf16(tmp_path):
    """Construction 14 with an FP8 post: kv_b_proj is written back as BF16 in its stored per-head layout
    (K rows then V rows per head), its scale tensor dropped, quantization_config removed."""
    src, dst, config = _deepseek_v3_fp8(tmp_path, (16, 12))
    out = tmp_path / "out"
    postsvd.construct(14, src, dst, out, group="attention", progress=False)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    cp = _core.Checkpoint(str(out))
    assert not any(n.endswith("_scale_inv") for n in cp.tensor_names())
    name = "model.layers.0.self_attn.kv_b_proj.weight"
    assert cp.info(name)["dtype"] == "BF16"
    for kind in ("kv_b_k", "kv_b_v"):
        w_base = postsvd.read_matrix(src, 0, kind, dtype="float64")
        w_post = postsvd.read_matrix(dst, 0, kind, dtype="float64")
        u_base, s_base, vt_base = np.linalg.svd(w_base, full_matrices=False)
        u_post, s_post, vt_post = np.linalg.svd(w_post, full_matrices=False)
        expected = u_post @ np.diag(s_base) @ vt_post
        got = postsvd.read_matrix(str(out), 0, kind, dtype="float64")
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-2 * np.abs(expected).max(), err_msg=kind)
