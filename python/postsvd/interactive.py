"""Interactive figures (plotly) of postsvd's results, and their embedding in a page or a notebook.

The figures take plain numbers per layer, kind, expert and step, as :mod:`postsvd.plots` does, and
return ``plotly.graph_objects.Figure`` objects: in a notebook a returned figure shows itself; with
:func:`figure_html` it becomes part of a page. Every point and cell carries its hover values (layer,
kind, expert, NF, scaling mean ± std, intruders) and its ``meta`` names the kind and series, so a
page can tell which matrix a click picked (:data:`RUNTIME_JS`, ``postsvd.pick``).

plotly comes with the extra ``postsvd[interactive]``. :func:`available` says whether it is
installed; the result objects and pages fall back to the static matplotlib figures where it is
not, and the static figures (for papers) stay as they are.

Embedding, fully offline: :func:`page_scripts` is a page's one copy of plotly.js (inline, no
request anywhere) after the small runtime; each :func:`figure_html` queues its figure, drawn when
plotly.js has loaded (text and tables show first). :func:`notebook_html` does the same for one
output of a notebook, carrying plotly.js in the first output of the process only.
"""
from __future__ import annotations

import html
import json
import math
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ._extras import require
from ._style import KIND_COLORS

#: What :func:`postsvd._extras.require` names when plotly is missing.
FEATURE = "interactive figures"
#: Heatmap height per expert row (pixels), and the bounds of one kind's heatmap.
EXPERT_ROW_PX, EXPERT_PANEL_MIN_PX, EXPERT_PANEL_MAX_PX = 12, 140, 320
#: The plotly config of every figure: no logo, no request for anything (no "edit in chart studio").
CONFIG = {"displaylogo": False, "responsive": True, "showLink": False, "showSendToCloud": False}
_TEMPLATE = "plotly_white"


def available() -> bool:
    """True when plotly (the extra ``postsvd[interactive]``) is installed."""
    try:
        require("plotly", FEATURE)
    except ImportError:
        return False
    return True


def _plotly():
    """(plotly.graph_objects, plotly.subplots.make_subplots), or an ImportError naming the extra."""
    go = require("plotly.graph_objects", FEATURE)
    return go, require("plotly.subplots", FEATURE).make_subplots


def _text(value: Any) -> str:
    """A name shown in a figure's title or label, with plotly's markup characters escaped."""
    return html.escape(str(value), quote=False)


def _f32(values) -> np.ndarray:
    """Numbers for a figure as float32 (half the bytes of float64 in a page, ample for a hover)."""
    return np.asarray(values, dtype=np.float32)


def _dash(expert: Any) -> str:
    """Line style of a series: solid for a kind's dense matrices and pooled experts, dotted for its
    shared expert, dash-dot for one routed expert (as plots._series_style)."""
    if expert is None or expert == "pooled":
        return "solid"
    return "dot" if expert == "shared" else "dashdot"


def _rgba(color: Optional[str], alpha: float) -> str:
    color = color or "#555555"
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _band(go, x, low, high, color, group: str, row: int):
    """Two traces that fill between `low` and `high` (no hover, no legend)."""
    edge = dict(width=0)
    return [(go.Scatter(x=x, y=_f32(low), mode="lines", line=edge, hoverinfo="skip", showlegend=False,
                        legendgroup=group), row),
            (go.Scatter(x=x, y=_f32(high), mode="lines", line=edge, fill="tonexty", fillcolor=_rgba(color, 0.15),
                        hoverinfo="skip", showlegend=False, legendgroup=group), row)]


# ---------------------------------------------------------------------- a comparison

