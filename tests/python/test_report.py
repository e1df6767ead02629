"""`postsvd report` / postsvd.report: one self-contained HTML page, checked by parsing it and by
rendering it in headless Chromium (every embedded figure must decode)."""
import base64
import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

import postsvd
from postsvd import cli, plots, reports
from postsvd.synthetic import make_pair

from helpers import ALPHA, SYNTHETIC

#: Figures per post model: SVSM, scaling bands, NF per layer, intruder dimensions, matrices of one pair.
FIGURES_PER_POST = 5
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class PageParser(HTMLParser):
    """Collects what the tests look for: ids, images, tables, links, scripts, text."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.external, self.scripts = set(), [], [], 0
        self.tables, self.title, self._in_title, self.text = 0, "", False, []
        self.table_cells, self._cell, self._in_cell = [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "table":
            self.tables += 1
        if tag == "title":
            self._in_title = True
        if tag in ("td", "th"):
            self._in_cell, self._cell = True, []
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            if re.match(r"^(https?:)?//", value):
                self.external.append(value)
        if tag == "link":
            self.external.append(attrs.get("href", "<link>"))

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag in ("td", "th"):
            self._in_cell = False
            self.table_cells.append("".join(self._cell).strip())

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._in_cell:
            self._cell.append(data)
        self.text.append(data)


def parse(path):
    parser = PageParser()
    with open(path, encoding="utf-8") as f:
        parser.feed(f.read())
    parser.close()
    parser.text = " ".join(parser.text)
    return parser


def png_size(data_uri):
    """(width, height) of a base64 PNG data URI, from its IHDR chunk."""
    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix), data_uri[:40]
    raw = base64.b64decode(data_uri[len(prefix):], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """One base with two post models: related (scaling ALPHA, NF ~ 0) and unrelated (NF ~ sqrt(2/k))."""
    root = tmp_path_factory.mktemp("report_models")
    related = make_pair(root / "base", root / "instruct", alpha=ALPHA, dtype="float32", seed=3, **SYNTHETIC)
    unrelated = make_pair(root / "other_base", root / "unrelated", dtype="float32", seed=4, related=False,
                          **SYNTHETIC)
    return related, unrelated


@pytest.fixture(scope="module")
def page(pairs, tmp_path_factory):
    related, unrelated = pairs
    out = tmp_path_factory.mktemp("report_out") / "report"
    path = postsvd.report(related.base, [related.post, unrelated.post], out, progress=False, interactive=False)
    return path, related, unrelated


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_report_has_every_section_and_figure(page):
    path, related, unrelated = page
    assert path == os.path.join(os.path.dirname(path), "report.html")
    doc = parse(path)
    assert doc.title == "postsvd report: base"
    for section in ("overview", "all-models", "post-0", "post-1", "how-to-read", "metadata"):
        assert section in doc.ids, f"section {section!r} missing; ids: {sorted(doc.ids)}"
    figure_ids = {i for i in doc.ids if i.startswith("fig-")}
    expected = {"fig-nf-models"} | {f"fig-{name}-{i}" for i in (0, 1)
                                    for name in ("svsm", "bands", "nf", "intruders", "matrices")}
    assert figure_ids == expected
    assert len(doc.images) == 1 + 2 * FIGURES_PER_POST
    for image in doc.images:
        width, height = png_size(image["src"])
        assert width > 200 and height > 100
        assert image.get("alt")
    # Self-contained: no network resources, no scripts.
    assert doc.external == [] and doc.scripts == 0
    # Tables: overview, metadata, and per post model the kind table and the per-layer table.
    assert doc.tables == 2 + 2 * 2


def test_report_tables_and_summary_carry_the_measures(page):
    path, related, unrelated = page
    doc = parse(path)
    comparison = postsvd.compare(related.base, related.post, progress=False)
    kinds = comparison.kind_table()
    for row in kinds.itertuples():
        assert f"{row.scaling_mean:.4f} ± {row.scaling_std:.4f}" in doc.table_cells
        assert f"{row.nf_mean:.4f}" in doc.table_cells
    # The related model reads as scaling ALPHA plus a consistent rotation, the unrelated one does not.
    assert f"shrank to {ALPHA:.3f}× on average" in doc.text
    # One reading of NF (postsvd.readings) with its ratio to the unrelated-rotation value, in both post models.
    related_part = doc.text[doc.text.index("instruct vs base"):doc.text.index("unrelated vs base")]
    unrelated_part = doc.text[doc.text.index("unrelated vs base"):]
    assert "NF far below" not in related_part
    assert related_part.count("consistent rotation: below 1 % of the value for unrelated models") == 7
    assert re.search(r"no consistent rotation: (0\.[6-9]\d|1\.\d\d)× the value for unrelated models", unrelated_part)
    overview = doc.text[doc.text.index("Overview"):doc.text.index("All post models")]
    assert "near-uniform scaling" in overview and "do not rotate consistently" in overview
    # Per-layer table: a row per (layer, kind) of each post model.
    rows_expected = SYNTHETIC["layers"] * 7
    assert doc.text.count("show the table") == 2
    with open(path, encoding="utf-8") as f:
        html_text = f.read()
    assert len(re.findall(r'<table[^>]*class="[^"]*layers', html_text)) == 2
    body = html_text[html_text.index('id="post-0"'):html_text.index('id="post-1"')]
    per_layer = body[re.search(r'<table[^>]*class="[^"]*layers', body).start():]
    per_layer = per_layer[per_layer.index("<tbody>"):per_layer.index("</tbody>")]
    assert per_layer.count("<tr>") == rows_expected


def test_report_metadata(page):
    path, related, unrelated = page
    doc = parse(path)
    cells = doc.table_cells
    assert postsvd.__version__ in cells
    assert os.path.abspath(related.base) in cells
    assert os.path.abspath(related.post) in cells and os.path.abspath(unrelated.post) in cells
    assert any(re.match(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", c) for c in cells)
    assert any("cpu, float32" == c for c in cells)
    assert any(c and c in postsvd.build_info() for c in cells)


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_report_is_written_atomically(page, monkeypatch, tmp_path):
    path, related, unrelated = page
    out = os.path.dirname(path)
    assert sorted(os.listdir(out)) == ["report.html"]
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)
    comparison = postsvd.compare(related.base, related.post, progress=False, layers=0)
    target = tmp_path / "atomic"
    first = postsvd.write_report(comparison, target, title="first")
    before = open(first, encoding="utf-8").read()

    def failing_replace(src, dst):
        raise OSError("disk full (simulated)")

    # Moving the new page in fails: as a folder swap (the folder holds only the page) and file by file.
    monkeypatch.setattr(reports.os, "replace", failing_replace)
    monkeypatch.setattr(postsvd._outputs, "exchange", failing_replace)
    monkeypatch.setattr(postsvd._outputs.os, "rename", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        postsvd.write_report(comparison, target, title="second")
    assert open(first, encoding="utf-8").read() == before
    assert sorted(os.listdir(target)) == ["report.html"]
    (target / "notes.txt").write_text("the user's")
    with pytest.raises(OSError, match="simulated"):
        postsvd.write_report(comparison, target, title="third")
    assert open(first, encoding="utf-8").read() == before
    assert sorted(os.listdir(target)) == ["notes.txt", "report.html"]
    assert sorted(os.listdir(tmp_path)) == ["atomic"]  # no temporary folder left
    monkeypatch.undo()
    postsvd.write_report(comparison, target, title="fourth")
    assert "<title>fourth</title>" in open(first, encoding="utf-8").read()
    assert sorted(os.listdir(target)) == ["notes.txt", "report.html"]


def test_report_options_and_cli(pairs, tmp_path, capsys):
    related, _ = pairs
    out = tmp_path / "cli"
    code = cli.main(["report", related.base, related.post, "--out", str(out), "--no-progress", "--layers", "1",
                     "--kinds", "attn", "--matrices", "1:k", "--leading-k", "8", "--title", "Attention <only>",
                     "--dtype", "float64", "--static"])
    assert code == 0
    assert "report.html" in capsys.readouterr().out
    doc = parse(out / "report.html")
    assert doc.title == "Attention <only>"
    assert "all-models" not in doc.ids  # one post model: no side-by-side figure
    assert len(doc.images) == FIGURES_PER_POST
    assert "W_k, layer 1" in " ".join(i["alt"] for i in doc.images)
    for kind in ("gate", "up", "down"):
        assert f"W_{kind}" not in " ".join(i["alt"] for i in doc.images)
    assert "cpu, float64" in doc.table_cells
    assert "1" in doc.table_cells  # compared layers


def test_report_bad_input(pairs, tmp_path, capsys):
    related, _ = pairs
    with pytest.raises(postsvd.InvalidArgumentError, match="at least one post"):
        postsvd.report(related.base, [], tmp_path / "x")
    a_file = tmp_path / "file.html"
    a_file.write_text("not a folder")
    with pytest.raises(postsvd.InvalidArgumentError, match="existing file"):
        postsvd.report(related.base, related.post, a_file, progress=False)
    with pytest.raises(postsvd.BadCheckpointError):
        postsvd.report(related.base, tmp_path / "missing", tmp_path / "y", progress=False)
    comparison = postsvd.compare(related.base, related.post, progress=False, kinds="q")
    with pytest.raises(postsvd.InvalidArgumentError, match="kind 'down' was not compared"):
        reports.render_html(comparison, matrices=(0, "down"))
    with pytest.raises(postsvd.InvalidArgumentError, match="expected postsvd.Comparison"):
        reports.render_html(["not a comparison"])
    code = cli.main(["report", related.base, related.post, "--out", str(tmp_path / "z"), "--no-progress",
                     "--matrices", "0:q,7:k"])
    assert code == 1
    assert "layer 7" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_report_of_a_moe_model_has_the_expert_heatmap_and_spread(tmp_path):
    """Expert (MoE) models: tables per (layer, kind, expert), the per-kind table with the per-expert
    spread, and the NF heatmap per (layer, expert) of each kind with experts (the dense figures are left
    out with a note); the figure's cells and the table's spread are the comparison's own numbers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                                        max_position_embeddings=64, num_local_experts=3, num_experts_per_tok=1)
    for name, seed in (("moe_base", 0), ("moe_post", 1)):
        torch.manual_seed(seed)
        model = transformers.MixtralForCausalLM(config)
        if name == "moe_post":  # a post model close to the base: expert 1 changed far more than 0 and 2
            torch.manual_seed(0)
            model = transformers.MixtralForCausalLM(config)
            with torch.no_grad():
                for layer in model.model.layers:
                    for p in layer.mlp.experts.parameters():
                        p.add_(1e-3 * torch.randn_like(p))
                    layer.mlp.experts.gate_up_proj[1].add_(0.05 * torch.randn_like(layer.mlp.experts.gate_up_proj[1]))
        model.save_pretrained(tmp_path / name)
    path = postsvd.report(tmp_path / "moe_base", tmp_path / "moe_post", tmp_path / "out", progress=False,
                          interactive=False)
    doc = parse(path)
    assert "has experts (MoE)" in doc.text and "expert" in doc.table_cells
    # Every figure of a dense model (routed experts pooled per layer), and the per-expert heatmap.
    assert {i for i in doc.ids if i.startswith("fig-")} == {f"fig-{name}-0" for name in (
        "svsm", "bands", "nf", "experts", "intruders", "matrices")}
    assert len(doc.images) == 6 and all(png_size(image["src"])[0] > 100 for image in doc.images)
    rows = 2 * (4 + 3 * 3)  # layers x (attention kinds + MLP kinds x experts)
    assert f"Per layer ({rows} matrices)" in doc.text
    # The spread columns: the population std over experts of each expert's mean NF, from the table.
    comparison = postsvd.compare(tmp_path / "moe_base", tmp_path / "moe_post", progress=False)
    table = comparison.table
    for kind in ("gate", "up", "down"):
        of_kind = table[table["kind"] == kind]
        spread = float(np.std(of_kind.groupby("expert")["nf"].mean().to_numpy()))
        assert f"{spread:.4f}" in doc.table_cells, kind
        assert spread > 1e-4, kind  # expert 1 stands out
    attention = doc.table_cells[doc.table_cells.index("Wq"):][:12]  # kind .. alpha, intruders, 3 expert cells
    assert attention[-3:] == ["–", "–", "–"]  # no experts: no spread
    # The heatmap shows NF per (expert, layer) as the table has it.
    figure = comparison.plot_expert_nf()
    panels = [ax for ax in figure.axes if ax.get_visible() and ax.get_title().startswith("W_")]
    assert [ax.get_title() for ax in panels] == ["W_gate", "W_up", "W_down"]
    for ax, kind in zip(panels, ("gate", "up", "down")):
        of_kind = table[table["kind"] == kind]
        expected = of_kind.pivot(index="expert", columns="layer", values="nf").sort_index(key=lambda i: i.astype(int))
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), expected.to_numpy(), rtol=1e-12)


