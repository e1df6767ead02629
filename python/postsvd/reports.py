"""One self-contained HTML page of a comparison: :func:`report` and ``postsvd report``.

``postsvd.report(base, [post, ...], out_dir)`` compares the base with each post
model and writes ``out_dir/report.html``: per post model a plain-language
summary, the per-kind table (the paper's Table 3), the per-layer table and the
figures (SVSM heatmaps, Fig. 2; scaling bands, Fig. 8; NF per layer, Fig. 3b;
the intruder dimensions against epsilon, after Shuttleworth et al. 2024; the
similarity / I_orth matrices of one pair, Fig. 3a), with several post
models also their NF side by side (Fig. 9), and the run's metadata. Figures
are embedded as base64 PNG and the CSS is inline, so the page reads offline,
from a mail attachment or a CI artifact. Every argument is checked before
anything is computed, and the page is written in a temporary folder beside
the output folder and moved into place when complete (see
:func:`postsvd._outputs.atomic_folder`), so a reader never sees half a page.

:func:`write_report` does the same from :class:`~postsvd.Comparison` objects
already computed (e.g. in a notebook).

(The module is ``postsvd.reports`` so that the function ``postsvd.report`` does
not shadow it.)
"""
from __future__ import annotations

import json
import os
import shlex
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import interactive as _interactive
from ._display import use_interactive
from ._html import data_table, escape as _e, figure as _figure, model_row, page, run_metadata, section
from ._names import distinct
from ._outputs import FileSet, atomic_folder
from ._validate import INTRUDER_DEFAULTS, normalize_layers, normalize_output_folder
from .compare import check_compare_arguments, compare, resolve_models
from .comparison import Comparison
from .errors import InvalidArgumentError
from .hub import ResolvedModel
from .readings import intruder_setting, kind_reading, nf_comparison

PathLike = Union[str, "os.PathLike[str]"]

#: The page's file name inside the output folder.
REPORT_NAME = "report.html"
#: What :func:`write_report` writes into its folder.
REPORT_FILES = FileSet("a report", [REPORT_NAME])
#: Above this many rows the page's per-layer table leaves out the routed experts' rows (a DeepSeek-V3
#: comparison has about 45,000); their numbers stay in the expert heatmap's hover and in table.csv.
PAGE_TABLE_ROWS = 2000
MatricesArg = Union[None, Tuple[Any, ...], Sequence[Tuple[Any, ...]]]


# ---------------------------------------------------------------------- public API

def report(base: Optional[PathLike], posts: Union[PathLike, Sequence[PathLike]], out: PathLike, *, device: str = "cpu",
           dtype: str = "float32", layers=None, kinds=None, title: Optional[str] = None,
           matrices: MatricesArg = None, leading_k: int = 25, progress: bool = True,
           num_threads: Optional[int] = None, cache: Optional[PathLike] = None,
           warm_start: Union[bool, str] = True, whole_files: bool = False, intruder_k: int = INTRUDER_DEFAULTS["k"],
           intruder_epsilon: float = INTRUDER_DEFAULTS["epsilon"],
           intruder_side: str = INTRUDER_DEFAULTS["side"], interactive: Optional[bool] = None,
           residual_base: bool = False) -> str:
    """Compares `base` with each post model and writes one HTML page; returns its path.

    Args:
        base: the base model: a folder or a Hub repo id (``org/name[@revision]``), as in
            :func:`postsvd.compare`; None when the posts are PEFT adapters naming their base.
        posts: one post-trained model or a list of them (same architecture), named the same ways;
            PEFT LoRA adapters too (docs/adapters.md).
        out: output folder (created); the page is ``out/report.html``.
        device, dtype, layers, kinds, num_threads, cache, warm_start, intruder_k, intruder_epsilon,
            intruder_side, residual_base: as in :func:`postsvd.compare`.
        title: the page's title (default: "postsvd report: <base>").
        matrices: the (layer, kind) or (layer, kind, expert) whose sim_U / sim_V / difference / I_orth
            are drawn, or a list of them (default: the middle compared layer, first compared kind);
            an interactive page holds their leading blocks, and a click on one of them opens it.
        leading_k: leading singular vectors shown in those matrices.
        progress: show a progress bar per comparison.
        whole_files: Hub models: fetch whole shards instead of the tensors' byte ranges.
        interactive: plotly figures with hover values and click views (plotly.js embedded once, no
            request anywhere); None: where plotly (``postsvd[interactive]``) is installed; False: the
            static PNG figures only (a page of a few hundred KB).

    Raises:
        InvalidArgumentError: no post model, a bad option (as in compare), or
            `out` is an existing file.
        BadCheckpointError: a folder is missing or malformed, or shapes differ.
    """
    base_model, post_list = resolve_models(base, _post_list(posts))
    intruders = dict(intruder_k=intruder_k, intruder_epsilon=intruder_epsilon, intruder_side=intruder_side)
    check_compare_arguments(base_model, post_list, device=device, dtype=dtype, layers=layers, kinds=kinds,
                            num_threads=num_threads, cache=cache,
                            matrices_for=None if matrices is None else _pair_list(matrices), leading_k=leading_k,
                            outs=[out], residual_base=residual_base, **intruders)
    use_interactive(interactive)  # a missing plotly fails now, not after the comparisons
    comparisons = [compare(base_model, post, device=device, dtype=dtype, layers=layers, kinds=kinds,
                           progress=progress, num_threads=num_threads, cache=cache, warm_start=warm_start,
                           whole_files=whole_files, residual_base=residual_base, **intruders) for post in post_list]
    return write_report(comparisons, out, title=title, matrices=matrices, leading_k=leading_k,
                        interactive=interactive)


