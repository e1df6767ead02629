"""postsvd.compare and Comparison against the float64 numpy reference (tests/python/reference.py)."""
import copy
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

import postsvd
import reference
from helpers import ALPHA, SYNTHETIC

KIND_TENSOR = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def paper_matrix(folder, layer, kind):
    """W = W_hf^T of a synthetic (single-file) folder, read with the official safetensors library."""
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    return tensors[f"model.layers.{layer}.{KIND_TENSOR[kind]}.weight"].astype(np.float64).T


def test_related_pair_gives_alpha_and_zero_nf(related_comparison):
    table = related_comparison.table
    assert len(table) == SYNTHETIC["layers"] * 7
    assert list(table.columns[:3]) == ["layer", "kind", "in_features"]
    np.testing.assert_allclose(table["scaling_mean"], ALPHA, atol=1e-4)
    assert (table["scaling_std"] < 1e-4).all()
    assert (table["nf"] < 1e-3).all()
    np.testing.assert_allclose(table["iorth_diag_mean"], 1.0, atol=1e-3)
    kinds = related_comparison.kind_table()
    np.testing.assert_allclose(kinds["scaling_mean"], ALPHA, atol=1e-4)
    assert (kinds["alpha"] == ALPHA).all()
    assert "consistent rotation" in related_comparison.summary()
    assert "near-uniform scaling" in related_comparison.summary()


def test_unrelated_pair_gives_large_nf(unrelated_pair):
    result = postsvd.compare(unrelated_pair.base, unrelated_pair.post, progress=False)
    table = result.table
    random_nf = np.sqrt(2.0 / table["k"])
    assert (table["nf"] > 0.5 * random_nf).all(), table[["kind", "nf"]]
    assert (table["nf"] > 0.05).all()
    assert "no consistent rotation" in result.summary()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_per_pair_measures_match_reference(unrelated_pair, dtype):
    result = postsvd.compare(unrelated_pair.base, unrelated_pair.post, dtype=dtype, progress=False)
    tol = 2e-4 if dtype == "float32" else 1e-9
    assert result.dtype == dtype
    for record in result.records:
        w_base = paper_matrix(unrelated_pair.base, record["layer"], record["kind"])
        w_post = paper_matrix(unrelated_pair.post, record["layer"], record["kind"])
        expected = reference.measures(w_base, w_post)
        assert (record["rows"], record["cols"], record["k"]) == (*w_base.shape, expected["k"])
        np.testing.assert_allclose(record["sigma_base"], expected["sigma_base"], rtol=tol, atol=tol)
        np.testing.assert_allclose(record["sigma_post"], expected["sigma_post"], rtol=tol, atol=tol)
        np.testing.assert_allclose(record["scaling"], expected["scaling"], rtol=tol, atol=tol)
        assert record["scaling_count"] == expected["scaling_count"]
        assert record["scaling_mean"] == pytest.approx(expected["scaling_mean"], abs=tol)
        assert record["scaling_std"] == pytest.approx(expected["scaling_std"], abs=tol)
        assert record["nf"] == pytest.approx(expected["nf"], abs=10 * tol)
        np.testing.assert_allclose(record["iorth_diag"], expected["iorth_diag"], atol=50 * tol)


def test_kind_table_pools_top90_over_layers(unrelated_pair):
    result = postsvd.compare(unrelated_pair.base, unrelated_pair.post, dtype="float64", progress=False)
    kinds = result.kind_table().set_index("kind")
    for kind in result.kinds:
        scalings = [reference.measures(paper_matrix(unrelated_pair.base, layer, kind),
                                       paper_matrix(unrelated_pair.post, layer, kind))["scaling"]
                    for layer in range(SYNTHETIC["layers"])]
        mean, std = reference.pooled(scalings)
        assert kinds.loc[kind, "scaling_mean"] == pytest.approx(mean, abs=1e-9)
        assert kinds.loc[kind, "scaling_std"] == pytest.approx(std, abs=1e-9)
        assert kinds.loc[kind, "nf_mean"] == pytest.approx(result.nf(kind).mean(), abs=1e-12)
        assert kinds.loc[kind, "layers"] == SYNTHETIC["layers"]


@pytest.mark.parametrize("mean, alpha", [(0.15, 0.2), (0.25, 0.3), (0.35, 0.4), (1.05, 1.1), (0.9071, 0.9),
                                         (0.9499, 0.9)])
def test_table4_alpha_rounds_ties_up(mean, alpha):
    """Table 4's alpha' is the C++ rule: halves round up (0.15 -> 0.2, where Python's round gives 0.1)."""
    assert postsvd._core.table4_alpha(mean) == pytest.approx(alpha, abs=1e-12)


