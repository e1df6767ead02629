"""Tiny random models of every supported architecture, built offline with transformers: postsvd's
(layer, kind) matrices equal the transformers modules' weights in paper orientation (W_hf^T; fused
tensors split; GPT-2 Conv1D as stored), and compare() runs on a perturbed copy."""
import numpy as np
import pytest

import postsvd
from helpers import MODEL_FIXTURES, TINY_MODEL_TYPES, build_tiny_model, save_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_every_supported_model_type_has_a_fixture():
    """A row of the core's architecture table needs a tiny model here: add its config to helpers.tiny_config or
    frontier_models.frontier_config and its type to MODEL_FIXTURES."""
    assert sorted(MODEL_FIXTURES) == sorted(postsvd.supported_model_types())


@pytest.mark.parametrize("model_type", sorted(MODEL_FIXTURES))
def test_each_fixture_reads_as_its_model_type(tmp_path, model_type):
    model = MODEL_FIXTURES[model_type](model_type)
    model.save_pretrained(tmp_path)
    arch = postsvd.architecture(str(tmp_path))
    assert arch["model_type"] == model_type
    assert arch["num_layers"] == 2 and arch["matrices"]
    assert arch["warnings"] == []  # every tensor numbered as a text layer is one the config counts


def expected_matrices(model, model_type):
    """(layer, kind) -> W [in, out] taken from the transformers modules themselves."""
    config = model.config
    out = {}
    if model_type == "gpt2":
        hidden = config.n_embd
        for i, block in enumerate(model.transformer.h):
            c_attn = block.attn.c_attn.weight.float()  # Conv1D: [in, out]
            for j, kind in enumerate(("q", "k", "v")):
                out[(i, kind)] = c_attn[:, j * hidden:(j + 1) * hidden]
            out[(i, "o")] = block.attn.c_proj.weight.float()
            out[(i, "up")] = block.mlp.c_fc.weight.float()
            out[(i, "down")] = block.mlp.c_proj.weight.float()
        return {key: value.detach().numpy() for key, value in out.items()}
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if model_type == "phi3":
            head_dim = config.hidden_size // config.num_attention_heads
            q_size = config.num_attention_heads * head_dim
            kv_size = config.num_key_value_heads * head_dim
            qkv = attn.qkv_proj.weight.float()  # nn.Linear: [out, in]
            out[(i, "q")] = qkv[:q_size].T
            out[(i, "k")] = qkv[q_size:q_size + kv_size].T
            out[(i, "v")] = qkv[q_size + kv_size:].T
            gate_up = mlp.gate_up_proj.weight.float()
            out[(i, "gate")] = gate_up[:config.intermediate_size].T
            out[(i, "up")] = gate_up[config.intermediate_size:].T
        else:
            for kind in ("q", "k", "v"):
                out[(i, kind)] = getattr(attn, f"{kind}_proj").weight.float().T
            out[(i, "gate")] = mlp.gate_proj.weight.float().T
            out[(i, "up")] = mlp.up_proj.weight.float().T
        out[(i, "o")] = attn.o_proj.weight.float().T
        out[(i, "down")] = mlp.down_proj.weight.float().T
    return {key: value.detach().numpy() for key, value in out.items()}


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_matrices_equal_transformers_weights(tiny_models, model_type):
    folder, model = tiny_models(model_type)
    arch = postsvd.architecture(folder)
    assert arch["model_type"] == model_type and arch["num_layers"] == 2
    expected = expected_matrices(model, model_type)
    found = {(s["layer"], s["kind"]) for s in arch["matrices"]}
    assert found == set(expected)
    checkpoint = postsvd.open_checkpoint(folder)
    for (layer, kind), matrix in expected.items():
        got = postsvd.read_matrix(checkpoint, layer, kind)
        assert got.shape == matrix.shape, (layer, kind)
        assert np.array_equal(got, matrix), (layer, kind)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_compare_with_perturbed_copy(tiny_models, tmp_path, model_type):
    folder, _ = tiny_models(model_type)
    perturbed = build_tiny_model(model_type)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in perturbed.parameters():
            parameter.mul_(1.05).add_(1e-3 * torch.randn(parameter.shape, generator=generator))
    save_model(perturbed, tmp_path / "post", "bfloat16")
    result = postsvd.compare(folder, tmp_path / "post", progress=False)
    table = result.table
    expected = expected_matrices(build_tiny_model(model_type), model_type)
    assert len(table) == len(expected)
    for row in table.itertuples():
        assert (row.in_features, row.out_features) == expected[(row.layer, row.kind)].shape
        assert row.k == min(row.in_features, row.out_features)
    assert np.isfinite(table[["scaling_mean", "scaling_std", "nf"]].to_numpy()).all()
    # Weights scaled by 1.05 plus small noise: the leading singular values scale by about 1.05.
    assert (abs(table["sigma_post_max"] / table["sigma_base_max"] - 1.05) < 0.05).all()
    figure = result.plot_matrices(0, result.kinds[0], leading_k=8)
    assert len(figure.axes) >= 4