def write_report(comparisons: Union[Comparison, Sequence[Comparison]], out: PathLike, *,
                 title: Optional[str] = None, matrices: MatricesArg = None,
                 leading_k: int = 25, interactive: Optional[bool] = None) -> str:
    """Writes the HTML page of comparisons already computed (one base, one or
    more post models) into ``out/report.html``; returns its path."""
    comparison_list = _comparison_list(comparisons)
    target = normalize_output_folder(out)
    text = render_html(comparison_list, title=title, matrices=matrices, leading_k=leading_k,
                       interactive=interactive)
    with atomic_folder(target, files=REPORT_FILES) as temp:
        with open(os.path.join(temp, REPORT_FILES.name(REPORT_NAME)), "w", encoding="utf-8") as f:
            f.write(text)
    return os.path.join(os.fspath(out), REPORT_NAME)


def render_html(comparisons: Union[Comparison, Sequence[Comparison]], *, title: Optional[str] = None,
                matrices: MatricesArg = None, leading_k: int = 25, interactive: Optional[bool] = None) -> str:
    """The report page as one HTML string (see :func:`write_report`)."""
    comparison_list = _comparison_list(comparisons)
    live = use_interactive(interactive)
    if leading_k is not None and int(leading_k) < 1:
        raise InvalidArgumentError(f"leading_k: expected >= 1 or None, got {leading_k!r}")
    base_name = comparison_list[0].base_name
    title = title or f"postsvd report: {base_name}"
    names = distinct([c.post_name for c in comparison_list])
    sections = [_overview_section(comparison_list, names)]
    if len(comparison_list) > 1:
        sections.append(_all_models_section(comparison_list, names))
    for index, (comparison, name) in enumerate(zip(comparison_list, names)):
        sections.append(_post_section(index, comparison, name, _chosen_pairs(comparison, matrices), leading_k, live))
    sections.append(_how_to_read_section())
    sections.append(_metadata_section(comparison_list, names))
    subtitle = (f"base <code>{_e(base_name)}</code> compared with {len(names)} post-trained "
                f"model{'s' if len(names) > 1 else ''}: {', '.join(f'<code>{_e(n)}</code>' for n in names)}")
    nav = [("overview", "overview"), *((f"post-{i}", n) for i, n in enumerate(names)),
           ("how-to-read", "how to read"), ("metadata", "run")]
    if not live:
        return page(title, sections, subtitle=subtitle, nav=nav)
    return page(title, sections, subtitle=subtitle, nav=nav, head=_interactive.runtime_script(),
                tail=_interactive.page_scripts())


# ---------------------------------------------------------------------- sections

