"""postsvd.lineage / `postsvd lineage A B`: is B derived from A? Verdicts on the bundled family, on
function-preserving disguises of a derived model (checked through transformers: same logits), on an
FP8 copy, on out-of-scope pairs; the statistics' null distributions; the CLI and its files."""
import itertools
import json
import math
import os

import numpy as np
import pytest

import postsvd
from disguise import disguised_copy
from helpers import build_model
from postsvd import cli
from postsvd.lineage import fisher_log_p, fixed_point_distribution, lineage, poisson_log_sf

MODELS = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "models")
BASE, BASE_ALT, INSTRUCT, REASONING = (os.path.join(MODELS, n) for n in ("base", "base_alt", "instruct", "reasoning"))
#: Fast and deterministic on a shared 2-core box: one BLAS thread, no paper NF unless a test asks for it.
FAST = dict(num_threads=1, paper_nf=False)


# ---------------------------------------------------------------------- the null distributions

def test_poisson_tail_matches_scipy_far_into_the_tail():
    from scipy.stats import poisson

    for count, rate in ((0, 1.0), (1, 1.0), (3, 1.0), (7, 1.25), (40, 1.0), (2, 3.5)):
        assert math.isclose(poisson_log_sf(count, rate), poisson.logsf(count - 1, rate), rel_tol=1e-9, abs_tol=1e-12)
    # Where the float underflows the log stays exact: log P(X >= 512) for rate 1 is -1 - log(512!) + O(1/512).
    assert abs(poisson_log_sf(512, 1.0) - (-1.0 - math.lgamma(513))) < 0.01


def test_fixed_points_of_independent_permutations_match_enumeration():
    sizes = (3, 2, 3)
    counts = np.zeros(sum(sizes) + 1)
    for perms in itertools.product(*(itertools.permutations(range(m)) for m in sizes)):
        counts[sum(int(np.sum(np.array(p) == np.arange(len(p)))) for p in perms)] += 1
    assert np.allclose(fixed_point_distribution(sizes), counts / counts.sum(), atol=1e-12)


def test_fisher_matches_scipy():
    from scipy.stats import combine_pvalues

    ps = [0.2, 0.03, 0.5, 0.9]
    assert math.isclose(math.exp(fisher_log_p([math.log(p) for p in ps])), combine_pvalues(ps, "fisher").pvalue,
                        rel_tol=1e-9)
    assert fisher_log_p([]) == 0.0 and fisher_log_p([0.0, 0.0]) == 0.0


# ---------------------------------------------------------------------- the bundled family

@pytest.mark.parametrize("post", [INSTRUCT, REASONING])
def test_post_trained_models_are_derived(post):
    result = lineage(BASE, post, **FAST)
    assert result.verdict == "derived" and result.log10_p < -100, result.summary()
    mlp = result.table[result.table["block"] == "mlp"]
    assert list(mlp["layer"]) == [0, 1, 2, 3] and mlp["supports"].all()
    assert (mlp["statistic"] > 0.9 * mlp["units"]).all()  # nearly every unit keeps its partner
    assert len(result.supporting_rows()) == 4


def test_separately_pretrained_base_is_independent():
    result = lineage(BASE, BASE_ALT, **FAST)
    assert result.verdict == "independent" and result.p_value >= result.level, result.summary()
    mlp = result.table[result.table["block"] == "mlp"]
    assert (mlp["statistic"] < 10).all() and not result.table["supports"].any()
    assert not result.reasons


# ---------------------------------------------------------------------- disguises

