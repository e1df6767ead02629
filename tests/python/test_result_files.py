"""What a saved result holds: each result type declares its files once (postsvd._outputs.FileSet), writing
and owning both go through the declaration, and a re-run into the same folder holds exactly the new run's
files (dense, MoE and MLA comparisons, track runs). MoE comparisons carry every figure a dense one does: a
kind's routed experts pooled per layer (mean, with their spread), its shared expert, and chosen experts."""
import json
import os

import numpy as np
import pytest

import postsvd
from postsvd import _outputs, readings
from postsvd.cli import main
from postsvd.comparison import COMPARISON_FILES, OUTPUT_SCHEMA_VERSION
from postsvd.tracking import TRACK_FILES, Trajectory

pytest.importorskip("torch")
pytest.importorskip("transformers")
from frontier_models import build_frontier_model, perturbed  # noqa: E402


@pytest.fixture(scope="module")
def frontier_pair(tmp_path_factory):
    """Factory: frontier_pair(model_type) -> (base folder, post folder), float32, built once."""
    cache = {}

    def get(model_type):
        if model_type not in cache:
            root = tmp_path_factory.mktemp(model_type)
            build_frontier_model(model_type).save_pretrained(root / "base")
            perturbed(model_type).save_pretrained(root / "post")
            cache[model_type] = (str(root / "base"), str(root / "post"))
        return cache[model_type]

    return get


@pytest.fixture(scope="module")
def deepseek(frontier_pair):
    """DeepSeek-V3 layout: MLA attention, layer 0 dense, layer 1 with 4 routed experts and a shared one."""
    return postsvd.compare(*frontier_pair("deepseek_v3"), progress=False)


def names(paths):
    return sorted(os.path.basename(p) for p in paths)


def rerun_case(comparison, first, second, tmp_path):
    out = tmp_path / "out"
    written_first = names(comparison.save(out, **first))
    written_second = names(comparison.save(out, **second))
    assert sorted(os.listdir(out)) == written_second
    return written_first, written_second


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_a_dense_rerun_holds_exactly_the_new_files(related_comparison, tmp_path):
    first, second = rerun_case(related_comparison, {"matrices_for": [(0, "q"), (1, "k")]},
                               {"matrices_for": [(1, "v")]}, tmp_path)
    assert "matrices_layer0_q.png" in first and "matrices_layer0_q.png" not in second
    assert "matrices_layer1_v.png" in second
    first, second = rerun_case(related_comparison, {}, {"plots": False}, tmp_path / "tables")
    assert "svsm.png" in first and second == sorted(["table.csv", "table.json", "kinds.csv", "kinds.json",
                                                      "spectra.npz", "summary.txt", "run.json"])


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_an_mla_and_moe_rerun_holds_exactly_the_new_files(deepseek, tmp_path):
    # MLA kinds have underscores (kv_b_k), MoE pairs an expert: both escaped the old file pattern.
    first, second = rerun_case(deepseek, {"matrices_for": [(0, "kv_b_k"), (1, "gate", 2)], "experts": [1]},
                               {"plots": True}, tmp_path)
    assert {"matrices_layer0_kv_b_k.png", "matrices_layer1_gate_expert2.png", "nf_experts.png"} <= set(first)
    assert "matrices_layer0_kv_b_k.png" not in second and "matrices_layer1_gate_expert2.png" not in second
    first, second = rerun_case(deepseek, {}, {"plots": False}, tmp_path / "tables")
    assert "nf_experts.png" in first and "nf_experts.png" not in second


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_a_track_rerun_holds_exactly_the_new_files(related_comparison, tmp_path):
    out = tmp_path / "track"
    first = Trajectory([10, 20], [related_comparison, related_comparison]).save(out)
    assert os.path.isdir(out / "step-10") and os.path.isdir(out / "step-20")
    second = Trajectory([30], [related_comparison]).save(out)
    entries = {os.path.relpath(os.path.join(folder, name), out) for folder, _, files in os.walk(out) for name in files}
    assert entries == {os.path.relpath(p, out) for p in second}
    assert len(first) > len(second) and not os.path.exists(out / "step-10")


