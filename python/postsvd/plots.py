"""The paper's figures as matplotlib Figures (no pyplot state and no backend switch: safe headless
and in notebooks, where a returned Figure shows itself).

The single-comparison figures take plain arrays, so they also serve results that
did not come from :func:`postsvd.compare`; :func:`plot_nf_models` takes
:class:`~postsvd.Comparison` objects.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ._style import KIND_COLORS
from ._validate import normalize_kinds
from .errors import InvalidArgumentError
from .readings import random_rotation_nf

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .comparison import Comparison


#: Narrowest color range of the SVSM heatmaps.
MIN_SVSM_SPAN = 0.2


def _series_style(label: str, series: Mapping) -> tuple:
    """(color, line style) of a series: its kind's color; solid for a kind's dense matrices and pooled
    experts, dotted for a shared expert, dash-dot for one routed expert."""
    kind = series.get("kind", label)
    rest = label[len(kind):].strip()
    style = "-" if rest in ("", "experts") else (":" if rest == "shared" else "-.")
    return KIND_COLORS.get(kind), style


def _legend(ax, count: int, loc: str = "best") -> None:
    """The legend inside the axes, or beside them where the series are many (MoE: a kind's dense,
    pooled, shared and chosen experts' lines)."""
    if count > 8:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:
        ax.legend(ncol=min(count, 4), fontsize="small", loc=loc)


def _grid(count: int, max_cols: int = 4):
    cols = min(count, max_cols)
    rows = math.ceil(count / cols)
    return rows, cols


def plot_svsm(svsm: Mapping[str, np.ndarray], layers: Mapping[str, Sequence[int]], title: str = "") -> Figure:
    """Fig. 2: one SVSM heatmap per kind; x = layer, y = singular value index
    (0 = largest at the top), color = sigma_post / sigma_base.

    Args:
        svsm: kind -> array ``[k, layers]``.
        layers: kind -> the layer index of each column.
    """
    kinds = list(svsm)
    rows, cols = _grid(len(kinds))
    fig = Figure(figsize=(3.2 * cols + 1.0, 3.0 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    values = np.concatenate([np.asarray(svsm[k]).ravel() for k in kinds]) if kinds else np.ones(1)
    values = values[np.isfinite(values)]
    # Shared, robust color range so kinds compare; the tail's outliers saturate. At least
    # MIN_SVSM_SPAN wide, so near-uniform scaling reads as one color, not as magnified noise.
    low, high = (np.percentile(values, [1, 99]) if values.size else (0.0, 2.0))
    if high - low < MIN_SVSM_SPAN:
        center = float(np.median(values)) if values.size else 1.0
        low, high = center - MIN_SVSM_SPAN / 2, center + MIN_SVSM_SPAN / 2
    image = None
    for ax, kind in zip(axes, kinds):
        matrix = np.asarray(svsm[kind])
        kind_layers = list(layers[kind])
        image = ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap="viridis", vmin=low, vmax=high,
                          extent=(-0.5, len(kind_layers) - 0.5, matrix.shape[0] - 0.5, -0.5))
        ax.set_title(f"W_{kind}  (k = {matrix.shape[0]})")
        ax.set_xlabel("layer")
        ax.set_ylabel("singular value index")
        _layer_ticks(ax, kind_layers)
    return _finish_heatmaps(fig, axes, len(kinds), image, "scaling  σ_post / σ_base",
                            title or "Singular value scaling matrices (SVSM)")


def _finish_heatmaps(fig, axes, used: int, image, label: str, title: str) -> Figure:
    """Hides the unused axes of a heatmap grid, adds one shared colorbar and the title."""
    for ax in axes[used:]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes[:used].tolist(), label=label, shrink=0.9)
    fig.suptitle(title)
    return fig


def _layer_ticks(ax, layer_list: Sequence[int]) -> None:
    count = len(layer_list)
    step = max(1, math.ceil(count / 8))
    positions = list(range(0, count, step))
    ax.set_xticks(positions)
    ax.set_xticklabels([str(layer_list[p]) for p in positions])


def plot_scaling_bands(per_layer: Mapping[str, Dict[str, np.ndarray]], title: str = "") -> Figure:
    """Fig. 8: per-layer mean (line) and ± std (band) of the top-90 % scaling
    factors, one color per kind.

    Args:
        per_layer: series label (a kind, or "gate experts" and the like) -> {"layers": [L],
            "mean": [L], "std": [L]}, and "kind" where the label is not a kind.
    """
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for label, series in per_layer.items():
        x = np.asarray(series["layers"])
        mean = np.asarray(series["mean"])
        std = np.asarray(series["std"])
        color, style = _series_style(label, series)
        ax.plot(x, mean, marker="o", markersize=3, color=color, linestyle=style, label=f"W_{label}")
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("scaling factor (top 90 %)  mean ± std")
    _legend(ax, len(per_layer))
    ax.set_title(title or "Singular value scaling per layer")
    return fig


def plot_nf(per_layer: Mapping[str, Dict[str, np.ndarray]], baseline: Optional[Mapping[str, float]] = None,
            title: str = "") -> Figure:
    """Fig. 3b: NF = ||Q1^T Q2 - I||_F / k per layer, one line per kind.

    Args:
        per_layer: series label (a kind, or "gate experts" and the like) -> {"layers": [L], "nf": [L]},
            with "kind" where the label is not a kind, and optionally "low" and "high" ([L]: a band,
            e.g. the smallest and largest NF of a layer's experts).
        baseline: series label -> NF of unrelated random rotations (sqrt(2/k)), drawn dashed.
    """
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for label, series in per_layer.items():
        color, style = _series_style(label, series)
        ax.plot(series["layers"], series["nf"], marker="o", markersize=3, color=color, linestyle=style,
                label=f"W_{label}")
        if "low" in series:
            ax.fill_between(series["layers"], series["low"], series["high"], color=color, alpha=0.15, linewidth=0)
    # One dashed line per distinct baseline value, naming the kinds it belongs to.
    by_value: Dict[float, list] = {}
    for label, value in (baseline or {}).items():
        kind = per_layer[label].get("kind", label) if label in per_layer else label
        names = by_value.setdefault(round(float(value), 12), [])
        if kind not in names:
            names.append(kind)
    for value, kinds in by_value.items():
        ax.axhline(value, color="0.45", linewidth=0.9, linestyle="--")
        ax.annotate(f"unrelated ({', '.join(kinds)})", (0.01, value), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 2), fontsize="x-small", color="0.35")
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("NF = ||I_orth − I||_F / k")
    ax.set_ylim(bottom=0)
    _legend(ax, len(per_layer), loc="center right")
    ax.set_title(title or "Orthogonal consistency (NF; dashed: unrelated rotations)")
    return fig