def layers_figure(series: Sequence[Mapping[str, Any]], baseline: Optional[Mapping[str, float]] = None,
                  title: str = "", height: int = 560):
    """NF (top) and the top-90 % scaling mean ± std (bottom) per layer, one line per series.

    Args:
        series: per series (:meth:`postsvd.Comparison.series`) a mapping with ``label`` ("gate experts"),
            ``kind``, ``expert`` (None, 'pooled', 'shared' or an index) and per compared layer
            ``layers``, ``nf``, ``scaling_mean``, ``scaling_std``, ``intruders`` (summed over the
            layer's matrices); pooled experts add ``nf_low``, ``nf_high`` (the band) and ``experts``
            (how many per layer).
        baseline: series label -> NF of unrelated random rotations (sqrt(2/k)), drawn dashed.
    """
    go, make_subplots = _plotly()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=("NF per layer (dashed: unrelated rotations)",
                                        "scaling σ_post/σ_base (top 90 %): mean ± std"))
    traces = []
    for s in series:
        kind, expert, label = s["kind"], s["expert"], s["label"]
        color = KIND_COLORS.get(kind)
        layers = np.asarray(s["layers"], dtype=int)
        nf = _f32(s["nf"])
        pooled = expert == "pooled"
        low = _f32(s.get("nf_low", nf))
        high = _f32(s.get("nf_high", nf))
        experts = _f32(s.get("experts", np.ones(len(layers))))
        custom = np.stack([nf, _f32(s["scaling_mean"]), _f32(s["scaling_std"]), _f32(s["intruders"]), low, high,
                           experts], axis=1)
        head = f"<b>W_{_text(label)}</b>" + (" (%{customdata[6]} experts)" if pooled else "") + ", layer %{x}<br>"
        nf_line = ("NF mean %{customdata[0]:.4g} (%{customdata[4]:.4g} – %{customdata[5]:.4g})<br>" if pooled
                   else "NF %{customdata[0]:.4g}<br>")
        hover = (head + nf_line + "scaling %{customdata[1]:.4f} ± %{customdata[2]:.4f}<br>intruders "
                 "%{customdata[3]}" + (" (summed)" if pooled else "") + "<extra></extra>")
        meta = {"kind": kind, "expert": "" if expert is None else str(expert), "label": label}
        line = dict(color=color, dash=_dash(expert), width=2 if expert is None or pooled else 1.5)
        if pooled:
            traces += _band(go, layers, low, high, color, label, 1)
        traces.append((go.Scatter(x=layers, y=nf, mode="lines+markers", name=f"W_{_text(label)}", legendgroup=label,
                                  line=line, marker=dict(size=5), customdata=custom, hovertemplate=hover,
                                  meta=meta), 1))
        mean, std = _f32(s["scaling_mean"]), _f32(s["scaling_std"])
        traces += _band(go, layers, mean - std, mean + std, color, label, 2)
        traces.append((go.Scatter(x=layers, y=mean, mode="lines+markers", name=f"W_{_text(label)}", legendgroup=label,
                                  showlegend=False, line=line, marker=dict(size=4), customdata=custom,
                                  hovertemplate=hover, meta=meta), 2))
    for trace, row in traces:
        fig.add_trace(trace, row=row, col=1)
    by_value: Dict[float, List[str]] = {}
    kinds = {s["label"]: s["kind"] for s in series}
    for label, value in (baseline or {}).items():
        names = by_value.setdefault(round(float(value), 12), [])
        if kinds.get(label, label) not in names:
            names.append(kinds.get(label, label))
    every = [layer for s in series for layer in s["layers"]]
    span = [min(every), max(every)] if every else [0, 1]
    for value, names in by_value.items():
        words = f"unrelated ({', '.join(names)})"
        fig.add_trace(go.Scatter(x=span, y=[value, value], mode="lines+text", text=[words, ""],
                                 textposition="bottom right", textfont=dict(size=10, color="#555555"),
                                 line=dict(color="#777777", width=1, dash="dash"), showlegend=False,
                                 hovertemplate=f"NF of unrelated random rotations, √(2/k), for {_text(', '.join(names))}:"
                                               f" {value:.4g}<extra></extra>", meta={"baseline": True}), row=1, col=1)
    fig.add_trace(go.Scatter(x=span, y=[1.0, 1.0], mode="lines", line=dict(color="#999999", width=1, dash="dot"),
                             showlegend=False, hoverinfo="skip", meta={"baseline": True}), row=2, col=1)
    fig.update_yaxes(title_text="NF", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="scaling", row=2, col=1)
    fig.update_xaxes(title_text="layer", row=2, col=1)
    fig.update_xaxes(**_integer_ticks([layer for s in series for layer in s["layers"]]))
    return _finish(fig, title or "NF and scaling per layer", height)