def _overview_section(comparisons: Sequence[Comparison], names: Sequence[str]) -> str:
    rows = []
    for index, (comparison, name) in enumerate(zip(comparisons, names)):
        kinds = comparison.kind_table()
        rows.append(
            f'<tr><td><a href="#post-{index}">{_e(name)}</a></td>'
            f"<td>{kinds['scaling_mean'].min():.3f} – {kinds['scaling_mean'].max():.3f}</td>"
            f"<td>{kinds['nf_mean'].mean():.4f}</td><td>{kinds['nf_random'].mean():.4f}</td>"
            f"<td>{int(kinds['intruders'].sum())}</td><td>{_e(comparison.overall())}</td></tr>")
    return section("overview", "Overview",
                   "<p>One row per post-trained model. <b>Scaling</b> is σ<sub>post</sub>/σ<sub>base</sub> per singular "
                   "value (range of the per-kind means); <b>NF</b> measures whether the input side and the output side "
                   "of each matrix rotated together (0 = exactly together; about the <i>unrelated</i> value for two "
                   "independently trained models). <b>Intruders</b> counts the intruder dimensions of all matrices: "
                   "top singular vectors of the post model nearly orthogonal to every base one (Shuttleworth et al. "
                   "2024).</p>"
                   '<table class="data"><thead><tr><th>post model</th><th>mean scaling per kind</th><th>NF mean</th>'
                   "<th>NF unrelated</th><th>intruders</th><th>reading</th></tr></thead><tbody>" + "".join(rows)
                   + "</tbody></table>")


def _all_models_section(comparisons: Sequence[Comparison], names: Sequence[str]) -> str:
    from .plots import plot_nf_models

    figure = plot_nf_models(dict(zip(names, comparisons)))
    return section("all-models", "All post models: NF per layer (Fig. 9)",
                   "<p>Each line is one post model compared with the same base (MoE kinds: the mean over each "
                   "layer's routed experts). Post-trained descendants of the base stay far below the dashed line (a "
                   "consistent rotation); a separately trained model sits near it.</p>"
                   + _figure(figure, "nf-models", "NF per layer of every post model against the base"))


def _post_section(index: int, comparison: Comparison, name: str, pairs: Sequence[Tuple], leading_k: Optional[int],
                  live: bool) -> str:
    parts = [f'<section class="post" id="post-{index}"><h2>{_e(name)} vs {_e(comparison.base_name)}</h2>',
             _summary_html(comparison),
             "<h3>Per kind (Table 3)</h3>",
             "<p>Pooled over the compared layers (and experts): the mean ± population std of the top-90 % scaling "
             "factors, the mean and largest NF, the NF of unrelated random rotations (√(2/k)) and α′, the pooled mean "
             "rounded to one decimal (the paper's Table 4, used by Construction 9) and the intruder dimensions of "
             "the kind's matrices, summed (below). MoE models add, per kind, the "
             "number of experts and how much the experts differ: the population std over experts of each expert's "
             "own scaling mean and mean NF.</p>",
             _kind_table_html(comparison)]
    if comparison.has_experts:
        parts.append('<p class="note">This model has experts (MoE): in the figures below a kind\'s routed experts are '
                     "pooled per layer (<i>W<sub>kind</sub> experts</i>: their mean, with their spread as the band) and "
                     "its shared expert is drawn on its own; the tables cover every expert.</p>")
    parts += [
        "<h3>Singular value scaling matrices (Fig. 2)</h3>",
        "<p>One heatmap per kind: column = layer, row = singular value index (largest at the top), color = "
        "σ<sub>post</sub>/σ<sub>base</sub>. One flat color means every singular value was scaled by the same "
        "factor; stripes in the bottom rows are the small, noisy tail (excluded from the top-90 % statistics)."
        "</p>",
        _figure(comparison.plot_svsm(), f"svsm-{index}", f"SVSM heatmaps of {name}"),
    ]
    parts += (_live_figures if live else _static_figures)(index, comparison, name, pairs, leading_k)
    table = comparison.table
    shown, note = _page_table(table)
    parts += [f"<h3>Per layer ({len(table)} matrices)</h3>", note,
              f"<details><summary>show the table: a row per (layer, kind)</summary>"
              f"{data_table(shown.drop(columns=['tensor']))}</details>",
              "<h3>Text summary</h3>",
              f'<pre class="summary">{_e(comparison.summary())}</pre>',
              "</section>"]
    return "".join(parts)


