"""The warm-started decomposition (issue 15) on the CPU: a post matrix from its base's factors.

Checked against a float64 numpy reference on pairs whose answer is known: the bundled family
(instruct, reasoning close to base; base_alt not), synthetic pairs across rotation angles, an
exactly rank-deficient post, NaN input; and its integration: compare, the factor cache, track.
"""
from pathlib import Path

import numpy as np
import pytest

import postsvd
from postsvd import _core
from postsvd.synthetic import make_pair

MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"
MEASURES = ("scaling_mean", "scaling_std", "nf", "sigma_base_max", "sigma_post_max", "iorth_diag_mean")


def family_pairs(post: str, kinds=("q", "k", "gate", "down")):
    base_cp, post_cp = _core.Checkpoint(str(MODELS / "base")), _core.Checkpoint(str(MODELS / post))
    for source in _core.detect_architecture(base_cp)["matrices"]:
        if source["layer"] == 0 and source["kind"] in kinds:
            yield source["kind"], _core.read_matrix(base_cp, source, "float32"), _core.read_matrix(post_cp, source,
                                                                                                     "float32")


def check_against_float64(u, s, v, w):
    """The issue's bar in float32 mode, against numpy's float64 SVD of the same values."""
    reference = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    keep = reference >= 1e-3 * reference[0]
    assert np.max(np.abs(s[keep] - reference[keep]) / reference[keep]) <= 1e-5
    for q in (u.astype(np.float64), v.astype(np.float64)):
        assert np.max(np.abs(q.T @ q - np.eye(q.shape[1]))) <= 1e-5
    rebuilt = (u.astype(np.float64) * s) @ v.astype(np.float64).T
    assert np.linalg.norm(rebuilt - w) <= 1e-5 * np.linalg.norm(w)
    rows = np.argmax(np.abs(u), axis=0)
    assert np.all(u[rows, np.arange(u.shape[1])] > 0), "sign rule"


@pytest.mark.parametrize("post", ["instruct", "reasoning"])
def test_family_posts_start_from_the_base_and_meet_the_bar(post):
    backend = _core.Backend("cpu")
    for kind, base, w in family_pairs(post):
        u0, s0, v0 = backend.svd(base, "float32")
        u, s, v, report = backend.svd_warm(w, u0, s0, v0, "float32")
        assert not report["fell_back"], (kind, report)
        assert 1 <= report["sweeps"] <= 8, (kind, report)
        check_against_float64(u, s, v, w)


def test_base_alt_is_not_close_and_falls_back_to_the_cold_svd():
    backend = _core.Backend("cpu")
    for kind, base, w in family_pairs("base_alt"):
        u0, s0, v0 = backend.svd(base, "float32")
        u, s, v, report = backend.svd_warm(w, u0, s0, v0, "float32")
        assert report["fell_back"] and report["sweeps"] == -1, (kind, report)
        assert report["initial_off"] > 0.45
        check_against_float64(u, s, v, w)


def test_rank_deficient_post_and_nan_input(rng):
    backend = _core.Backend("cpu")
    base = rng.standard_normal((60, 40)).astype(np.float32)
    post = base.copy()
    post[:, 30:] = 0  # exactly rank 30
    u0, s0, v0 = backend.svd(base, "float32")
    u, s, v, report = backend.svd_warm(post, u0, s0, v0, "float32")
    assert np.all(s[30:] <= 1e-5 * s[0])
    np.testing.assert_allclose((u * s) @ v.T, post, atol=1e-5 * np.abs(post).max())
    assert np.max(np.abs(u.T @ u - np.eye(40))) <= 1e-5
    post[3, 4] = np.nan
    with pytest.raises(postsvd.InvalidArgumentError, match="tensor 'array': non-finite value nan"):
        backend.svd_warm(post, u0, s0, v0, "float32")
    with pytest.raises(postsvd.InvalidArgumentError, match="warm start of tensor 'array'"):
        backend.svd_warm(base[:, :30], u0, s0, v0, "float32")