def _integer_ticks(values: Sequence[int], most: int = 16) -> Dict[str, Any]:
    """Axis settings that put ticks on whole numbers only (layers), at most about `most` of them."""
    span = (max(values) - min(values)) if len(values) else 0
    return {"tick0": 0, "dtick": max(1, math.ceil(span / most))}


def experts_figure(grids: Mapping[str, Mapping[str, Any]], title: str = ""):
    """The layer x expert heatmaps of a MoE comparison: one panel per kind, x = layer, y = expert (routed
    experts by index, then 'shared'), color = NF; hover: layer, kind, expert, NF, scaling mean ± std,
    intruders.

    Args:
        grids: kind -> {"layers": [L], "experts": [E] labels, "nf", "scaling_mean", "scaling_std",
            "intruders": [E, L] each (NaN where the expert was not compared in that layer)}.
    """
    go, make_subplots = _plotly()
    kinds = list(grids)
    heights = [min(max(len(grids[k]["experts"]) * EXPERT_ROW_PX, EXPERT_PANEL_MIN_PX), EXPERT_PANEL_MAX_PX)
               for k in kinds]
    fig = make_subplots(rows=len(kinds), cols=1, subplot_titles=[f"W_{_text(k)}" for k in kinds],
                        row_heights=heights, vertical_spacing=min(0.12, 60.0 / max(sum(heights), 1)))
    top = 0.0
    for row, kind in enumerate(kinds, start=1):
        grid = grids[kind]
        nf = _f32(grid["nf"])
        finite = nf[np.isfinite(nf)]
        top = max(top, float(finite.max()) if finite.size else 0.0)
        custom = np.stack([_f32(grid["scaling_mean"]), _f32(grid["scaling_std"]), _f32(grid["intruders"])], axis=2)
        fig.add_trace(go.Heatmap(
            z=nf, x=[int(layer) for layer in grid["layers"]], y=[str(e) for e in grid["experts"]], customdata=custom,
            coloraxis="coloraxis", meta={"kind": kind},
            hovertemplate=(f"<b>W_{_text(kind)}</b>, layer %{{x}}, expert %{{y}}<br>NF %{{z:.4g}}<br>scaling "
                           "%{customdata[0]:.4f} ± %{customdata[1]:.4f}<br>intruders %{customdata[2]}<extra></extra>")),
            row=row, col=1)
        fig.update_yaxes(type="category", autorange="reversed", nticks=12, title_text="expert", row=row, col=1)
        fig.update_xaxes(title_text="layer" if row == len(kinds) else None, row=row, col=1)
    fig.update_layout(coloraxis=dict(colorscale="Magma", cmin=0.0, cmax=top if top > 0 else 1.0,
                                     colorbar=dict(title="NF", thickness=12)))
    return _finish(fig, title or "NF per (layer, expert)", sum(heights) + 70 * len(kinds) + 60)


def intruders_figure(labels: Sequence[str], layers: Sequence[int], counts, matrices, hit, title: str = ""):
    """Where the intruder dimensions are: one row per series, x = layer, color = intruder dimensions summed
    over the layer's matrices of the series; hover: series, layer, count, in how many of how many matrices.

    Args:
        labels: the series ("gate experts", "q"), [S].
        counts, matrices, hit: [S, L]: intruders summed, matrices compared, matrices with at least one.
    """
    go, _ = _plotly()
    custom = np.stack([_f32(hit), _f32(matrices)], axis=2)
    fig = go.Figure(go.Heatmap(
        z=_f32(counts), x=[int(layer) for layer in layers], y=[f"W_{_text(s)}" for s in labels], customdata=custom,
        colorscale="Reds", zmin=0, colorbar=dict(title="intruders", thickness=12),
        hovertemplate="<b>%{y}</b>, layer %{x}<br>intruders %{z} in %{customdata[0]} of %{customdata[1]} "
                      "matrices<extra></extra>"))
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_xaxes(title_text="layer")
    return _finish(fig, title or "Intruder dimensions per layer", 120 + 26 * len(labels))