@pytest.mark.parametrize("mean, alpha", [(0.25, 0.3), (1.25, 1.3)])
def test_kind_table_alpha_is_the_table4_rule(related_comparison, mean, alpha):
    """A kind whose pooled top-90 % scaling is exactly a tie (binary-exact, so the mean stays exact) gets the
    C++ rule's alpha'; Python's round would give 0.2 and 1.2."""
    tied = copy.copy(related_comparison)
    tied._records = [dict(r, scaling=np.full(r["scaling"].shape, mean)) if r["kind"] == "q" else r
                     for r in related_comparison.records]
    kinds = tied.kind_table().set_index("kind")
    assert kinds.loc["q", "scaling_mean"] == mean
    assert kinds.loc["q", "alpha"] == pytest.approx(alpha, abs=1e-12)


@pytest.mark.parametrize("leading_k", [None, 5])
def test_matrices_match_reference(unrelated_pair, leading_k):
    result = postsvd.compare(unrelated_pair.base, unrelated_pair.post, kinds="k,down", layers=[1], progress=False)
    for kind in ("k", "down"):
        got = result.matrices(1, kind, leading_k=leading_k)
        expected = reference.measures(paper_matrix(unrelated_pair.base, 1, kind),
                                      paper_matrix(unrelated_pair.post, 1, kind), leading_k=leading_k)
        size = expected["k"] if leading_k is None else leading_k
        for key in ("sim_u", "sim_v", "difference", "q1", "q2", "iorth"):
            assert got[key].shape == (size, size), key
            np.testing.assert_allclose(got[key], expected[key], atol=2e-4, err_msg=key)
        assert got["nf"] == pytest.approx(expected["nf"], abs=2e-4)


def test_svsm_and_sigma_are_layer_columns(related_comparison, related_pair):
    svsm = related_comparison.svsm("q")
    k = SYNTHETIC["hidden"]
    assert svsm.shape == (k, SYNTHETIC["layers"])
    np.testing.assert_allclose(svsm, ALPHA, atol=1e-4)
    base = related_comparison.sigma("q", "base")
    post = related_comparison.sigma("q", model="post")
    np.testing.assert_allclose(post / base, svsm, rtol=1e-12)
    for layer in range(SYNTHETIC["layers"]):
        expected = reference.svd(paper_matrix(related_pair.base, layer, "q"))[1]
        np.testing.assert_allclose(base[:, layer], expected, rtol=1e-5)
    assert related_comparison.layers_of("q") == list(range(SYNTHETIC["layers"]))


def test_layer_and_kind_selection(related_pair):
    result = postsvd.compare(related_pair.base, related_pair.post, layers="1", kinds=["down", "q"], progress=False)
    table = result.table
    assert list(zip(table["layer"], table["kind"])) == [(1, "q"), (1, "down")]
    assert result.kinds == ["q", "down"] and result.layers == [1]
    assert result.svsm("down").shape == (SYNTHETIC["hidden"], 1)
    attn = postsvd.compare(related_pair.base, related_pair.post, layers=[-1], kinds="attn", progress=False,
                           num_threads=1)
    assert attn.kinds == ["q", "k", "v", "o"] and attn.layers == [SYNTHETIC["layers"] - 1]


def test_pair_measures_on_arrays_match_reference(rng):
    w_base = reference.well_conditioned(30, 50, rng)
    w_post = reference.post_trained(w_base, 1.3, reference.random_rotation(30, rng))
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-4)):
        got = postsvd.pair_measures(w_base, w_post, dtype=dtype, full_matrices=True, leading_k=10)
        expected = reference.measures(w_base, w_post, leading_k=10)
        assert got["scaling_mean"] == pytest.approx(1.3, abs=tol)
        assert got["nf"] == pytest.approx(0.0, abs=tol)
        for key in ("sigma_base", "sigma_post", "scaling", "iorth_diag"):
            np.testing.assert_allclose(got[key], expected[key], atol=tol * 10, err_msg=key)
        for key in ("sim_u", "sim_v", "difference", "q1", "q2", "iorth"):
            np.testing.assert_allclose(got[key], expected[key], atol=tol * 10, err_msg=key)
    with pytest.raises(postsvd.InvalidArgumentError, match=r"expected the shape of base \[30, 50\], got \[50, 30\]"):
        postsvd.pair_measures(w_base, w_post.T)


def test_table_columns_and_repr(related_comparison):
    expected = ["layer", "kind", "in_features", "out_features", "k", "scaling_mean", "scaling_std", "nf",
                "sigma_base_max", "sigma_post_max", "iorth_diag_mean", "intruders", "tensor", "warm_sweeps"]
    assert list(related_comparison.table.columns) == expected
    row = related_comparison.table.iloc[6]  # layer 0, down: [in = intermediate, out = hidden]
    assert (row["kind"], row["in_features"], row["out_features"]) == ("down", SYNTHETIC["intermediate"],
                                                                      SYNTHETIC["hidden"])
    assert "llama" in repr(related_comparison)