_NF_WORDS = ("NF = ‖Q<sub>1</sub><sup>T</sup>Q<sub>2</sub> − I‖<sub>F</sub>/k per layer; dashed: unrelated random "
             "rotations. Far below the dashed line = the left and right singular vectors were rotated by the same "
             "orthogonal matrix.")
_MATRICES_WORDS = ("sim<sub>U</sub> = |U<sub>base</sub><sup>T</sup>U<sub>post</sub>| and sim<sub>V</sub> = "
                   "|V<sub>base</sub><sup>T</sup>V<sub>post</sub>| (the same pattern on both sides means one rotation), "
                   "their difference (dark = equal) and I<sub>orth</sub> = Q<sub>1</sub><sup>T</sup>Q<sub>2</sub> "
                   "(near the identity = consistent rotation), for the leading singular vectors.")
_EXPERTS_WORDS = ("One heatmap per kind with experts: column = MoE layer, row = expert (routed experts by index, then "
                  "<code>shared</code>), color = NF. A uniform dark map means every expert rotated consistently; a "
                  "bright row or cell singles out an expert that changed differently.")


def _intruder_paragraph(comparison: Comparison) -> str:
    return (f"<p>Per matrix, the {_e(_intruder_words(comparison))} are <i>intruder dimensions</i>: new high-ranking "
            "directions the base lacks (the output side is that of the left singular vectors of the stored [out, in] "
            "weight, as the paper counts: V in this page's orientation; the input side is U). Summed over each "
            "kind's matrices against the threshold ε; the tables count at the dotted line. The paper finds that LoRA "
            "brings them in and full fine-tuning mostly does not; unrelated models show them everywhere.</p>")


def _pair_words(pair: Tuple) -> str:
    layer, kind, expert = pair
    return f"W_{kind}, layer {layer}" + ("" if expert is None else f", expert {expert}")


def _static_figures(index: int, comparison: Comparison, name: str, pairs: Sequence[Tuple],
                    leading_k: Optional[int]) -> List[str]:
    """The PNG figures of a post model's section (the page without plotly)."""
    parts = [
        "<h3>Scaling per layer (Fig. 8)</h3>",
        "<p>Per layer the mean (line) and ± std (band) of the top-90 % scaling factors, one color per kind. A "
        "thin band means near-uniform scaling.</p>",
        _figure(comparison.plot_scaling_bands(), f"bands-{index}", f"scaling bands of {name}"),
        "<h3>Orthogonal consistency per layer (Fig. 3b)</h3>",
        f"<p>{_NF_WORDS}</p>",
        _figure(comparison.plot_nf(), f"nf-{index}", f"NF per layer of {name}"),
    ]
    if comparison.has_experts:
        parts += ["<h3>Orthogonal consistency per expert</h3>", f"<p>{_EXPERTS_WORDS}</p>",
                  _figure(comparison.plot_expert_nf(), f"experts-{index}", f"NF per layer and expert of {name}")]
    parts += ["<h3>Intruder dimensions (Shuttleworth et al. 2024)</h3>", _intruder_paragraph(comparison),
              _figure(comparison.plot_intruders(), f"intruders-{index}",
                      f"intruder dimensions against epsilon of {name}")]
    for position, (layer, kind, expert) in enumerate(pairs):
        which = "" if expert is None else f", expert {expert}"
        suffix = "" if position == 0 else f"-{position}"
        parts += [f"<h3>Singular vector similarity of W<sub>{_e(kind)}</sub>, layer {layer}{_e(which)} (Fig. 3a)</h3>",
                  f"<p>{_MATRICES_WORDS}</p>",
                  _figure(comparison.plot_matrices(layer, kind, leading_k, expert), f"matrices-{index}{suffix}",
                          f"similarity matrices of W_{kind}, layer {layer}{which}, {name}")]
    return parts