def test_plot_nf_models_draws_one_line_per_model(pairs):
    related, unrelated = pairs
    a = postsvd.compare(related.base, related.post, progress=False)
    b = postsvd.compare(related.base, unrelated.post, progress=False)
    figure = plots.plot_nf_models({"instruct": a, "unrelated": b}, kinds="q,o")
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["W_q", "W_o"]
    lines = axes[0].get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), a.nf("q"))
    np.testing.assert_allclose(lines[1].get_ydata(), b.nf("q"))
    assert np.all(lines[1].get_ydata() > 5 * lines[0].get_ydata())


# ---------------------------------------------------------------- rendering in a browser

COUNT_SCRIPT = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var rendered = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', String(images.length));
  document.body.setAttribute('data-rendered', String(rendered));
});
</script>"""


def render_counts(page_path, tmp_path, extra=""):
    """Opens a copy of the page (plus a counting script) in headless Chromium; returns
    (images, rendered images) as the browser saw them after the load event."""
    copy = tmp_path / "checked.html"
    text = open(page_path, encoding="utf-8").read()
    copy.write_text(text.replace("</body>", extra + COUNT_SCRIPT + "</body>"), encoding="utf-8")
    command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
               copy.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    images = re.search(r'data-images="(\d+)"', done.stdout)
    rendered = re.search(r'data-rendered="(\d+)"', done.stdout)
    assert images and rendered, f"the counting script did not run; DOM starts: {done.stdout[:300]!r}"
    return int(images.group(1)), int(rendered.group(1))


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium; scripts/setup.sh installs it)")
def test_report_renders_every_figure_in_chromium(page, tmp_path):
    path, _, _ = page
    figures = len(parse(path).images)
    assert figures == 1 + 2 * FIGURES_PER_POST
    assert render_counts(path, tmp_path) == (figures, figures)
    # The check sees a figure that does not decode.
    broken = '<img alt="broken" src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB">'
    assert render_counts(path, tmp_path, extra=broken) == (figures + 1, figures)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium; scripts/setup.sh installs it)")
def test_report_screenshot(page, tmp_path):
    """The page renders to a tall screenshot (kept in $POSTSVD_REPORT_SCREENSHOT when set, for a look)."""
    path, _, _ = page
    shot = tmp_path / "report.png"
    command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,4000",
               f"file://{os.path.abspath(path)}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    raw = shot.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", raw[16:24]) == (1280, 4000)
    if os.environ.get("POSTSVD_REPORT_SCREENSHOT"):
        shutil.copy(shot, os.environ["POSTSVD_REPORT_SCREENSHOT"])