def matrices_figure(matrices: Mapping[str, np.ndarray], title: str = "", height: int = 330):
    """Fig. 3a of one pair: sim_U, sim_V, |sim_U − sim_V| and I_orth as heatmaps (the leading block given).

    Args:
        matrices: with keys "sim_u", "sim_v", "difference", "iorth" (square arrays).
    """
    go, make_subplots = _plotly()
    panels = [("sim_u", "sim_U = |U_A^T U_B|", "coloraxis"), ("sim_v", "sim_V = |V_A^T V_B|", "coloraxis"),
              ("difference", "|sim_U − sim_V|", "coloraxis"), ("iorth", "I_orth = Q1^T Q2", "coloraxis2")]
    fig = make_subplots(rows=1, cols=4, subplot_titles=[p[1] for p in panels], horizontal_spacing=0.05)
    for col, (key, label, axis) in enumerate(panels, start=1):
        side = "post j" if key == "iorth" else "base i"
        fig.add_trace(go.Heatmap(z=_f32(matrices[key]), coloraxis=axis, meta={"panel": key},
                                 hovertemplate=f"{label}<br>{side} %{{y}}, post j %{{x}}: %{{z:.3f}}<extra></extra>"),
                      row=1, col=col)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{col if col > 1 else ''}", row=1, col=col)
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=0.0, cmax=1.0,
                                     colorbar=dict(x=0.74, thickness=10, len=0.8)),
                      coloraxis2=dict(colorscale="RdBu", reversescale=True, cmin=-1.0, cmax=1.0,
                                      colorbar=dict(x=1.0, thickness=10, len=0.8)))
    return _finish(fig, title, height, legend=False)


# ---------------------------------------------------------------------- a run, lineage, a construction

def trajectory_figure(steps: Sequence[int], per_kind: Mapping[str, Mapping[str, Sequence[float]]],
                      baseline: Optional[Mapping[str, float]] = None, title: str = "", height: int = 520):
    """Along a training run: the mean NF over the layers (top) and the pooled scaling mean ± std (bottom) per
    kind against the step; hover: step, kind, NF mean and max, scaling mean ± std, intruders.

    Args:
        per_kind: kind -> {"nf_mean", "nf_max", "scaling_mean", "scaling_std", "intruders"}, each [S].
        baseline: kind -> NF of unrelated random rotations, drawn dashed.
    """
    go, make_subplots = _plotly()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=("mean NF over the layers (dashed: unrelated rotations)",
                                        "scaling (top 90 %): mean ± std"))
    x = np.asarray(steps, dtype=np.int64)
    for kind, values in per_kind.items():
        color = KIND_COLORS.get(kind)
        custom = np.stack([_f32(values[key]) for key in ("nf_mean", "nf_max", "scaling_mean", "scaling_std",
                                                         "intruders")], axis=1)
        hover = (f"<b>W_{_text(kind)}</b>, step %{{x}}<br>NF mean %{{customdata[0]:.4g}} (max %{{customdata[1]:.4g}})"
                 "<br>scaling %{customdata[2]:.4f} ± %{customdata[3]:.4f}<br>intruders %{customdata[4]}<extra></extra>")
        meta = {"kind": kind}
        fig.add_trace(go.Scatter(x=x, y=custom[:, 0], mode="lines+markers", name=f"W_{_text(kind)}", legendgroup=kind,
                                 line=dict(color=color), customdata=custom, hovertemplate=hover, meta=meta),
                      row=1, col=1)
        mean, std = custom[:, 2], custom[:, 3]
        for trace, row in _band(go, x, mean - std, mean + std, color, kind, 2):
            fig.add_trace(trace, row=row, col=1)
        fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=f"W_{_text(kind)}", legendgroup=kind,
                                 showlegend=False, line=dict(color=color), customdata=custom, hovertemplate=hover,
                                 meta=meta), row=2, col=1)
    for value in sorted({round(float(v), 12) for v in (baseline or {}).values()}):
        fig.add_hline(y=value, line=dict(color="#777777", width=1, dash="dash"), row=1, col=1)
    fig.add_hline(y=1.0, line=dict(color="#999999", width=1, dash="dot"), row=2, col=1)
    fig.update_yaxes(title_text="NF", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="scaling", row=2, col=1)
    fig.update_xaxes(title_text="step", row=2, col=1)
    return _finish(fig, title or "Along the run", height)