def test_every_name_a_comparison_writes_is_declared_and_an_undeclared_one_is_never_published(tmp_path):
    for kind in postsvd.KINDS:
        assert COMPARISON_FILES.owns(COMPARISON_FILES.name("matrices_layer{layer}_{kind}.png", layer=12, kind=kind))
        assert COMPARISON_FILES.owns(f"matrices_layer3_{kind}_expert17.png")
        assert COMPARISON_FILES.owns(f"matrices_layer3_{kind}_expertshared.png")
    assert not COMPARISON_FILES.owns("matrices_layer3_gates.png") and not COMPARISON_FILES.owns("notes.txt")
    assert TRACK_FILES.owns("step-1200") and not TRACK_FILES.owns("step-x")
    with pytest.raises(ValueError, match="not one of its declared entries"):
        COMPARISON_FILES.name("notes.txt")
    target = tmp_path / "out"
    target.mkdir()
    (target / "table.csv").write_text("old")
    with pytest.raises(RuntimeError, match="stray.txt"):
        with _outputs.atomic_folder(str(target), files=COMPARISON_FILES) as temp:
            open(os.path.join(temp, "table.csv"), "w").write("new")
            open(os.path.join(temp, "stray.txt"), "w").write("a writer out of step with its declaration")
    assert sorted(os.listdir(target)) == ["table.csv"] and (target / "table.csv").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left


