"""The factor cache shared by compare and construct: same measures as without
it, each matrix decomposed once across comparisons and constructions, a
damaged cache file recomputed, and a bad cache argument refused."""
import json
import os

import numpy as np
import pytest

import postsvd
from postsvd import cli
from postsvd.synthetic import make_pair

SIZES = dict(model_type="llama", layers=2, hidden=48, intermediate=80, heads=4, kv_heads=2)
PAIRS = 2 * 7


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """One base and two post models of it (different scaling and rotations)."""
    root = tmp_path_factory.mktemp("cache_family")
    first = make_pair(root / "base", root / "post_a", alpha=0.9, dtype="float32", seed=5, **SIZES)
    second = make_pair(root / "base_b", root / "post_b", alpha=1.2, rotation_angle=0.6, dtype="float32", seed=5,
                       **SIZES)
    # Same seed, same base bytes: post_b is a post model of `base` too.
    assert (root / "base" / "model.safetensors").read_bytes() == (root / "base_b" / "model.safetensors").read_bytes()
    return first.base, first.post, second.post


def test_cached_comparison_equals_the_plain_one_and_reuses_every_decomposition(family, tmp_path):
    base, post_a, _ = family
    cache = tmp_path / "factors"
    plain = postsvd.compare(base, post_a, progress=False)
    cold = postsvd.compare(base, post_a, progress=False, cache=cache)
    assert cold.decompositions == {"computed": 2 * PAIRS, "loaded": 0}
    assert len([f for f in os.listdir(cache) if f.endswith(".svd")]) == 2 * PAIRS
    warm = postsvd.compare(base, post_a, progress=False, cache=cache)
    assert warm.decompositions == {"computed": 0, "loaded": 2 * PAIRS}
    assert warm.factor_cache == str(cache) and plain.factor_cache is None and plain.decompositions["loaded"] == 0
    for column in ("scaling_mean", "scaling_std", "nf", "sigma_base_max", "sigma_post_max", "iorth_diag_mean"):
        np.testing.assert_allclose(cold.table[column], plain.table[column], rtol=1e-5, atol=1e-6, err_msg=column)
        np.testing.assert_array_equal(warm.table[column], cold.table[column], err_msg=column)  # the same factors
    for a, b in zip(warm.records, cold.records):
        np.testing.assert_array_equal(a["scaling"], b["scaling"])
    # Full matrices (Fig. 3) come from the cache too, equal to the cold run's.
    np.testing.assert_array_equal(warm.matrices(1, "o")["iorth"], cold.matrices(1, "o")["iorth"])
    assert warm.decompositions["computed"] == 0
    assert "factor cache: " in warm.summary().splitlines()[0]


def test_one_base_with_two_posts_is_decomposed_once(family, tmp_path):
    base, post_a, post_b = family
    cache = tmp_path / "factors"
    postsvd.compare(base, post_a, progress=False, cache=cache)
    second = postsvd.compare(base, post_b, progress=False, cache=cache)
    assert second.decompositions == {"computed": PAIRS, "loaded": PAIRS}
    np.testing.assert_allclose(second.table["scaling_mean"], postsvd.compare(base, post_b, progress=False)
                               .table["scaling_mean"], rtol=1e-5)


def test_constructions_reuse_the_comparisons_decompositions(family, tmp_path):
    base, post_a, _ = family
    cache = tmp_path / "factors"
    comparison = postsvd.compare(base, post_a, progress=False, cache=cache)
    built = postsvd.construct(9, base, post_a, tmp_path / "c9", group="all", comparison=comparison, cache=cache,
                              progress=False)
    assert built.decompositions_computed == 0 and built.decompositions_loaded == 2 * PAIRS
    # ...and a comparison of the constructed model decomposes only the new weights.
    after = postsvd.compare(base, tmp_path / "c9", progress=False, cache=cache)
    assert after.decompositions == {"computed": PAIRS, "loaded": PAIRS}
    alpha = {kind: built.alpha[kind] for kind in after.kinds}
    for row in after.table.itertuples():  # Construction 9: sigma_new = alpha' sigma_base, up to bf16/f32 rounding
        assert row.scaling_mean == pytest.approx(alpha[row.kind], rel=1e-3), (row.layer, row.kind)


def test_a_damaged_cache_file_is_recomputed(family, tmp_path):
    base, post_a, _ = family
    cache = tmp_path / "factors"
    cold = postsvd.compare(base, post_a, progress=False, cache=cache)
    files = sorted(f for f in os.listdir(cache) if f.endswith(".svd"))
    victim = cache / files[0]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    (cache / files[1]).write_bytes(b"not a factor file")
    with pytest.warns(UserWarning, match="factor cache: .*recomputing") as caught:
        again = postsvd.compare(base, post_a, progress=False, cache=cache)
    assert len([w for w in caught if "factor cache" in str(w.message)]) == 2  # each damaged file, named
    assert again.decompositions == {"computed": 2, "loaded": 2 * PAIRS - 2}
    # Recomputed alone (all BLAS threads) rather than side by side: equal to rounding.
    np.testing.assert_allclose(again.table["nf"], cold.table["nf"], rtol=1e-4, atol=1e-7)
    assert victim.stat().st_size > 100  # rewritten whole


def test_a_cache_path_that_is_a_file_is_refused(family, tmp_path):
    base, post_a, _ = family
    blocker = tmp_path / "factors"
    blocker.write_text("mine")
    with pytest.raises(postsvd.InvalidArgumentError, match="cache: .*exists and is not a folder"):
        postsvd.compare(base, post_a, progress=False, cache=blocker)
    with pytest.raises(postsvd.InvalidArgumentError, match="cache: expected a folder path"):
        postsvd.compare(base, post_a, progress=False, cache=3.5)
    assert blocker.read_text() == "mine"


def test_cli_compare_with_two_posts_shares_the_cache(family, tmp_path, capsys):
    base, post_a, post_b = family
    out, cache = tmp_path / "out", tmp_path / "factors"
    code = cli.main(["compare", str(base), str(post_a), str(post_b), "--out", str(out), "--cache", str(cache),
                     "--no-plots", "--no-progress"])
    assert code == 0
    runs = [json.loads((out / name / "run.json").read_text()) for name in ("post_a", "post_b")]
    assert runs[0]["decompositions"] == {"computed": 2 * PAIRS, "loaded": 0}
    assert runs[1]["decompositions"] == {"computed": PAIRS, "loaded": PAIRS}
    assert runs[1]["factor_cache"] == str(cache)
    assert "factor cache: 14 decompositions loaded, 14 computed" in capsys.readouterr().out


def test_the_cache_size_estimate_bounds_the_files_and_warns_when_the_disk_is_short(family, tmp_path, monkeypatch):
    import collections
    import shutil

    from postsvd._engine import cache_bytes_needed

    base, post_a, _ = family
    cache = tmp_path / "factors"
    result = postsvd.compare(base, post_a, progress=False, cache=cache)
    written = sum(f.stat().st_size for f in cache.iterdir())
    sources = [s for s in result._comparator.architecture["matrices"]]
    estimate = cache_bytes_needed(sources)
    assert written <= estimate <= 1.05 * written
    assert cache_bytes_needed(sources, "float64") > 1.9 * estimate

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.warns(UserWarning, match=r"cache: filling .* may need up to [0-9.]+ KiB .* only 1000 bytes are free"):
        postsvd.compare(base, post_a, progress=False, cache=tmp_path / "new" / "factors")