def _live_figures(index: int, comparison: Comparison, name: str, pairs: Sequence[Tuple],
                  leading_k: Optional[int]) -> List[str]:
    """The interactive figures of a post model's section: NF and scaling per layer, the expert heatmaps (MoE),
    where the intruders are, and the matrix view a click opens (holding the chosen pairs' leading blocks)."""
    held: Dict[str, Any] = {}
    for layer, kind, expert in pairs:
        figure = comparison.interactive_matrices(layer, kind, leading_k, expert)
        key = f"{layer}:{kind}" + ("" if expert is None else f":{expert}")
        held[key] = {"caption": figure.layout.title.text, "figure": json.loads(_interactive.figure_json(figure))}
    command = (f"postsvd compare {shlex.quote(comparison.base_model.name)} {shlex.quote(comparison.post_model.name)} "
               f"--out DIR --matrices PAIR")  # the models as written: a Hub id runs again as it is
    pick = (f'postsvd.pick("iplot-layers-{index}", "matrix-view-{index}", "held-{index}", '
            f"{json.dumps(command)})")
    first = next(iter(held))
    parts = [
        "<h3>NF and scaling per layer (Fig. 3b, Fig. 8)</h3>",
        f"<p>Top: {_NF_WORDS} Bottom: per layer the mean (line) and ± std (band) of the top-90 % scaling factors; "
        "a thin band means near-uniform scaling. Hover a point for its layer, kind, NF, scaling and intruders; "
        "click it to open its matrices below; click a legend entry to hide a series.</p>",
        _interactive.figure_html(comparison.interactive_layers(), f"layers-{index}",
                                 f"NF and scaling per layer of {name}", then=pick),
    ]
    if comparison.has_experts:
        parts += ["<h3>Orthogonal consistency per expert</h3>", f"<p>{_EXPERTS_WORDS} Hover a cell for its values; "
                  "click it to open its matrices below.</p>",
                  _interactive.figure_html(comparison.interactive_experts(), f"experts-{index}",
                                           f"NF per layer and expert of {name}",
                                           then=pick.replace(f"iplot-layers-{index}", f"iplot-experts-{index}"))]
    parts += [
        "<h3>Singular vector similarity (Fig. 3a)</h3>",
        f"<p>{_MATRICES_WORDS} This page holds them for "
        + ", ".join(f"<code>{_e(_pair_words(p))}</code>" for p in pairs)
        + "; a click on another point says which command draws its matrices.</p>",
        _interactive.json_script(f"held-{index}", held),
        f'<div class="matrix-view" id="matrix-view-{index}" data-key="{_e(first)}"><p class="view-caption">'
        f"{held[first]['caption']}</p>"
        f'<div class="iplot view-plot" id="iplot-matrices-{index}"></div></div>',
        f'<script>postsvd.draw("iplot-matrices-{index}", JSON.parse(document.getElementById("held-{index}")'
        f".textContent)[{json.dumps(first)}].figure);</script>",
        "<h3>Intruder dimensions (Shuttleworth et al. 2024)</h3>", _intruder_paragraph(comparison),
        _figure(comparison.plot_intruders(), f"intruders-{index}", f"intruder dimensions against epsilon of {name}"),
    ]
    if int(comparison.table["intruders"].sum()) > 0:
        parts.append(_interactive.figure_html(comparison.interactive_intruders(), f"intruders-layers-{index}",
                                              f"where the intruder dimensions of {name} are, per layer and series"))
    return parts


def _page_table(table) -> Tuple[Any, str]:
    """The rows of the page's per-layer table and a note on what was left out (above PAGE_TABLE_ROWS rows:
    the routed experts' rows)."""
    if len(table) <= PAGE_TABLE_ROWS or "expert" not in table.columns:
        return table, ""
    routed = table["expert"].map(lambda e: e != "shared" and int(e) >= 0)
    return table[~routed], (f'<p class="note">The table below leaves out the {int(routed.sum())} rows of routed '
                            "experts (the expert heatmap shows each one's values on hover; "
                            "<code>postsvd compare BASE POST --out DIR</code> writes every row to table.csv).</p>")