def plot_intruders(curve: "pd.DataFrame", epsilon: Optional[float] = None, title: str = "",
                   setting: str = "") -> Figure:
    """Intruder dimensions against the |cosine| threshold epsilon, the form of Shuttleworth et al. 2024's
    figures: one step line per kind (its matrices' counts summed) and a black one for all kinds.

    Args:
        curve: index epsilon, a column per kind and optionally ``all`` (:meth:`Comparison.intruder_curve`).
        epsilon: the threshold the tables use, marked by a dotted vertical line.
        setting: what was counted, in words (shown under the title).
    """
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    epsilons = np.asarray(curve.index, dtype=float)
    kinds = [c for c in curve.columns if c != "all"]
    for kind in kinds:
        ax.step(epsilons, curve[kind], where="post", color=KIND_COLORS.get(kind), label=f"W_{kind}")
    if "all" in curve.columns and len(kinds) > 1:
        ax.step(epsilons, curve["all"], where="post", color="black", linewidth=1.6, label="all kinds")
    if epsilon is not None:
        ax.axvline(epsilon, color="0.45", linewidth=0.9, linestyle=":")
        ax.annotate(f"ε = {epsilon:g}", (epsilon, 0.0), xycoords=("data", "axes fraction"), textcoords="offset points",
                    xytext=(3, 3), fontsize="x-small", color="0.35")
    ax.set_xlim(epsilons.min() if epsilons.size else 0.0, epsilons.max() if epsilons.size else 1.0)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("ε: largest |cosine| with every base singular vector below this")
    ax.set_ylabel("intruder dimensions (summed over matrices)")
    _legend(ax, len(kinds) + 1, loc="center right")
    ax.set_title((title or "Intruder dimensions") + (f"\n{setting}" if setting else ""), fontsize="medium")
    return fig


