"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence";
docs/measures.md): against a float64 numpy reference of the paper's Algorithm 1 (reference.intruders, which
works on the stored [out, in] weights as the paper's code does) on pairs with a known answer, the recounts of a
Comparison, and peft's own detection (peft/tuners/lora/intruders.py) on merged LoRA adapters of tiny models."""
import copy
import json
import re

import numpy as np
import pandas as pd
import pytest

import postsvd
import reference
from helpers import build_tiny_model, requires_cuda, save_model

SIDES = ("output", "input")


def stored_intruder_pair(out_features, in_features, added, rng):
    """A pair with a known answer built as the paper sees a LoRA update of a stored weight W_hf [out, in]
    (out > in): post = base + sum_i s_i b_i a_i^T with b_i orthonormal and orthogonal to every left (output-side)
    singular vector of the base, a_i the base's weakest right singular vectors and s_i above sigma_1. The top
    `added` output-side post singular vectors are intruders; every other post singular triplet is a base one.
    Returns both in paper orientation (W_hf^T)."""
    u_all, _ = np.linalg.qr(rng.standard_normal((out_features, in_features + added)))
    u0, new = u_all[:, :in_features], u_all[:, in_features:]
    v0, _ = np.linalg.qr(rng.standard_normal((in_features, in_features)))
    base = (u0 * (8.0 * 0.9 ** np.arange(in_features))) @ v0.T
    post = base + sum((20.0 + 5.0 * i) * np.outer(new[:, i], v0[:, in_features - 1 - i]) for i in range(added))
    return base.T, post.T


def known_pair(side, rng, added=3):
    """stored_intruder_pair with its intruders on `side`: the input side is the transposed pair's output side."""
    base, post = stored_intruder_pair(50, 30, added, rng)
    return (base, post) if side == "output" else (base.T, post.T)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("side", SIDES)
def test_added_orthogonal_directions_are_exactly_the_intruders(side, dtype, rng):
    base, post = known_pair(side, rng)
    tol = 1e-4 if dtype == "float32" else 1e-10
    for asked in SIDES:
        for k in (1, 3, 10, 100):
            for epsilon in (0.1, 0.5, 0.9):
                got = postsvd.pair_measures(base, post, dtype=dtype, intruder_k=k, intruder_epsilon=epsilon,
                                            intruder_side=asked)
                count, cosines = reference.intruders(base, post, k, epsilon, asked)
                expected = min(k, 3) if asked == side else 0  # the other side's vectors are all base ones
                assert got["intruders"] == count == expected, (asked, k, epsilon)
                assert got["intruder_cosines"].shape == (min(k, 30),)
                np.testing.assert_allclose(got["intruder_cosines"], cosines, atol=tol, err_msg=f"{asked} k={k}")


@pytest.mark.parametrize("shape", [(40, 40), (60, 24), (24, 60)])
def test_a_slightly_rotated_base_has_none(shape, rng):
    m, n = shape
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = 5.0 * 0.92 ** np.arange(k)
    base = (u * s) @ v.T
    post = ((u @ reference.random_rotation(k, rng, 0.05)) * s) @ (v @ reference.random_rotation(k, rng, 0.05)).T
    for side in SIDES:
        got = postsvd.pair_measures(base, post, dtype="float64", intruder_side=side)
        count, cosines = reference.intruders(base, post, side=side)
        assert got["intruders"] == count == 0
        assert cosines.min() > 0.9
        np.testing.assert_allclose(got["intruder_cosines"], cosines, atol=1e-10)
        # epsilon = 1: every top vector that is not exactly a base one.
        assert postsvd.pair_measures(base, post, dtype="float64", intruder_epsilon=1.0,
                                     intruder_side=side)["intruders"] == 10


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(40, 40), (60, 24), (24, 60)])
def test_generic_pairs_match_algorithm_1(shape, dtype, rng):
    """Neither known nor extreme: a base and a post changed enough to spread the cosines over [0, 1]."""
    tol = 2e-4 if dtype == "float32" else 1e-9
    base = rng.standard_normal(shape) * (0.9 ** np.arange(shape[1]))
    post = base + 0.6 * rng.standard_normal(shape)
    compared = 0
    for side in SIDES:
        for k in (5, 12):
            for epsilon in (0.3, 0.5, 0.7):
                got = postsvd.pair_measures(base, post, dtype=dtype, intruder_k=k, intruder_epsilon=epsilon,
                                            intruder_side=side)
                count, cosines = reference.intruders(base, post, k, epsilon, side)
                np.testing.assert_allclose(got["intruder_cosines"], cosines, atol=tol)
                if np.min(np.abs(cosines - epsilon)) > 10 * tol:  # no vector at the threshold itself
                    assert got["intruders"] == count
                    compared += 1
    assert compared >= 8


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype, tol", [("float32", 2e-4), ("float64", 1e-10)])
def test_the_cuda_backend_counts_as_the_cpu(rng, dtype, tol):
    """The device computes the cosines from its own Q1 / Q2 (the column maxima on the GPU): the same counts
    and, to rounding, the same cosines as the CPU, on known and generic pairs, both sides."""
    generic = rng.standard_normal((48, 80))
    pairs = [known_pair("output", rng), known_pair("input", rng),
             (generic, generic + 0.6 * rng.standard_normal((48, 80)))]
    for base, post in pairs:
        for side in SIDES:
            for k in (3, 10, 64):
                options = dict(dtype=dtype, intruder_k=k, intruder_side=side)
                cpu = postsvd.pair_measures(base, post, **options)
                gpu = postsvd.pair_measures(base, post, device="cuda", **options)
                np.testing.assert_allclose(gpu["intruder_cosines"], cpu["intruder_cosines"], atol=tol)
                if np.min(np.abs(cpu["intruder_cosines"] - 0.5)) > 10 * tol:
                    assert gpu["intruders"] == cpu["intruders"], (side, k)