def _summary_html(comparison: Comparison) -> str:
    """A few sentences a newcomer can read without the paper (worded by :mod:`postsvd.readings`)."""
    items = []
    for row in comparison.kind_table().itertuples():
        reading = kind_reading(row.scaling_mean, row.scaling_std, row.nf_mean, row.nf_random)
        change = "grew" if row.scaling_mean > 1.0 else "shrank"
        spread = "nearly the same factor for all of them" if reading.uniform else "by different factors (non-uniform)"
        items.append(f"<li><b>W<sub>{_e(row.kind)}</sub></b>: singular values {change} to "
                     f"{row.scaling_mean:.3f}× on average (± {row.scaling_std:.3f}: {spread}); NF {row.nf_mean:.4f}, "
                     f"{_e(reading.rotation)}: {_e(nf_comparison(row.nf_mean, row.nf_random))} "
                     f"({row.nf_random:.4f}).</li>")
    return (f'<div class="verdict"><p><b>In short:</b> {_e(comparison.overall())}</p>'
            f"<ul>{''.join(items)}</ul></div>")


def _intruder_words(comparison: Comparison) -> str:
    return intruder_setting(comparison.intruder_k, comparison.intruder_epsilon, comparison.intruder_side)


def _kind_table_html(comparison: Comparison) -> str:
    kinds = comparison.kind_table()
    moe = "experts" in kinds.columns

    def expert_cells(r) -> str:
        if not moe:
            return ""
        if not r.experts:
            return "<td>–</td><td>–</td><td>–</td>"
        return f"<td>{r.experts}</td><td>{r.expert_scaling_mean_std:.4f}</td><td>{r.expert_nf_mean_std:.4f}</td>"

    rows = "".join(
        f"<tr><td>W<sub>{_e(r.kind)}</sub></td><td>{r.layers}</td><td>{r.k}</td>"
        f"<td>{r.scaling_mean:.4f} ± {r.scaling_std:.4f}</td><td>{r.nf_mean:.4f}</td><td>{r.nf_max:.4f}</td>"
        f"<td>{r.nf_random:.4f}</td><td>{r.alpha:.1f}</td><td>{r.intruders}</td>{expert_cells(r)}</tr>"
        for r in kinds.itertuples())
    expert_heads = ("<th>experts</th><th>per-expert scaling mean: spread (std)</th>"
                    "<th>per-expert NF mean: spread (std)</th>" if moe else "")
    return ('<table class="data kinds"><thead><tr><th>kind</th><th>layers</th><th>k</th>'
            "<th>scaling (top 90 %) mean ± std</th><th>NF mean</th><th>NF max</th><th>NF unrelated √(2/k)</th>"
            f"<th>α′</th><th>intruders</th>{expert_heads}</tr></thead><tbody>" + rows + "</tbody></table>")


def _how_to_read_section() -> str:
    return ('<section id="how-to-read"><h2>How to read this page</h2><ul>'
            "<li>Every attention and MLP projection W (q, k, v, o, gate, up, down) of both models is decomposed as "
            "W = U S V<sup>T</sup> in the paper's orientation W = W<sub>HF</sub><sup>T</sup> ([in, out]).</li>"
            "<li><b>Scaling</b>: σ<sub>post</sub>/σ<sub>base</sub> per singular value; statistics use the top 90 % "
            "of each spectrum. The paper finds it near-uniform per matrix type: post-training rescales the "
            "spectrum almost by one factor.</li>"
            "<li><b>Rotation</b>: Q<sub>1</sub> = U<sub>base</sub><sup>T</sup>U<sub>post</sub> (input side) and "
            "Q<sub>2</sub> = V<sub>base</sub><sup>T</sup>V<sub>post</sub> (output side). If both sides rotate by "
            "the same orthogonal Q, I<sub>orth</sub> = Q<sub>1</sub><sup>T</sup>Q<sub>2</sub> = I and NF = "
            "‖I<sub>orth</sub> − I‖<sub>F</sub>/k = 0. Two unrelated models give NF ≈ √(2/k).</li>"
            "<li><b>Intruder dimensions</b>: a top singular vector of the post matrix whose largest |cosine| with "
            "every base singular vector is below ε (Shuttleworth et al., <i>LoRA vs Full Fine-tuning: An Illusion "
            "of Equivalence</i>, arXiv 2410.21228, Algorithm 1).</li>"
            "<li>Paper: He and Cao, <i>Understanding Post-Training Structural Changes in Large Language Models</i>, "
            "arXiv 2509.17866 (Fig. 2, 3, 8, 9 and Table 3 correspond to the sections above).</li>"
            "<li>The same numbers as files: <code>postsvd compare BASE POST --out DIR</code> (CSV, JSON, PNG).</li>"
            "</ul></section>")