def steps_heatmap(steps: Sequence[int], nf: Mapping[str, np.ndarray], layers: Mapping[str, Sequence[int]],
                  title: str = "", max_cols: int = 4):
    """Per-layer NF over the steps: one heatmap per series (x = step, y = layer), one color scale; hover:
    series, layer, step, NF.

    Args:
        nf: series label -> [layers, S] NF.
        layers: series label -> the layers of the rows.
    """
    go, make_subplots = _plotly()
    labels = list(nf)
    cols = min(len(labels), max_cols)
    rows = math.ceil(len(labels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"W_{_text(s)}" for s in labels],
                        horizontal_spacing=0.06, vertical_spacing=min(0.15, 0.5 / rows))
    top = max((float(np.nanmax(v)) for v in nf.values() if np.size(v)), default=1.0)
    steps_text = [str(s) for s in steps]
    for position, label in enumerate(labels):
        fig.add_trace(go.Heatmap(z=_f32(nf[label]), x=steps_text, y=[int(layer) for layer in layers[label]],
                                 coloraxis="coloraxis", meta={"label": label},
                                 hovertemplate=f"<b>W_{_text(label)}</b>, layer %{{y}}, step %{{x}}<br>NF %{{z:.4g}}"
                                               "<extra></extra>"),
                      row=position // cols + 1, col=position % cols + 1)
    fig.update_xaxes(type="category")
    fig.update_layout(coloraxis=dict(colorscale="Magma", cmin=0.0, cmax=top or 1.0,
                                     colorbar=dict(title="NF", thickness=12)))
    return _finish(fig, title or "NF per layer along the run", 120 + 230 * rows, legend=False)


def lineage_figure(table, level: float, title: str = ""):
    """postsvd lineage per layer: −log10 p of the MLP unit test and of the attention head test (bars), the
    level (dashed); hover: layer, block, agreeing matchings out of units, null rate, p-value, similarity.

    Args:
        table: :attr:`postsvd.Lineage.table` (columns layer, block, units, statistic, null_rate, p_value,
            log_p, similarity).
    """
    go, _ = _plotly()
    fig = go.Figure()
    colors = {"mlp": "#9467bd", "attention": "#17becf"}
    for block, part in table.groupby("block", sort=False):
        strength = -np.asarray(part["log_p"], dtype=float) / math.log(10.0)
        custom = np.stack([_f32(part["statistic"]), _f32(part["units"]), _f32(part["null_rate"]),
                           _f32(part["p_value"]), _f32(part["similarity"])], axis=1)
        fig.add_trace(go.Bar(x=np.asarray(part["layer"], dtype=int), y=_f32(strength), name=str(block),
                             marker_color=colors.get(block), customdata=custom, meta={"block": block},
                             hovertemplate=f"<b>layer %{{x}}, {_text(block)}</b><br>agreeing %{{customdata[0]}} of "
                                           "%{customdata[1]} (null rate %{customdata[2]:.2f})<br>p-value "
                                           "%{customdata[3]:.3g} (−log10 p %{y:.3g})<br>similarity "
                                           "%{customdata[4]:.3f}<extra></extra>"))
    fig.add_hline(y=-math.log10(level), line=dict(color="#555555", width=1, dash="dash"),
                  annotation_text=f"level {level:g}", annotation_position="top left", annotation_font_size=10)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="−log10 p")
    return _finish(fig, title or "Lineage test per layer (bars above the dashed line: significant)", 420)