def test_bad_options_name_the_option(rng):
    w = rng.standard_normal((8, 6))
    for options, words in (({"intruder_k": 0}, "intruder_k: expected >= 1"),
                           ({"intruder_k": 2.5}, "intruder_k: expected a positive integer"),
                           ({"intruder_epsilon": 1.5}, r"intruder_epsilon: expected a \|cosine\| threshold in \[0, 1"),
                           ({"intruder_epsilon": float("nan")}, "intruder_epsilon"),
                           ({"intruder_epsilon": "0.5"}, "intruder_epsilon: expected a number"),
                           ({"intruder_side": "left"}, "intruder_side: expected one of 'output', 'input', got 'left'")):
        with pytest.raises(postsvd.InvalidArgumentError, match=words):
            postsvd.pair_measures(w, w, **options)
    assert postsvd.pair_measures(w, w, intruder_side=" Input ")["intruders"] == 0


# ---------------------------------------------------------------- a comparison: records, tables, recounts

@pytest.fixture(scope="module")
def unrelated_comparison(unrelated_pair):
    return postsvd.compare(unrelated_pair.base, unrelated_pair.post, progress=False, intruder_k=6)


def test_the_tables_count_what_the_records_keep(unrelated_comparison, unrelated_pair):
    c = unrelated_comparison
    assert (c.intruder_k, c.intruder_epsilon, c.intruder_side) == (6, 0.5, "output")
    assert c.run_info()["intruders"] == {"k": 6, "epsilon": 0.5, "side": "output"}
    table, kinds = c.table, c.kind_table()
    assert table["intruders"].tolist() == [r["intruders"] for r in c.records]
    assert table["intruders"].sum() > 0  # unrelated models: new directions everywhere
    for row in kinds.itertuples():
        assert row.intruders == table.loc[table["kind"] == row.kind, "intruders"].sum()
    # Each record's count is Algorithm 1 on the stored matrices.
    for r in c.records:
        w_base = postsvd.read_matrix(unrelated_pair.base, r["layer"], r["kind"], dtype="float64")
        w_post = postsvd.read_matrix(unrelated_pair.post, r["layer"], r["kind"], dtype="float64")
        count, cosines = reference.intruders(w_base, w_post, k=6)
        np.testing.assert_allclose(r["intruder_cosines"], cosines, atol=2e-4)
        if np.min(np.abs(cosines - 0.5)) > 1e-3:
            assert r["intruders"] == count, (r["layer"], r["kind"])
    assert "Intruder dimensions (top 6 output-side singular vectors with |cos| < 0.5" in c.summary()


def test_recounts_equal_a_run_at_those_settings(unrelated_comparison, unrelated_pair):
    c = unrelated_comparison
    assert c.intruders()["intruders"].tolist() == c.table["intruders"].tolist()
    again = postsvd.compare(unrelated_pair.base, unrelated_pair.post, progress=False, intruder_k=3,
                            intruder_epsilon=0.35)
    recount = c.intruders(epsilon=0.35, k=3)
    assert list(recount.columns) == ["layer", "kind", "intruders"]
    assert recount["intruders"].tolist() == again.table["intruders"].tolist()
    with pytest.raises(postsvd.InvalidArgumentError, match="k: at most 6.*intruder_k=7"):
        c.intruders(k=7)
    with pytest.raises(postsvd.InvalidArgumentError, match="intruder_epsilon"):
        c.intruders(epsilon=-0.1)