def _metadata_section(comparisons: Sequence[Comparison], names: Sequence[str]) -> str:
    first = comparisons[0]
    rows = [
        ("backend", "; ".join(sorted({c.backend for c in comparisons}))),
        ("device, dtype", "; ".join(sorted({f"{c.device}, {c.dtype}" for c in comparisons}))),
        model_row("base", first.base_model),
    ]
    for name, comparison in zip(names, comparisons):
        rows.append(model_row(f"post ({name})", comparison.post_model))
    rows += [
        ("model type, layers", f"{first.model_type}, {first.num_layers} layers"),
        ("compared layers", _layers_text(first.layers)),
        ("compared kinds", ", ".join(first.kinds)),
        ("compare time", "; ".join(f"{n}: {c.elapsed_seconds:.1f} s" for n, c in zip(names, comparisons))),
    ]
    return run_metadata(rows)


# ---------------------------------------------------------------------- helpers

def _pair_list(matrices) -> List[Tuple]:
    """`matrices` as a list of items: one (layer, kind[, expert]) or a list of them."""
    if isinstance(matrices, (tuple, list)) and len(matrices) in (2, 3) and isinstance(matrices[1], str):
        return [tuple(matrices)]
    if not isinstance(matrices, (tuple, list)) or not matrices:
        raise InvalidArgumentError(f"matrices: expected (layer, kind), (layer, kind, expert) or a list of them, "
                                   f"got {matrices!r}")
    return list(matrices)


def _chosen_pairs(comparison: Comparison, matrices) -> List[Tuple[int, str, Optional[Union[int, str]]]]:
    """The (layer, kind, expert) items whose matrices the page draws: `matrices` ((layer, kind) or (layer, kind,
    expert), or a list of them) or, by default, the middle compared layer and the first kind (its first routed
    expert where that layer has only experts of it)."""
    if matrices is None:
        middle = comparison.layers[len(comparison.layers) // 2]
        return [comparison.default_matrices(middle)]
    items = _pair_list(matrices)
    for item in items:
        if isinstance(item, (tuple, list)) and item and isinstance(item[0], (int,)) and not isinstance(item[0], bool):
            layer = normalize_layers(int(item[0]), comparison.num_layers, comparison.model_type, what="matrices")[0]
            if layer not in comparison.layers:
                raise InvalidArgumentError(f"matrices: layer {layer} was not compared; compared layers: "
                                           f"{_layers_text(comparison.layers)}")
    return comparison.matrix_pairs(items, "matrices")


def _layers_text(layers: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts: List[str] = []
    ordered = sorted(layers)
    start = previous = None
    for layer in ordered + [None]:
        if layer is not None and previous is not None and layer == previous + 1:
            previous = layer
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = layer
    return ", ".join(parts)


def _post_list(posts) -> List:
    if isinstance(posts, (str, bytes, os.PathLike, ResolvedModel)):
        post_list = [posts]
    else:
        post_list = list(posts)
    if not post_list:
        raise InvalidArgumentError("posts: expected at least one post-trained model folder, got none")
    return post_list


def _comparison_list(comparisons) -> List[Comparison]:
    items = [comparisons] if isinstance(comparisons, Comparison) else list(comparisons)
    if not items:
        raise InvalidArgumentError("comparisons: expected at least one Comparison, got none")
    bad = [type(c).__name__ for c in items if not isinstance(c, Comparison)]
    if bad:
        raise InvalidArgumentError(f"comparisons: expected postsvd.Comparison objects, got {', '.join(bad)}")
    bases = {os.path.abspath(c.base) for c in items}
    if len(bases) > 1:
        raise InvalidArgumentError(f"comparisons: expected one base model for all, got {sorted(bases)}")
    return items