@pytest.mark.parametrize("angle", [0.01, 0.1, 0.3])
def test_synthetic_pairs_give_the_cold_float64_measures(tmp_path, angle):
    pair = make_pair(tmp_path / "b", tmp_path / "p", rotation_angle=angle, dtype="float32", seed=3, layers=1,
                     hidden=96, intermediate=160)
    reference = postsvd.compare(pair.base, pair.post, progress=False, warm_start="off", dtype="float64").table
    warm = postsvd.compare(pair.base, pair.post, progress=False, warm_start="always").table
    assert (reference["warm_sweeps"] == -1).all()
    assert (warm["warm_sweeps"] >= 1).all(), warm["warm_sweeps"].tolist()
    for column in MEASURES:
        np.testing.assert_allclose(warm[column], reference[column], atol=1e-4, rtol=1e-4, err_msg=column)


def test_auto_is_the_measured_choice_and_bad_values_are_rejected(related_pair):
    # On the CPU the cold SVD measured faster at every shape (benchmarks/RESULTS.md): auto = cold.
    table = postsvd.compare(related_pair.base, related_pair.post, progress=False).table
    assert (table["warm_sweeps"] == -1).all()
    with pytest.raises(postsvd.InvalidArgumentError, match="warm_start: expected True, False or one of"):
        postsvd.compare(related_pair.base, related_pair.post, progress=False, warm_start="sometimes")


def test_cached_base_starts_the_post_and_track_starts_from_the_previous_checkpoint(tmp_path):
    cache = tmp_path / "factors"
    first = postsvd.compare(MODELS / "base", MODELS / "instruct", progress=False, cache=cache, warm_start="always",
                            kinds="q,down")
    assert (first.table["warm_sweeps"] >= 1).all()
    # The base's factors now come from the cache and start the other post.
    second = postsvd.compare(MODELS / "base", MODELS / "reasoning", progress=False, cache=cache,
                             warm_start="always", kinds="q,down")
    assert (second.table["warm_sweeps"] >= 1).all()
    cold = postsvd.compare(MODELS / "base", MODELS / "reasoning", progress=False, warm_start="off",
                           kinds="q,down", dtype="float64")
    for column in MEASURES:
        np.testing.assert_allclose(second.table[column], cold.table[column], atol=1e-4, err_msg=column)
    # A training run: the second checkpoint starts from the first one's cached factors.
    trajectory = postsvd.track(MODELS / "base", [MODELS / "instruct", MODELS / "reasoning"], steps=[1, 2],
                               progress=False, warm_start="always", kinds="q")
    for comparison in trajectory.comparisons:
        assert (comparison.table["warm_sweeps"] >= 1).all()
    reference = postsvd.compare(MODELS / "base", MODELS / "reasoning", progress=False, warm_start="off", kinds="q",
                                dtype="float64")
    np.testing.assert_allclose(trajectory.comparisons[1].table["nf"], reference.table["nf"], atol=1e-4)


def test_cli_shares_the_warm_start_options():
    from postsvd.cli import build_parser

    parser = build_parser()
    for command in (["compare", "b", "p", "--out", "o"], ["construct", "11", "--base", "b", "--post", "p",
                                                          "--out", "o"], ["report", "b", "p", "--out", "o"],
                    ["track", "b", "c", "--out", "o"]):
        assert parser.parse_args(command).warm_start == "auto"
        assert parser.parse_args(command + ["--no-warm-start"]).warm_start == "off"
        assert parser.parse_args(command + ["--warm-start", "always"]).warm_start == "always"
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "b", "p", "--out", "o", "--warm-start", "sometimes"])


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_cli_warm_start_always_runs_the_warm_path(tmp_path):
    """`--warm-start always` reaches the backend: the written table says how many sweeps each post took,
    where the default (auto, cold on the CPU) says -1."""
    import pandas as pd

    from postsvd.cli import main

    for flag, out in ((["--warm-start", "always"], tmp_path / "warm"), ([], tmp_path / "auto")):
        assert main(["compare", str(MODELS / "base"), str(MODELS / "instruct"), "--out", str(out), "--kinds", "q",
                     "--no-progress", *flag]) == 0
    assert (pd.read_csv(tmp_path / "warm" / "table.csv")["warm_sweeps"] >= 1).all()
    assert (pd.read_csv(tmp_path / "auto" / "table.csv")["warm_sweeps"] == -1).all()
