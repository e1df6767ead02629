"""The interactive figures (postsvd.interactive, plotly), the rich display of every result in Jupyter
(``_repr_html_``, a few-line ``__repr__``), the pages that use them and the static fallback without
plotly; tests marked `browser` load the pages in headless Chromium with networking off, hover and click."""
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import postsvd
from postsvd import cli, interactive, reports
from postsvd.tracking import Trajectory

from browser import CHROMIUM, SKIP_REASON, Chromium
from helpers import ALPHA

plotly = pytest.importorskip("plotly", reason="the interactive figures need plotly (postsvd[interactive])")

#: A string at the start of every copy of plotly.js (its banner).
PLOTLY_BANNER = "* plotly.js v"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)


@pytest.fixture
def without_plotly(monkeypatch):
    """plotly is not installed, as far as postsvd can tell (an import of it or of any submodule fails)."""
    names = {n for n in sys.modules if n == "plotly" or n.startswith("plotly.")}
    for name in names | {"plotly", "plotly.graph_objects", "plotly.subplots", "plotly.io", "plotly.offline"}:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    """A tiny DeepSeek-V3 pair (MLA, a dense first layer, 4 routed experts and a shared one) and its comparison."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from frontier_models import build_frontier_model, perturbed

    root = tmp_path_factory.mktemp("deepseek")
    build_frontier_model("deepseek_v3").save_pretrained(root / "base")
    perturbed("deepseek_v3").save_pretrained(root / "post")
    return postsvd.compare(root / "base", root / "post", progress=False)


def traces(figure, **meta):
    """The traces whose meta has these values."""
    return [t for t in figure.data if t.meta and all(t.meta.get(k) == v for k, v in meta.items())]


def values(array):
    return np.asarray(array, dtype=float)


# ---------------------------------------------------------------------- the figures carry the comparison's numbers

def test_layers_figure_carries_nf_scaling_and_intruders_per_series(related_comparison):
    c = related_comparison
    figure = c.interactive_layers()
    assert figure.layout.title.text.startswith("NF and scaling per layer: post vs base")
    for kind in c.kinds:
        nf_trace, scaling_trace = traces(figure, kind=kind, expert="")
        np.testing.assert_array_equal(nf_trace.x, c.layers_of(kind))
        np.testing.assert_allclose(values(nf_trace.y), c.nf(kind), rtol=1e-6)
        stats = c.scaling_by_layer(kind)
        np.testing.assert_allclose(values(scaling_trace.y), stats["mean"], rtol=1e-6)
        custom = values(nf_trace.customdata)
        np.testing.assert_allclose(custom[:, 1:3], np.stack([stats["mean"], stats["std"]], axis=1), rtol=1e-6)
        table = c.table[c.table["kind"] == kind]
        np.testing.assert_array_equal(custom[:, 3], table.groupby("layer")["intruders"].sum().to_numpy())
        assert "layer %{x}" in nf_trace.hovertemplate and "intruders" in nf_trace.hovertemplate
    assert abs(np.mean(values(traces(figure, kind="q", expert="")[1].y)) - ALPHA) < 1e-3
    # The dashed lines of unrelated rotations sit at sqrt(2/k) and name their kinds.
    baselines = [t for t in figure.data if t.meta and t.meta.get("baseline") and t.text is not None]
    expected = {round(math.sqrt(2.0 / k), 9) for k in c.table["k"]}
    assert {round(float(t.y[0]), 9) for t in baselines} == expected


def test_moe_figures_pool_experts_and_map_each_one(deepseek):
    c = deepseek
    series = {(t.meta["kind"], t.meta["expert"]) for t in c.interactive_layers().data if t.meta and "kind" in t.meta}
    assert ("gate", "") in series and ("gate", "pooled") in series and ("gate", "shared") in series
    assert ("q_a", "") in series and ("kv_b_v", "") in series
    figure = c.interactive_layers()
    pooled = traces(figure, kind="up", expert="pooled")[0]
    low, high = c.nf_range("up")
    custom = values(pooled.customdata)
    np.testing.assert_allclose(values(pooled.y), c.nf("up", "pooled"), rtol=1e-6)
    np.testing.assert_allclose(custom[:, 4], low, rtol=1e-6)
    np.testing.assert_allclose(custom[:, 5], high, rtol=1e-6)
    assert set(custom[:, 6]) == {4.0}  # experts per layer
    heatmaps = c.interactive_experts()
    assert [t.meta["kind"] for t in heatmaps.data] == ["gate", "up", "down"]
    table = c.table
    for trace in heatmaps.data:
        grid = c.nf_by_expert(trace.meta["kind"])
        assert list(trace.y) == [str(e) for e in grid.index] == ["0", "1", "2", "3", "shared"]
        np.testing.assert_allclose(values(trace.z), grid.to_numpy(), rtol=1e-6)
        rows = table[table["kind"] == trace.meta["kind"]]
        row = rows[(rows["expert"] == 2) & (rows["layer"] == 1)].iloc[0]
        cell = values(trace.customdata)[list(trace.y).index("2"), list(trace.x).index(1)]
        np.testing.assert_allclose(cell, [row.scaling_mean, row.scaling_std, row.intruders], rtol=1e-6)
    with pytest.raises(postsvd.InvalidArgumentError, match="no compared kind has expert matrices"):
        c.interactive_experts(kinds="o,q_a")


def test_intruder_and_matrices_figures(related_comparison):
    c = related_comparison
    figure = c.interactive_intruders()
    heatmap = figure.data[0]
    assert list(heatmap.y) == [f"W_{k}" for k in c.kinds]
    expected = c.table.pivot_table(index="kind", columns="layer", values="intruders", aggfunc="sum").loc[c.kinds]
    np.testing.assert_array_equal(values(heatmap.z), expected.to_numpy())
    matrices = c.interactive_matrices(1, "q", leading_k=6)
    result = c.matrices(1, "q", leading_k=6)
    assert [t.meta["panel"] for t in matrices.data] == ["sim_u", "sim_v", "difference", "iorth"]
    np.testing.assert_allclose(values(matrices.data[3].z), result["iorth"], rtol=1e-6)
    assert "W_q, layer 1: leading 6 of k = " in matrices.layout.title.text


def test_figure_html_is_one_queued_draw_and_safe_inside_a_script(related_comparison):
    figure = related_comparison.interactive_layers()
    figure.update_layout(title_text="</script><b>x</b>")
    html = interactive.figure_html(figure, "layers-9", "caption <i>")
    assert html.count("<script>") == 1 and html.count("</script>") == 1  # the title cannot close the script
    assert 'postsvd.draw("iplot-layers-9"' in html and "caption &lt;i&gt;" in html
    data = json.loads(html[html.index("{"):html.rindex("}") + 1].replace("<\\/", "</"))
    assert len(data["data"]) == len(figure.data)


# ---------------------------------------------------------------------- the rich display and the text repr

def test_comparison_display_and_repr(related_comparison, monkeypatch):
    c = related_comparison
    monkeypatch.setattr(interactive, "_notebook_has_plotly", False)
    first = c._repr_html_()
    second = c._repr_html_()
    assert first.count(PLOTLY_BANNER) == 1 and second.count(PLOTLY_BANNER) == 0  # plotly.js once per process
    assert len(second) < 200_000
    assert c.overall() in second.replace("&#x27;", "'")
    kinds = c.kind_table()
    for row in kinds.itertuples():
        assert f"{row.scaling_mean:.4f} ± {row.scaling_std:.4f}" in second and f"<td>{row.kind}</td>" in second
    assert second.count('<div class="iplot"') == 1 and "postsvd.draw(" in second
    text = repr(c)
    lines = text.splitlines()
    assert len(lines) == 2 + len(c.kinds) and lines[0].startswith("<postsvd.Comparison post vs base: llama")
    assert f"scaling {ALPHA:.4f}" in lines[1] or f"scaling {kinds.scaling_mean[0]:.4f}" in lines[1]
    assert lines[-1] == f"  Overall: {c.overall()}>"


def test_moe_display_stays_small_and_offers_the_expert_view(deepseek):
    html = deepseek._repr_html_()
    assert "interactive_experts()" in html and "<th>experts</th>" in html
    # Sized by kinds and layers: the experts appear pooled, never one trace or row per expert.
    body = html.split(PLOTLY_BANNER)[0] if PLOTLY_BANNER in html else html
    assert body.count("<tr>") == 1 + len(deepseek.kinds)


def test_trajectory_lineage_and_construction_displays(related_comparison, related_pair, tmp_path):
    trajectory = Trajectory([100, 300], [related_comparison, related_comparison])
    html = trajectory._repr_html_()
    assert "At step 300:" in html and "0.0" in html and "NF mean (step 100 → 300)" in html
    assert len(repr(trajectory).splitlines()) == 2 + len(trajectory.kinds)
    figure = trajectory.interactive_steps()
    q = traces(figure, kind="q")
    np.testing.assert_array_equal(q[0].x, [100, 300])
    heatmap = trajectory.interactive_heatmap()
    assert [t.meta["label"] for t in heatmap.data] == [s.label for s in related_comparison.series()]
    result = postsvd.lineage(related_pair.base, related_pair.post, paper_nf=False)
    html = result._repr_html_()
    assert f"<b>{result.verdict}</b>" in html and "smallest p-value" in html
    bars = result.interactive_plot().data
    assert {b.meta["block"] for b in bars} == {"mlp", "attention"}
    assert repr(result).startswith(f"<postsvd.Lineage is post derived from base? {result.verdict}")
    built = postsvd.construct(9, related_pair.base, related_pair.post, tmp_path / "c9", progress=False)
    html = built._repr_html_()
    assert "construction 9" in html and "relative change mean" in html and "iplot" in html
    assert repr(built).splitlines()[0].startswith("<postsvd.ConstructionResult construction 9")
    rotations = built.interactive_rotations()
    assert {t.meta["kind"] for t in rotations.data} == set(built.table["kind"])


# ---------------------------------------------------------------------- without plotly: the static figures

@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_without_plotly_everything_falls_back_to_the_static_figures(related_comparison, without_plotly):
    c = related_comparison
    assert not interactive.available()
    html = c._repr_html_()
    assert "<script" not in html and html.count('<img class="plot"') == 1 and "data:image/png;base64," in html
    page = reports.render_html(c)
    assert "<script" not in page and page.count('<img class="plot"') == 5
    assert "<script" not in Trajectory([1, 2], [c, c]).render_html()
    with pytest.raises(ImportError, match=r"pip install 'postsvd\[interactive\]'"):
        c.interactive_layers()
    with pytest.raises(ImportError, match=r"postsvd\[interactive\]"):
        reports.render_html(c, interactive=True)


# ---------------------------------------------------------------------- the pages

@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_report_page_embeds_plotly_once_and_holds_the_chosen_matrices(related_pair, tmp_path, capsys):
    code = cli.main(["report", related_pair.base, related_pair.post, related_pair.post, "--out", str(tmp_path / "r"),
                     "--no-progress", "--matrices", "1:q,0:down", "--leading-k", "5"])
    assert code == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count(PLOTLY_BANNER) == 1  # two post models, one copy of plotly.js
    assert page.index("postsvd.draw(") < page.index(PLOTLY_BANNER)  # figures queue; plotly.js loads last
    held = json.loads(re.search(r'<script type="application/json" id="held-0">(.*?)</script>', page).group(1))
    assert sorted(held) == ["0:down", "1:q"]
    assert held["1:q"]["caption"].startswith("W_q, layer 1: leading 5 of k = ")
    assert "--matrices PAIR" in page and "<img" in page  # the SVSM and intruder curves stay PNG
    static = tmp_path / "s"
    assert cli.main(["report", related_pair.base, related_pair.post, "--out", str(static), "--no-progress",
                     "--static"]) == 0
    assert "<script" not in (static / "report.html").read_text()


def test_the_page_table_leaves_out_routed_experts_at_frontier_size():
    rows = reports.PAGE_TABLE_ROWS + 10
    table = pd.DataFrame({"layer": np.arange(rows) // 100, "kind": "gate",
                          "expert": [("shared" if i % 100 == 99 else i % 100) if i >= 20 else -1 for i in range(rows)],
                          "tensor": "t"})
    shown, note = reports._page_table(table)
    shared = sum(1 for i in range(20, rows) if i % 100 == 99)
    assert set(shown["expert"]) == {-1, "shared"} and len(shown) == 20 + shared
    assert f"leaves out the {rows - len(shown)} rows of routed experts" in note
    small, note = reports._page_table(table.head(50))
    assert len(small) == 50 and note == ""


# ---------------------------------------------------------------------- in a browser

def _open(browser, path):
    browser.open(path)
    drawn = browser.wait_for_figures()
    assert browser.errors == [], browser.errors
    assert browser.external_requests() == []
    return drawn


def _series_trace(browser, div_id, kind, expert):
    return browser.evaluate(f"""document.getElementById({json.dumps(div_id)})._fullData.findIndex(function (t) {{
        return t.meta && t.meta.kind === {json.dumps(kind)} && t.meta.expert === {json.dumps(expert)}; }})""")


def _view(browser, index=0):
    """The matrix view: [its key, its caption, the traces drawn in it]."""
    return browser.evaluate(f"""(function () {{ var v = document.getElementById('matrix-view-{index}');
        var plot = v.querySelector('.view-plot');
        return [v.getAttribute('data-key'), v.querySelector('.view-caption').textContent,
                (plot.data || []).length]; }})()""")


def _hover(browser, div_id, x, y):
    browser.hover(x, y)
    return browser.wait_for(f"(document.querySelector('#{div_id} .hoverlayer') || {{}}).textContent")


@pytest.fixture(scope="module")
def family():
    """The bundled models: base against instruct and against reasoning (NF differs by kind and layer)."""
    models = Path(__file__).resolve().parents[2] / "examples" / "models"
    if not (models / "instruct" / "config.json").is_file():
        pytest.skip("the bundled models are missing (examples/models)")
    return [postsvd.compare(models / "base", models / name, progress=False) for name in ("instruct", "reasoning")]


@pytest.mark.browser
@needs_chromium
def test_report_hover_and_click_in_chromium(family, tmp_path):
    c = family[0]
    path = postsvd.write_report(c, tmp_path / "r", matrices=[(1, "q"), (0, "down")], leading_k=6)
    table = c.table
    with Chromium() as browser:
        assert _open(browser, path) == 3  # NF and scaling per layer, the matrix view, where the intruders are
        assert _view(browser) == ["1:q", c.interactive_matrices(1, "q", 6).layout.title.text, 4]
        for kind, layer in (("k", 2), ("down", 0)):
            x, y = browser.position("iplot-layers-0", _series_trace(browser, "iplot-layers-0", kind, ""), layer, layer)
            hover = _hover(browser, "iplot-layers-0", x, y)
            shown_kind, shown_layer = re.match(r"W_(\w+), layer (\d+)", hover).groups()  # the point under the mouse
            record = table[(table["kind"] == shown_kind) & (table["layer"] == int(shown_layer))].iloc[0]
            assert f"NF {record.nf:.4g}" in hover and f"intruders {record.intruders}" in hover
            assert f"scaling {record.scaling_mean:.4f} ± {record.scaling_std:.4f}" in hover
            browser.click(x, y)
            key = f"{shown_layer}:{shown_kind}"
            browser.wait_for(f"document.getElementById('matrix-view-0').getAttribute('data-key') === '{key}'")
            view = _view(browser)
            if key in ("1:q", "0:down"):  # held: its matrices open
                assert view[1].startswith(f"W_{shown_kind}, layer {shown_layer}: leading 6") and view[2] == 4
            else:  # not held: the page names the command
                assert f"--matrices {key}" in view[1] and "does not hold" in view[1] and view[2] == 0
        assert browser.errors == []


@pytest.mark.browser
@needs_chromium
def test_moe_report_heatmap_hover_and_click_in_chromium(deepseek, tmp_path):
    c = deepseek
    path = postsvd.write_report(c, tmp_path / "r", matrices=[(1, "gate", 2)], leading_k=5)
    with Chromium(height=1000) as browser:
        _open(browser, path)
        grid = c.nf_by_expert("up")
        x, y = browser.position("iplot-experts-0", 1, list(grid.columns).index(1), list(grid.index).index(3))
        browser.hover(x, y)
        hover = browser.wait_for("document.querySelector('#iplot-experts-0 .hoverlayer').textContent")
        assert "W_up, layer 1, expert 3" in hover and f"NF {grid.loc[3, 1]:.4g}" in hover
        browser.click(x, y)
        browser.wait_for("document.getElementById('matrix-view-0').getAttribute('data-key') === '1:up:3'")
        assert "--matrices 1:up:3" in _view(browser)[1] and _view(browser)[2] == 0
        x, y = browser.position("iplot-experts-0", 0, list(grid.columns).index(1), list(grid.index).index(2))
        browser.click(x, y)
        browser.wait_for("document.getElementById('matrix-view-0').getAttribute('data-key') === '1:gate:2'")
        assert _view(browser)[1].startswith("W_gate, layer 1, expert 2: leading 5") and _view(browser)[2] == 4
        trace = _series_trace(browser, "iplot-layers-0", "gate", "pooled")
        # Only the pooled series shown (as clicks on the legend would leave it), so the click lands on it.
        browser.evaluate(f"""(function () {{ var gd = document.getElementById('iplot-layers-0');
            var others = gd.data.map(function (t, i) {{ return i; }}).filter(function (i) {{ return i !== {trace}; }});
            return Plotly.restyle(gd, {{visible: false}}, others).then(function () {{ return true; }}); }})()""",
                         await_promise=True)
        x, y = browser.position("iplot-layers-0", trace, 0, 0)
        assert "W_gate experts (4 experts), layer 1" in _hover(browser, "iplot-layers-0", x, y)
        browser.click(x, y)
        browser.wait_for("document.getElementById('matrix-view-0').textContent.indexOf('routed experts') >= 0")
        assert browser.errors == []


@pytest.mark.browser
@needs_chromium
def test_track_and_lineage_pages_in_chromium(family, related_pair, tmp_path):
    trajectory = Trajectory([100, 300], family)
    trajectory.save(tmp_path / "track")
    result = postsvd.lineage(related_pair.base, related_pair.post, paper_nf=False)
    result.save(tmp_path / "lineage")
    kinds = trajectory.kind_table()
    with Chromium() as browser:
        assert _open(browser, tmp_path / "track" / "track.html") == 2
        trace = browser.evaluate("document.getElementById('iplot-trajectory')._fullData.findIndex(function (t) { "
                                 "return t.meta && t.meta.kind === 'o'; })")
        hover = _hover(browser, "iplot-trajectory", *browser.position("iplot-trajectory", trace, 1, 1))
        kind, step = re.match(r"W_(\w+), step (\d+)", hover).groups()
        row = kinds[(kinds["kind"] == kind) & (kinds["step"] == int(step))].iloc[0]
        assert f"NF mean {row.nf_mean:.4g}" in hover and f"scaling {row.scaling_mean:.4f}" in hover
        assert _open(browser, tmp_path / "lineage" / "lineage.html") == 1
        hover = _hover(browser, "iplot-lineage-layers", *browser.element_center("#iplot-lineage-layers .bars path", 1))
        layer, block = re.match(r"layer (\d+), (mlp|attention)", hover).groups()
        row = result.table[(result.table["layer"] == int(layer)) & (result.table["block"] == block)].iloc[0]
        assert f"agreeing {row.statistic} of {row.units}" in hover


@pytest.mark.browser
@needs_chromium
def test_notebook_displays_draw_in_chromium(related_comparison, tmp_path, monkeypatch):
    """Two displays in one notebook page: the first carries plotly.js, the second draws with it."""
    monkeypatch.setattr(interactive, "_notebook_has_plotly", False)
    outputs = [related_comparison._repr_html_(), Trajectory([1, 2], [related_comparison] * 2)._repr_html_()]
    assert PLOTLY_BANNER in outputs[0] and PLOTLY_BANNER not in outputs[1]
    page = tmp_path / "notebook.html"
    page.write_text("<!DOCTYPE html><html><body>" + "".join(f'<div class="output">{o}</div>' for o in outputs)
                    + "</body></html>")
    with Chromium() as browser:
        assert _open(browser, page) == 2
        assert browser.evaluate("document.querySelectorAll('.postsvd-display .main-svg').length") >= 2


@pytest.mark.browser
@needs_chromium
def test_the_readme_screenshot_script_draws_the_display(family, tmp_path):
    """scripts/screenshot_display.py (the README's picture) runs: a PNG of the display with a point hovered."""
    import struct
    import subprocess

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "display.png"
    done = subprocess.run([sys.executable, str(root / "scripts" / "screenshot_display.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    raw = out.read_bytes()
    width, height = struct.unpack(">II", raw[16:24])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and width > 900 and height > 600