def test_the_curve_against_epsilon(unrelated_comparison):
    c = unrelated_comparison
    curve = c.intruder_curve()
    assert curve.index.name == "epsilon" and curve.index[0] == 0.0 and curve.index[-1] == 1.0
    assert list(curve.columns) == c.kinds + ["all"]
    assert (curve.diff().dropna() >= 0).all().all()  # a larger epsilon counts at least as many
    assert curve.iloc[0].sum() == 0
    at_run = curve.loc[0.5]
    assert at_run[c.kinds].tolist() == c.kind_table()["intruders"].tolist()
    assert at_run["all"] == c.table["intruders"].sum()
    small = c.intruder_curve([0.2, 0.6], k=2, kinds="q,k")
    assert list(small.columns) == ["q", "k", "all"]
    for epsilon in (0.2, 0.6):
        counts = c.intruders(epsilon=epsilon, k=2)
        assert small.loc[epsilon, "q"] == counts.loc[counts["kind"] == "q", "intruders"].sum()
    figure = c.plot_intruders()
    ax = figure.axes[0]
    assert [line.get_label() for line in ax.get_lines()][:len(c.kinds) + 1] == [f"W_{k}" for k in c.kinds] + [
        "all kinds"]
    assert "top 6 output-side" in ax.get_title()


def test_no_intruders_no_summary_line(related_comparison):
    assert related_comparison.table["intruders"].sum() == 0
    assert "Intruder dimensions" not in related_comparison.summary()


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_save_and_cli_write_the_figure_and_the_settings(unrelated_pair, tmp_path):
    from postsvd.cli import main

    out = tmp_path / "out"
    code = main(["compare", str(unrelated_pair.base), str(unrelated_pair.post), "--out", str(out), "--no-progress",
                 "--intruder-k", "4", "--intruder-epsilon", "0.3", "--intruder-side", "input"])
    assert code == 0
    assert (out / "intruders.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "run.json").read_text())["intruders"] == {"k": 4, "epsilon": 0.3, "side": "input"}
    table = pd.read_csv(out / "table.csv")
    direct = postsvd.compare(unrelated_pair.base, unrelated_pair.post, progress=False, intruder_k=4,
                             intruder_epsilon=0.3, intruder_side="input")
    assert table["intruders"].tolist() == direct.table["intruders"].tolist()
    assert "intruders" in pd.read_csv(out / "kinds.csv").columns
    assert main(["compare", str(unrelated_pair.base), str(unrelated_pair.post), "--out", str(tmp_path / "bad"),
                 "--no-progress", "--intruder-epsilon", "2"]) == 1
    assert not (tmp_path / "bad").exists()


def test_ray_tasks_count_with_the_run_options(unrelated_pair):
    """distributed.run_unit (a Ray task's body, run here without Ray) opens its comparator with the run's
    intruder options."""
    from postsvd import distributed
    from postsvd._engine import open_run

    run = open_run(unrelated_pair.base, unrelated_pair.post, intruder_k=3, intruder_epsilon=0.4,
                   intruder_side="input")
    options = distributed.RunOptions(run.base, run.post, "cpu", run.precision, 0, 1, "", run.warm_start,
                                     run.warm_from, dict(run.intruders))
    records, _ = distributed.run_unit(options, "cpu", 1, run.units()[0], None)
    local = postsvd.compare(unrelated_pair.base, unrelated_pair.post, progress=False, layers=0, intruder_k=3,
                            intruder_epsilon=0.4, intruder_side="input")
    assert [len(r["intruder_cosines"]) for r in records] == [3] * len(records)
    assert [r["intruders"] for r in records] == local.table["intruders"].tolist()


# ---------------------------------------------------------------- against peft's own detection

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: Per architecture: the LoRA target modules and the factor on lora_B per module name ending (1 elsewhere). In
#: llama two modules get a negligible update (no intruders expected there); in gpt2 every update is weakened so
#: that the cosines spread over [0, 1] and the two sides count differently.
LORAS = {"llama": (LLAMA_TARGETS, {"k_proj": 1e-4, "up_proj": 1e-4}),
         "gpt2": (["c_attn", "c_proj", "c_fc"], {"c_attn": 0.3, "c_proj": 0.3, "c_fc": 0.3})}


def _peft_counts(peft_model, k, epsilon):
    """peft's detection per LoRA module: reduce_intruder_dimension's log lines ("NAME: Intruders: N" or
    "NAME: No intruders"), on a copy (it adds a mitigated adapter)."""
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    lines = []
    reduce_intruder_dimension(copy.deepcopy(peft_model), top_k=k, threshold_epsilon=epsilon, logging_sink=lines.append)
    counts = {}
    for line in lines:
        found = re.fullmatch(r"base_model\.model\.(.+): (?:Intruders: (\d+)|No intruders)", line)
        if found:
            counts[found.group(1)] = int(found.group(2) or 0)
    return counts


@pytest.fixture(scope="module")
def lora_models(tmp_path_factory):
    """Per architecture: (base folder, merged folder, the peft model): a tiny model, a LoRA with random non-zero
    A and B on every projection (B scaled as LORAS says), merged by peft's merge_and_unload, both saved in
    float32."""
    pytest.importorskip("torch")
    peft = pytest.importorskip("peft", minversion="0.19")
    import torch

    root = tmp_path_factory.mktemp("lora")
    made = {}
    for model_type, (targets, factors) in LORAS.items():
        model = build_tiny_model(model_type, seed=3)
        save_model(model, root / f"{model_type}_base", dtype="float32")
        torch.manual_seed(4)
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                                 fan_in_fan_out=model_type == "gpt2")
        peft_model = peft.get_peft_model(model, config)
        with torch.no_grad():
            for name, module in peft_model.named_modules():
                if hasattr(module, "lora_B"):
                    module.lora_B["default"].weight.mul_(factors.get(name.rsplit(".", 1)[-1], 1.0))
        merged = copy.deepcopy(peft_model).merge_and_unload()
        save_model(merged, root / f"{model_type}_merged", dtype="float32")
        made[model_type] = (root / f"{model_type}_base", root / f"{model_type}_merged", peft_model)
    return made


