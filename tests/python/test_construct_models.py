"""Constructions of tiny transformers models: llama (plain), phi3 (fused
qkv_proj / gate_up_proj) and gpt2 (Conv1D c_attn / c_fc / c_proj). Every
modified part matches the float64 numpy formula, in its stored layout, and the
result loads with AutoModelForCausalLM and gives finite logits."""
import os

import numpy as np
import pytest
from safetensors import safe_open

import postsvd
from postsvd.constructions import construct
from helpers import build_tiny_model, load_all, save_model
from reference import construction_weight

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def make_models(model_type, root, dtype):
    """A tiny base model and a post model = base + small noise, saved in `dtype`."""
    model = build_tiny_model(model_type, seed=0)
    base = os.path.join(root, "base")
    save_model(model, base, dtype)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator).to(p.dtype))
    post = os.path.join(root, "post")
    save_model(model, post, dtype)
    return base, post


def stored_part(tensors, source):
    """The paper-orientation [in, out] part of a stored tensor."""
    w = tensors[source["tensor"]]
    first, last = source["out_offset"], source["out_offset"] + source["out_features"]
    return w[:, first:last] if source["conv1d"] else w[first:last, :].T


@pytest.mark.parametrize("model_type, number, dtype", [
    ("llama", 16, "bfloat16"),
    ("phi3", 11, "float32"),
    ("gpt2", 10, "float32"),
    ("gpt2", 9, "bfloat16"),
])
def test_construction_loads_with_transformers_and_matches_numpy(tmp_path, model_type, number, dtype):
    base, post = make_models(model_type, str(tmp_path), dtype)
    out = tmp_path / "out"
    result = construct(number, base, post, out, alpha=0.9 if number == 9 else None, dtype="float64",
                       progress=False)
    arch = postsvd.architecture(post)
    assert len(result.table) == len(arch["matrices"])
    wb, wp, got = load_all(base), load_all(post), load_all(out)
    tolerance = 2.0 ** -7 if dtype == "bfloat16" else 1e-6
    for source in arch["matrices"]:
        expected = construction_weight(number, stored_part(wb, source), stored_part(wp, source),
                                    alpha=0.9 if number == 9 else 1.0)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(stored_part(got, source), expected, rtol=tolerance, atol=tolerance * scale,
                                   err_msg=f"{model_type} {source['tensor']} part {source['kind']}")
    # Every tensor keeps its dtype and shape; untouched ones their bytes.
    modified = {s["tensor"] for s in arch["matrices"]}
    for name in os.listdir(post):
        if not name.endswith(".safetensors"):
            continue
        with safe_open(os.path.join(post, name), framework="pt") as a, \
                safe_open(str(out / name), framework="pt") as b:
            assert list(a.keys()) == list(b.keys())
            for key in a.keys():
                x, y = a.get_tensor(key), b.get_tensor(key)
                assert x.dtype == y.dtype and x.shape == y.shape, key
                if key not in modified:
                    assert torch.equal(x.view(-1).view(torch.uint8), y.view(-1).view(torch.uint8)), key
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 7, 9, 11, 3]])).logits
    assert torch.isfinite(logits).all()
    original = transformers.AutoModelForCausalLM.from_pretrained(post).eval()
    with torch.no_grad():
        assert not torch.equal(original(torch.tensor([[1, 5, 7, 9, 11, 3]])).logits, logits)