def plot_matrices(matrices: Mapping[str, np.ndarray], title: str = "") -> Figure:
    """Fig. 3a: sim_U, sim_V, their difference and I_orth as heatmaps.

    Args:
        matrices: with keys "sim_u", "sim_v", "difference", "iorth" (square arrays).
    """
    panels = [("sim_u", "sim_U = |U_A^T U_B|", "viridis", 0.0, 1.0),
              ("sim_v", "sim_V = |V_A^T V_B|", "viridis", 0.0, 1.0),
              ("difference", "|sim_U − sim_V|", "viridis", 0.0, 1.0),
              ("iorth", "I_orth = Q1^T Q2", "RdBu_r", -1.0, 1.0)]
    fig = Figure(figsize=(15, 3.9), layout="constrained")
    axes = fig.subplots(1, 4)
    for ax, (key, label, cmap, vmin, vmax) in zip(axes, panels):
        matrix = np.asarray(matrices[key])
        image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(label)
        if key == "iorth":
            ax.set_xlabel("post index j")
            ax.set_ylabel("post index i")
        else:
            ax.set_xlabel("post index j")
            ax.set_ylabel("base index i")
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def plot_expert_nf(grids, title: str = "") -> Figure:
    """NF per (layer, expert) of MoE kinds: one heatmap per kind, x = layer, y = expert.

    Args:
        grids: kind -> DataFrame [experts, layers] of NF (index: expert labels, columns: layers).
    """
    kinds = list(grids)
    rows, cols = _grid(len(kinds))
    fig = Figure(figsize=(3.2 * cols + 1.0, 3.0 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    values = np.concatenate([grids[k].to_numpy(dtype=float).ravel() for k in kinds])
    values = values[np.isfinite(values)]
    high = float(values.max()) if values.size else 1.0
    image = None
    for ax, kind in zip(axes, kinds):
        grid = grids[kind]
        image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", interpolation="nearest", cmap="magma",
                          vmin=0.0, vmax=high if high > 0 else 1.0)
        ax.set_title(f"W_{kind}")
        ax.set_xlabel("layer")
        ax.set_ylabel("expert")
        _layer_ticks(ax, list(grid.columns))
        step = max(1, math.ceil(len(grid.index) / 16))
        ax.set_yticks(list(range(0, len(grid.index), step)))
        ax.set_yticklabels([str(grid.index[p]) for p in range(0, len(grid.index), step)])
    return _finish_heatmaps(fig, axes, len(kinds), image, "NF", title or "NF per (layer, expert)")


def plot_nf_models(comparisons: Mapping[str, "Comparison"], kinds=None) -> Figure:
    """Fig. 9: NF per layer of several post models against one base, one panel
    per kind, one line per post model (dashed: unrelated rotations, sqrt(2/k)).

    Args:
        comparisons: name -> :class:`~postsvd.Comparison` (same base and kinds).
        kinds: kinds to draw (default: those every comparison has).
    """
    if not comparisons:
        raise InvalidArgumentError("comparisons: expected at least one name -> Comparison")
    items = list(comparisons.items())
    common = [k for k in items[0][1].kinds if all(k in c.kinds for _, c in items)]
    chosen = common if kinds is None else normalize_kinds(kinds)
    missing = [k for k in chosen if k not in common]
    if missing or not chosen:
        raise InvalidArgumentError(f"kinds: every comparison must have them; common kinds are {common}, "
                                   f"got {chosen}")
    rows, cols = _grid(len(chosen))
    fig = Figure(figsize=(3.4 * cols + 0.6, 2.8 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, kind in zip(axes, chosen):
        k_value = None
        for position, (name, comparison) in enumerate(items):
            series = comparison.series(kind)[0]  # the kind's dense matrices, else its pooled experts
            ax.plot(comparison.layers_of(kind, series.expert), comparison.nf(kind, series.expert), marker="o",
                    markersize=3, color=f"C{position % 10}", label=name)
            k_value = comparison.records_of(kind, series.expert)[0]["k"]
        ax.axhline(random_rotation_nf(int(k_value)), color="0.45", linestyle="--", linewidth=0.9)
        ax.set_title(f"W_{kind}")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    for row in range(rows):
        axes[row * cols].set_ylabel("NF")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(items), 5), fontsize="small")
    fig.suptitle(f"NF per layer against {items[0][1].base_name} (dashed: unrelated rotations)")
    return fig


def plot_rotations(per_layer: Mapping[str, "pd.DataFrame"], title: str = "") -> Figure:
    """Eq. 13 per layer: mean (solid) and max (dashed) residual angles of dQ1 and dQ2, one panel per kind.

    Args:
        per_layer: kind -> a table indexed by layer with columns dq1_mean_deg,
            dq1_max_deg, dq2_mean_deg, dq2_max_deg (degrees).
    """
    kinds = list(per_layer)
    fig = Figure(figsize=(3.2 * len(kinds), 3.0), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True)[0]
    for ax, kind in zip(axes, kinds):
        part = per_layer[kind]
        ax.plot(part.index, part["dq1_mean_deg"], "-o", ms=3, color="C0", label="dQ1 mean")
        ax.plot(part.index, part["dq1_max_deg"], "--", color="C0", label="dQ1 max")
        ax.plot(part.index, part["dq2_mean_deg"], "-s", ms=3, color="C1", label="dQ2 mean")
        ax.plot(part.index, part["dq2_max_deg"], "--", color="C1", label="dQ2 max")
        ax.set_title(f"W_{kind}")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("residual angle (degrees)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title or "Eq. 13 residual rotations", fontsize=10)
    return fig


# ---------------------------------------------------------------------- trajectories (postsvd.track)

def plot_trajectory_nf(steps: Sequence[int], nf_mean: Mapping[str, Sequence[float]],
                       baseline: Optional[Mapping[str, float]] = None, title: str = "") -> Figure:
    """Mean NF over the layers against the training step, one line per kind.

    Args:
        steps: the checkpoints' steps [S].
        nf_mean: kind -> [S] mean NF of that kind at each step.
        baseline: kind -> NF of unrelated random rotations (sqrt(2/k)), drawn dashed.
    """
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for kind, values in nf_mean.items():
        ax.plot(steps, values, marker="o", markersize=3, color=KIND_COLORS.get(kind), label=f"W_{kind}")
    for value in sorted({round(float(v), 12) for v in (baseline or {}).values()}):
        ax.axhline(value, color="0.45", linewidth=0.9, linestyle="--")
    ax.set_xlabel("step")
    ax.set_ylabel("NF mean over layers")
    ax.set_ylim(bottom=0)
    ax.legend(ncol=min(len(nf_mean), 4), fontsize="small")
    ax.set_title(title or "Orthogonal consistency along training (NF; dashed: unrelated rotations)")
    return fig


def plot_trajectory_scaling(steps: Sequence[int], scaling: Mapping[str, Dict[str, Sequence[float]]],
                            title: str = "") -> Figure:
    """Pooled top-90 % scaling mean (line) ± std (band) against the training step, one color per kind.

    Args:
        steps: the checkpoints' steps [S].
        scaling: kind -> {"mean": [S], "std": [S]}.
    """
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.asarray(steps)
    for kind, series in scaling.items():
        mean, std = np.asarray(series["mean"]), np.asarray(series["std"])
        color = KIND_COLORS.get(kind)
        ax.plot(x, mean, marker="o", markersize=3, color=color, label=f"W_{kind}")
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle=":")
    ax.set_xlabel("step")
    ax.set_ylabel("scaling factor (top 90 %)  mean ± std")
    ax.legend(ncol=min(len(scaling), 4), fontsize="small")
    ax.set_title(title or "Singular value scaling along training")
    return fig


def plot_nf_heatmap(steps: Sequence[int], nf: Mapping[str, np.ndarray], layers: Mapping[str, Sequence[int]],
                    title: str = "") -> Figure:
    """Per-layer NF over the steps: one heatmap per kind (x = step, y = layer), one color scale.

    Args:
        steps: the checkpoints' steps [S].
        nf: kind -> [layers, S] NF.
        layers: kind -> the layers of the rows.
    """
    rows, cols = _grid(len(nf))
    fig = Figure(figsize=(3.4 * cols + 1.2, 2.8 * rows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    top = max(float(np.max(values)) for values in nf.values()) or 1.0
    image = None
    for ax, (kind, values) in zip(axes, nf.items()):
        image = ax.imshow(values, aspect="auto", origin="lower", cmap="magma", vmin=0.0, vmax=top,
                          interpolation="nearest")
        ax.set_title(f"W_{kind}")
        ax.set_xticks(range(len(steps)))
        ax.set_xticklabels([str(s) for s in steps], rotation=90 if len(steps) > 6 else 0, fontsize="x-small")
        ax.set_yticks(range(len(layers[kind])))
        ax.set_yticklabels([str(layer) for layer in layers[kind]], fontsize="x-small")
        ax.set_xlabel("step")
        ax.set_ylabel("layer")
    return _finish_heatmaps(fig, axes, len(nf), image, "NF", title or "NF per layer along training")


def plot_lineage(table: "pd.DataFrame", level: float, title: str = "") -> Figure:
    """postsvd lineage, per layer: -log10 p of the MLP unit test (bars) against -log10 level (dashed), and the
    share of units whose gate and up matchings agree (line; independent models: about null_rate / units)."""
    mlp = table[table["block"] == "mlp"]
    fig = Figure(figsize=(7.5, 3.8), layout="constrained")
    ax = fig.subplots()
    strength = -np.asarray(mlp["log_p"], dtype=float) / math.log(10.0)
    ax.bar(mlp["layer"], strength, color="tab:purple", alpha=0.7, label="−log10 p (MLP units)")
    ax.axhline(-math.log10(level), color="0.35", linestyle="--", linewidth=0.9)
    ax.annotate(f"level {level:g}", (0.01, -math.log10(level)), xycoords=("axes fraction", "data"),
                textcoords="offset points", xytext=(0, 2), fontsize="x-small", color="0.35")
    ax.set_yscale("symlog", linthresh=10.0)
    ax.set_ylim(0, max(float(np.max(strength, initial=0.0)), -math.log10(level)) * 1.3)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("−log10 p")
    share = ax.twinx()
    share.plot(mlp["layer"], np.asarray(mlp["statistic"], dtype=float) / np.asarray(mlp["units"], dtype=float),
               color="black", marker="o", markersize=3, label="agreeing units (share)")
    share.set_ylim(0, 1.05)
    share.set_ylabel("share of units whose two matchings agree")
    ax.set_title(title or "Lineage test per layer (bars above the dashed line: significant)")
    return fig