def _agreement(comparison, peft_counts, k, epsilon):
    """(agreeing, skipped) over the compared matrices that peft counted too (by module name); a matrix with a
    cosine within 1e-4 of epsilon among its top k is skipped (float32 rounding may put it on either side)."""
    agreeing = skipped = 0
    for r, count in zip(comparison.records, comparison.intruders(epsilon=epsilon, k=k)["intruders"]):
        name = r["tensor"].removesuffix(".weight")
        if name not in peft_counts:
            continue
        if np.min(np.abs(np.asarray(r["intruder_cosines"][:k]) - epsilon)) < 1e-4:
            skipped += 1
            continue
        assert count == peft_counts[name], (name, k, epsilon)
        agreeing += 1
    return agreeing, skipped


def test_merged_llama_lora_counts_as_peft_detects(lora_models):
    base, merged, peft_model = lora_models["llama"]
    comparison = postsvd.compare(base, merged, progress=False, intruder_k=10)
    for k in (2, 5, 10):
        for epsilon in (0.3, 0.5, 0.7):
            counts = _peft_counts(peft_model, k, epsilon)
            assert len(counts) == 2 * len(LLAMA_TARGETS)
            agreeing, skipped = _agreement(comparison, counts, k, epsilon)
            assert agreeing == len(counts) - skipped and skipped <= 1, (k, epsilon, skipped)
    # The input side is another count: the test tells the two apart.
    inputs = postsvd.compare(base, merged, progress=False, intruder_side="input")
    counts = _peft_counts(peft_model, 10, 0.5)
    assert inputs.table["intruders"].tolist() != [counts[r["tensor"].removesuffix(".weight")] for r in inputs.records]
    # The LoRA brought intruders in where it was strong, none where it was negligible.
    table = comparison.table
    assert (table.loc[table["kind"].isin(["k", "up"]), "intruders"] == 0).all()
    assert (table.loc[table["kind"].isin(["q", "o", "gate", "down"]), "intruders"] > 0).all()


def test_merged_gpt2_lora_peft_counts_the_stored_layouts_left_vectors(lora_models):
    """GPT-2's Conv1D stores [in, out]: peft's detection takes the left singular vectors of the stored weight,
    so there it counts the input side; postsvd's input side agrees with it (its default output side is the
    paper's, that of nn.Linear's left singular vectors). c_attn is fused (q, k, v apart in postsvd): compared
    are attn.c_proj, mlp.c_fc and mlp.c_proj."""
    base, merged, peft_model = lora_models["gpt2"]
    comparison = postsvd.compare(base, merged, progress=False, intruder_k=10, intruder_side="input",
                                 kinds="o,up,down")
    for k, epsilon in ((4, 0.5), (10, 0.4), (10, 0.5), (10, 0.6)):
        counts = _peft_counts(peft_model, k, epsilon)
        agreeing, skipped = _agreement(comparison, counts, k, epsilon)
        assert agreeing == 3 * 2 - skipped and skipped <= 1, (k, epsilon, skipped)
    # The output side is another count here: peft's number is not the paper's output-side one for Conv1D.
    output = postsvd.compare(base, merged, progress=False, kinds="o,up,down")
    counts = _peft_counts(peft_model, 10, 0.4)
    assert output.intruders(epsilon=0.4)["intruders"].tolist() != [
        counts[r["tensor"].removesuffix(".weight")] for r in output.records]