@pytest.fixture(scope="module")
def disguised(tmp_path_factory):
    """instruct under every disguise (and all at once), each checked function-preserving; base_alt under all."""
    import torch

    root = tmp_path_factory.mktemp("disguised")
    folders, differences = {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster than two fighting over a shared box
    try:
        for name in MOVES:
            folders[name] = str(root / name)
            differences[name] = disguised_copy(INSTRUCT, folders[name], name, seed=7)
        folders["independent"] = str(root / "independent")
        differences["independent"] = disguised_copy(BASE_ALT, folders["independent"], "all", seed=8)
    finally:
        torch.set_num_threads(threads)
    return folders, differences


#: The alignment each disguise must show moving (index into Lineage.alignments) and by at least how much.
MOVES = {"permute_mlp_units": (2, 0.9), "permute_heads": (3, 0.3), "rotate_residual": (1, 0.7),
         "rescale_heads": (4, 0.3), "scale_uniformly": (5, 1.8), "all": (1, 0.7)}


@pytest.mark.parametrize("name", list(MOVES))
def test_disguised_derivative_is_still_derived(disguised, name):
    folders, differences = disguised
    assert differences[name] < 1e-4  # same logits through transformers
    result = lineage(BASE, folders[name], **FAST)
    assert result.verdict == "derived" and result.log10_p < -100, result.summary()
    index, least = MOVES[name]
    assert result.alignments[index]["change"] > least, result.alignments[index]


def test_undisguised_derivative_moves_no_alignment():
    result = lineage(BASE, INSTRUCT, **FAST)
    changes = [a["change"] for a in result.alignments]
    assert changes[2] == 0.0 and changes[3] == 0.0 and changes[4] < 0.1  # no unit or head moved or rescaled


def test_disguised_independent_model_is_not_derived(disguised):
    folders, differences = disguised
    assert differences["independent"] < 1e-4
    result = lineage(BASE, folders["independent"], **FAST)
    assert result.verdict == "independent", result.summary()


def test_disguise_that_changes_the_function_is_caught(tmp_path, monkeypatch):
    # The logit check can fail: dropping the down permutation breaks the model.
    import disguise

    def broken(state, config, seed=0):
        out = disguise.permute_mlp_units(state, config, seed)
        for layer in range(config.num_hidden_layers):
            key = f"model.layers.{layer}.mlp.down_proj.weight"
            out[key] = state[key]
        return out

    monkeypatch.setitem(disguise.DISGUISES, "broken", broken)
    with pytest.raises(AssertionError, match="changed the logits"):
        disguise.disguised_copy(INSTRUCT, str(tmp_path / "broken"), "broken")


# ---------------------------------------------------------------------- formats and scope

def test_fp8_copy_of_a_derived_model_is_derived(tmp_path):
    from quantize import write_block_fp8

    fp8 = tmp_path / "instruct-fp8"
    write_block_fp8(INSTRUCT, str(fp8), block=(64, 64))
    result = lineage(BASE, fp8, **FAST)
    assert result.verdict == "derived", result.summary()


def _save_llama(folder, *, vocab=64, layers=2, hidden=32, seed=0, intermediate=None):
    model = build_model(vocab, seed=seed, layers=layers, hidden=hidden)
    if intermediate is not None:
        import torch
        from transformers import LlamaForCausalLM

        config = model.config
        config.intermediate_size = intermediate
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("change, reason", [
    (dict(layers=3), "depths differ (2 and 3 layers): a pruned or depth-upscaled copy is out of scope"),
    (dict(hidden=48), "widths differ (hidden 32 and 48"),
])
def test_out_of_scope_pairs_are_inconclusive_with_the_reason(tmp_path, change, reason):
    a = _save_llama(tmp_path / "a")
    b = _save_llama(tmp_path / "b", seed=1, **change)
    result = lineage(a, b, **FAST)
    assert result.verdict == "inconclusive" and result.p_value is None
    assert any(reason in r for r in result.reasons), result.reasons
    assert "INCONCLUSIVE" in result.summary() and reason in result.summary()
    assert reason in result.to_html() and result.to_dict()["verdict"] == "inconclusive"


def test_too_few_units_to_reach_the_level_is_inconclusive(tmp_path):
    a = _save_llama(tmp_path / "a", layers=1, intermediate=4)
    result = lineage(a, a, **FAST)  # identical, yet 4 units cannot give p < 0.01
    assert result.verdict == "inconclusive" and any("too few MLP units" in r for r in result.reasons)
    assert lineage(a, a, level=0.05, **FAST).verdict == "derived"


def test_independent_random_models_are_not_derived(tmp_path):
    results = [lineage(_save_llama(tmp_path / f"a{seed}", seed=seed),
                       _save_llama(tmp_path / f"b{seed}", seed=100 + seed), **FAST) for seed in range(3)]
    assert all(r.verdict == "independent" for r in results), [r.summary() for r in results]


def test_bad_inputs_name_the_folder(tmp_path):
    with pytest.raises(postsvd.BadCheckpointError, match=r"b: folder '.*missing' does not exist"):
        lineage(BASE, tmp_path / "missing")
    bert = tmp_path / "bert"
    _save_llama(bert)
    (bert / "config.json").write_text(json.dumps({**json.loads((bert / "config.json").read_text()),
                                                  "model_type": "bert"}))
    with pytest.raises(postsvd.BadCheckpointError, match=r"bert.*unsupported model_type 'bert'; supported: .*gpt2"):
        lineage(BASE, bert)
    with pytest.raises(postsvd.InvalidArgumentError, match="unknown kind 'zz'"):  # the paper-NF options, up front
        lineage(BASE, INSTRUCT, kinds="zz")
    for level in (0, 1, "x"):
        with pytest.raises(postsvd.InvalidArgumentError, match="level"):
            lineage(BASE, INSTRUCT, level=level)


# ---------------------------------------------------------------------- outputs and CLI

def test_cli_writes_json_csv_and_html(tmp_path, capsys):
    out = tmp_path / "lineage"
    code = cli.main(["lineage", BASE, REASONING, "--out", str(out), "--threads", "1", "--no-progress", "--static"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "DERIVED" in captured.out and "wrote" in captured.out
    data = json.loads((out / "lineage.json").read_text())
    assert data["verdict"] == "derived" and data["log10_p"] < -100 and len(data["alignments"]) == 6
    assert {row["kind"] for row in data["nf_table"]} == {"q", "k", "v", "o", "gate", "up", "down"}
    assert max(row["nf"] for row in data["nf_table"]) < 0.5 * min(row["nf_random"] for row in data["nf_table"])
    assert (out / "lineage.csv").read_text().splitlines()[0].startswith("layer,block,kinds,units,statistic")
    page = (out / "lineage.html").read_text()
    assert "<b>derived</b>" in page and "Alignments applied" in page and "Zhu, Ahmed" in page
    # --static: the PNG figure, no script (the interactive page is checked in a browser: test_interactive.py)
    assert page.count('src="data:image/png;base64,') == 1 and "http" not in page.split("<body>")[1]
    assert "<script" not in page


def test_cli_bad_folder_exits_1_before_writing(tmp_path, capsys):
    out = tmp_path / "never"
    code = cli.main(["lineage", BASE, str(tmp_path / "nope"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "nope" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_comparison_summary_points_to_lineage(unrelated_pair):
    summary = postsvd.compare(unrelated_pair.base, unrelated_pair.post, progress=False).summary()
    assert "postsvd lineage" in summary