def rotations_figure(per_layer: Mapping[str, Any], title: str = ""):
    """A construction's Eq. 13 residual rotations per layer: the mean angle of dQ1 (solid) and dQ2 (dashed)
    per kind; hover: layer, kind, mean and max angles, the relative change of the weights.

    Args:
        per_layer: kind -> a table indexed by layer with columns dq1_mean_deg, dq1_max_deg, dq2_mean_deg,
            dq2_max_deg, relative_change (means over the layer's matrices).
    """
    go, _ = _plotly()
    fig = go.Figure()
    for kind, part in per_layer.items():
        color = KIND_COLORS.get(kind)
        custom = np.stack([_f32(part[c]) for c in ("dq1_mean_deg", "dq1_max_deg", "dq2_mean_deg", "dq2_max_deg",
                                                   "relative_change")], axis=1)
        hover = (f"<b>W_{_text(kind)}</b>, layer %{{x}}<br>dQ1 %{{customdata[0]:.3g}}° (max %{{customdata[1]:.3g}}°)"
                 "<br>dQ2 %{customdata[2]:.3g}° (max %{customdata[3]:.3g}°)<br>relative change "
                 "%{customdata[4]:.3g}<extra></extra>")
        x = np.asarray(part.index, dtype=int)
        fig.add_trace(go.Scatter(x=x, y=custom[:, 0], mode="lines+markers", name=f"W_{_text(kind)} dQ1",
                                 legendgroup=kind, line=dict(color=color), customdata=custom, hovertemplate=hover,
                                 meta={"kind": kind}))
        fig.add_trace(go.Scatter(x=x, y=custom[:, 2], mode="lines+markers", name=f"W_{_text(kind)} dQ2",
                                 legendgroup=kind, line=dict(color=color, dash="dash"), customdata=custom,
                                 hovertemplate=hover, meta={"kind": kind}))
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="residual angle (degrees)", rangemode="tozero")
    return _finish(fig, title or "Eq. 13 residual rotations per layer", 380)


def _finish(fig, title: str, height: int, legend: bool = True):
    fig.update_layout(template=_TEMPLATE, title=dict(text=_text(title), font=dict(size=15)), height=int(height),
                      hovermode="closest", margin=dict(l=60, r=30, t=60, b=45), showlegend=legend,
                      legend=dict(font=dict(size=11), groupclick="togglegroup"), font=dict(size=12))
    fig.update_annotations(font_size=12)
    return fig


# ---------------------------------------------------------------------- embedding

#: The runtime of a page or notebook output: ``postsvd.draw(id, figure)`` draws a figure when plotly.js is
#: there (queued until then), counts what it drew (``window.postsvdDrawn``, the time in ``postsvdDrawnAt``);
#: ``postsvd.pick(figureId, viewId, heldId, command)`` makes a click on a (layer, kind[, expert]) point open
#: that pair's matrices where the page holds them (``heldId``: a JSON script of key -> figure) and say
#: otherwise which command makes them.
RUNTIME_JS = r"""
(function () {
  if (window.postsvd) { return; }
  var queue = [], polls = 0, timer = null;
  function drawNow(item) {
    var div = document.getElementById(item.id);
    if (!div) { return; }
    div.innerHTML = "";
    var config = Object.assign({}, item.figure.config || {}, %CONFIG%);
    Plotly.newPlot(div, item.figure.data, item.figure.layout, config).then(function () {
      window.postsvdDrawn = (window.postsvdDrawn || 0) + 1;
      window.postsvdDrawnAt = performance.now();
      div.setAttribute("data-drawn", "1");
      (item.then || []).forEach(function (f) { f(div); });
    });
  }
  function flush() {
    if (!window.Plotly) { return false; }
    while (queue.length) { drawNow(queue.shift()); }
    return true;
  }
  function poll() {
    if (flush()) { return; }
    polls += 1;
    if (polls < 300) { timer = setTimeout(poll, 100); return; }
    queue.forEach(function (item) {
      var div = document.getElementById(item.id);
      if (div) { div.setAttribute("data-missing-plotly", "1"); }
    });
  }
  function keyOf(point) {
    var meta = point.data.meta || {};
    var layer = meta.panel === undefined ? point.x : null;
    var expert = meta.expert !== undefined ? meta.expert : String(point.y);
    return {layer: layer, kind: meta.kind, expert: expert, label: meta.label};
  }
  window.postsvd = {
    draw: function (id, figure, then) {
      queue.push({id: id, figure: figure, then: then ? [then] : []});
      if (!flush() && timer === null) { timer = setTimeout(poll, 100); }
    },
    ready: flush,
    pick: function (figureId, viewId, heldId, command) {
      return function (div) {
        div.on("plotly_click", function (event) {
          var held = JSON.parse(document.getElementById(heldId).textContent);
          var point = event.points[0], pick = keyOf(point), view = document.getElementById(viewId);
          if (pick.kind === undefined) { return; }
          var caption = view.querySelector(".view-caption"), plot = view.querySelector(".view-plot");
          var where = "W_" + pick.kind + ", layer " + pick.layer;
          if (pick.expert === "pooled") {
            caption.textContent = where + ": the mean over the layer's routed experts; pick one expert in the " +
              "heatmap of experts below for its matrices.";
            Plotly.purge(plot); plot.innerHTML = ""; return;
          }
          var key = pick.layer + ":" + pick.kind + (pick.expert ? ":" + pick.expert : "");
          if (pick.expert) { where += ", expert " + pick.expert; }
          if (held[key]) {
            caption.textContent = held[key].caption;
            Plotly.react(plot, held[key].figure.data, held[key].figure.layout, %CONFIG%);
          } else {
            Plotly.purge(plot); plot.innerHTML = "";
            caption.textContent = where + ": this page does not hold its matrices; " +
              command.replace(/PAIR/g, key) + " draws them (postsvd report takes the same --matrices and " +
              "holds them in its page).";
          }
          view.setAttribute("data-key", key);
        });
      };
    }
  };
})();
""".replace("%CONFIG%", json.dumps(CONFIG))