def test_moe_series_pool_the_routed_experts_with_their_spread(deepseek):
    labels = [s.label for s in deepseek.series(kinds="gate")]
    assert labels == ["gate", "gate experts", "gate shared"]  # layer 0 dense; layer 1 routed + shared
    table = deepseek.table
    routed = table[(table.kind == "gate") & (table.expert.isin([0, 1, 2, 3]))]
    per_expert = np.stack([deepseek.svsm("gate", expert=e)[:, 0] for e in range(4)])
    np.testing.assert_allclose(deepseek.svsm("gate", "pooled")[:, 0], per_expert.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(deepseek.svsm_spread("gate")[:, 0], per_expert.std(axis=0), rtol=1e-12, atol=1e-15)
    assert deepseek.nf("gate", "pooled")[0] == pytest.approx(routed.nf.mean(), rel=1e-12)
    low, high = deepseek.nf_range("gate")
    assert (low[0], high[0]) == (routed.nf.min(), routed.nf.max())
    bands = deepseek.scaling_by_layer("gate", "pooled")
    pooled = np.concatenate([r["scaling"][: r["scaling_count"]] for r in deepseek.records
                             if r["kind"] == "gate" and r["expert"] >= 0])
    assert bands["layers"] == [1] and bands["mean"][0] == pytest.approx(pooled.mean(), rel=1e-12)
    assert bands["std"][0] == pytest.approx(pooled.std(), rel=1e-12)
    assert deepseek.layers_of("gate") == [0] and deepseek.layers_of("gate", "shared") == [1]


def test_moe_figures_and_spectra_cover_every_series(deepseek, tmp_path):
    figure = deepseek.plot_svsm(kinds="gate")
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible() and ax.get_title().startswith("W_")]
    assert titles == ["W_gate  (k = 32)", "W_gate experts  (k = 12)", "W_gate shared  (k = 12)"]
    nf = deepseek.plot_nf(kinds="gate", experts=[3])
    lines = {line.get_label(): line for line in nf.axes[0].get_lines() if line.get_label().startswith("W_")}
    assert sorted(lines) == ["W_gate", "W_gate expert 3", "W_gate experts", "W_gate shared"]
    np.testing.assert_allclose(lines["W_gate experts"].get_ydata(), deepseek.nf("gate", "pooled"))
    np.testing.assert_allclose(lines["W_gate expert 3"].get_ydata(), deepseek.nf("gate", 3))
    assert len(nf.axes[0].collections) == 1  # the pooled experts' band (smallest to largest NF)
    deepseek.save(tmp_path / "out", experts=[3], plots=False)
    spectra = np.load(tmp_path / "out" / "spectra.npz")
    np.testing.assert_array_equal(spectra["svsm_gate_experts"], deepseek.svsm("gate", "pooled"))
    np.testing.assert_array_equal(spectra["svsm_gate_experts_std"], deepseek.svsm_spread("gate"))
    np.testing.assert_array_equal(spectra["svsm_gate_expert_3"], deepseek.svsm("gate", 3))
    np.testing.assert_array_equal(spectra["svsm_kv_b_k"], deepseek.svsm("kv_b_k"))
    assert list(spectra["experts_gate_experts"]) == [4] and list(spectra["layers_down_expert_shared"]) == [1]
    assert "svsm_gate_expert_2" not in spectra.files  # only the experts asked for, whole
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["schema_version"] == OUTPUT_SCHEMA_VERSION


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_a_kind_with_only_experts_reads_pooled(frontier_pair):
    result = postsvd.compare(*frontier_pair("gpt_oss"), kinds="mlp", progress=False)
    with pytest.raises(postsvd.InvalidArgumentError, match="only expert matrices.*'pooled'"):
        result.svsm("gate")
    assert [s.label for s in result.series()] == ["gate experts", "up experts", "down experts"]
    assert result.svsm("gate", "pooled").shape[1] == result.num_layers
    assert result.default_matrices() == (0, "gate", 0)
    written = names(result.save(os.path.join(os.path.dirname(frontier_pair("gpt_oss")[0]), "out")))
    assert {"svsm.png", "scaling_bands.png", "nf.png", "nf_experts.png", "matrices_layer0_gate_expert0.png"} <= set(
        written)


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_cli_draws_chosen_experts_and_checks_them_first(frontier_pair, tmp_path, capsys):
    base, post = frontier_pair("deepseek_v3")
    out = tmp_path / "cli"
    assert main(["compare", base, post, "--out", str(out), "--no-progress", "--matrices", "1:down:shared,0:q_a",
                 "--show-experts", "2"]) == 0
    assert {"matrices_layer1_down_expertshared.png", "matrices_layer0_q_a.png"} <= set(os.listdir(out))
    assert "svsm_down_expert_2" in np.load(out / "spectra.npz").files
    for arguments, message in ((["--matrices", "1:down"], "has experts; name one as 1:down:EXPERT"),
                               (["--matrices", "1:down:9"], "no compared expert 9"),
                               (["--matrices", "1:down:x"], "LAYER:KIND or LAYER:KIND:EXPERT"),
                               (["--show-experts", "9"], "9 not compared"),
                               (["--experts", "0-1", "--show-experts", "3"], "3 not compared")):
        capsys.readouterr()
        assert main(["compare", base, post, "--out", str(tmp_path / "bad"), "--no-progress", *arguments]) == 1
        assert message in capsys.readouterr().err, arguments
        assert not os.path.exists(tmp_path / "bad")


def test_one_reading_of_nf_serves_the_summary_the_tables_and_the_report(related_comparison, monkeypatch):
    kinds = related_comparison.kind_table()
    assert set(kinds.reading) == {"near-uniform scaling x0.9 + consistent rotation"}
    assert related_comparison.overall().startswith("post-training looks like near-uniform scaling")
    page = postsvd.reports.render_html(related_comparison)
    assert "consistent rotation" in page and "no consistent rotation" not in page
    # Move the one threshold: every reader follows it.
    monkeypatch.setattr(readings, "CONSISTENT_NF_RATIO", 0.0)
    monkeypatch.setattr(readings, "PARTIAL_NF_RATIO", 0.0)
    assert set(related_comparison.kind_table().reading) == {"near-uniform scaling x0.9 + no consistent rotation"}
    summary = related_comparison.summary()
    assert "Overall: the singular vectors do not rotate consistently" in summary
    assert summary.count("+ no consistent rotation") == len(related_comparison.kinds)
    page = postsvd.reports.render_html(related_comparison)
    assert "do not rotate consistently" in page and page.count("no consistent rotation:") == len(kinds)
