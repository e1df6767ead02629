"""Plots return matplotlib Figures with the paper's layout; save() writes what it says."""
import numpy as np
import pytest
from matplotlib.figure import Figure

import postsvd
from helpers import SYNTHETIC


def images(figure):
    return [image for ax in figure.axes for image in ax.get_images()]


def test_plot_svsm_one_heatmap_per_kind(related_comparison):
    figure = related_comparison.plot_svsm()
    assert isinstance(figure, Figure)
    heatmaps = images(figure)
    assert len(heatmaps) == 7
    first = heatmaps[0].get_array()
    assert first.shape == (SYNTHETIC["hidden"], SYNTHETIC["layers"])  # y = singular value index, x = layer
    np.testing.assert_allclose(first, related_comparison.svsm("q"))
    assert len(images(related_comparison.plot_svsm(kinds="q,down"))) == 2


def test_plot_nf_and_bands_have_a_line_per_kind(related_comparison):
    nf = related_comparison.plot_nf()
    lines = [line for line in nf.axes[0].get_lines() if line.get_label().startswith("W_")]
    assert [line.get_label() for line in lines] == [f"W_{k}" for k in related_comparison.kinds]
    np.testing.assert_allclose(lines[0].get_ydata(), related_comparison.nf("q"))
    bands = related_comparison.plot_scaling_bands(kinds=["o"])
    (line,) = [line for line in bands.axes[0].get_lines() if line.get_label() == "W_o"]
    np.testing.assert_allclose(line.get_ydata(), related_comparison.table.query("kind == 'o'")["scaling_mean"])


def test_plot_matrices_four_panels(related_comparison):
    figure = related_comparison.plot_matrices(1, "v", leading_k=12)
    heatmaps = images(figure)
    assert len(heatmaps) == 4
    expected = related_comparison.matrices(1, "v", leading_k=12)
    for image, key in zip(heatmaps, ("sim_u", "sim_v", "difference", "iorth")):
        np.testing.assert_allclose(image.get_array(), expected[key], atol=1e-12)


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_save_writes_listed_files(related_comparison, tmp_path):
    written = related_comparison.save(tmp_path / "out", matrices_for=[(1, "k")], leading_k=8)
    names = sorted(p.split("/")[-1] for p in written)
    assert "matrices_layer1_k.png" in names and "svsm.png" in names and "table.csv" in names
    for path in written:
        assert (tmp_path / "out" / path.split("/")[-1]).stat().st_size > 0
    spectra = np.load(tmp_path / "out" / "spectra.npz")
    np.testing.assert_allclose(spectra["svsm_up"], related_comparison.svsm("up"))
    assert list(spectra["layers_up"]) == [0, 1]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.strip() == related_comparison.summary()


def test_summary_reads_for_a_newcomer(related_comparison):
    text = related_comparison.summary()
    assert "How to read" in text and "scaling" in text and "NF" in text
    assert len(text.splitlines()) == 2 + len(related_comparison.kinds) + 2


def test_random_rotation_baseline():
    rng = np.random.default_rng(0)
    k = 200
    q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    measured = np.linalg.norm(q - np.eye(k)) / k
    assert measured == pytest.approx(postsvd.random_rotation_nf(k), rel=0.05)