def _script(code: str) -> str:
    return f"<script>{code}</script>"


def plotly_js() -> str:
    """plotly.js, as a script tag's content (about 5 MB; no request to anywhere)."""
    return require("plotly.offline", FEATURE).get_plotlyjs()


def page_scripts() -> str:
    """The end of a page's <body>: plotly.js once, then the queued figures drawn."""
    return (_script("window.PlotlyConfig = {MathJaxConfig: 'local'};") + _script(plotly_js())
            + _script("window.postsvd.ready();"))


def runtime_script() -> str:
    """The runtime (:data:`RUNTIME_JS`), for a page's <head> (before any figure)."""
    return _script(RUNTIME_JS)


def figure_json(fig) -> str:
    """A figure as JSON (numpy arrays as typed arrays; '/' escaped, so it can stand inside a <script>)."""
    text = require("plotly.io", FEATURE).to_json(fig, validate=False, remove_uids=True)
    return text.replace("</", "<\\/")


def figure_html(fig, figure_id: str, caption: str, then: str = "") -> str:
    """One figure of a page: a <figure> with its caption, drawn by the runtime once plotly.js is there.

    Args:
        then: JavaScript (a function of the drawn div) run after drawing, e.g. ``postsvd.pick(...)``.
    """
    div_id = f"iplot-{figure_id}"
    escaped = html.escape(caption, quote=True)
    return (f'<figure id="fig-{html.escape(figure_id, quote=True)}"><div class="iplot" id="{div_id}" '
            f'aria-label="{escaped}"><p class="note">Interactive figure: it draws when the page\'s script runs '
            f"(scripts enabled).</p></div><figcaption>{escaped}</figcaption></figure>"
            + _script(f'postsvd.draw("{div_id}", {figure_json(fig)}{", " + then if then else ""});'))


def json_script(element_id: str, value: Any) -> str:
    """Data for the runtime: a <script type="application/json"> holding `value` (figures kept as JSON)."""
    return (f'<script type="application/json" id="{html.escape(element_id, quote=True)}">'
            + json.dumps(value, separators=(",", ":")).replace("</", "<\\/") + "</script>")


_notebook_has_plotly = False


def notebook_html(fig, caption: str = "") -> str:
    """One figure inside a notebook output: the runtime, plotly.js in the first output of the process
    (later outputs draw with it), and the figure."""
    global _notebook_has_plotly
    parts = [runtime_script()]
    if not _notebook_has_plotly:
        parts.append(page_scripts())
        _notebook_has_plotly = True
    parts.append(figure_html(fig, uuid.uuid4().hex[:12], caption))
    parts.append(_script("window.postsvd.ready();"))
    return "".join(parts)
