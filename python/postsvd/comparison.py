"""The result of comparing two checkpoints: :class:`Comparison` (made by :func:`postsvd.compare`).

A comparison holds O(k) measures per compared matrix pair (the records of
:mod:`postsvd._engine`) and builds everything from them: tables (pandas), spectra (numpy),
figures (matplotlib, through :mod:`postsvd.plots`), the text summary (worded by
:mod:`postsvd.readings`) and the files of :meth:`Comparison.save`, declared once in
:data:`COMPARISON_FILES`.

Series. The figures and spectra of a kind are drawn per *series*: its dense matrices (one
per layer; ``expert=None``), and in MoE models its routed experts pooled per layer
(``expert='pooled'``: the mean over the layer's experts, with their spread), its shared
expert (``'shared'``) and any routed expert asked for by index.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from . import _core, _display, _html, adapters, hub
from ._outputs import FileSet, atomic_folder
from ._terminal import printable
from ._validate import (
    KINDS,
    SHARED_EXPERT,
    KindsArg,
    expert_index,
    expert_label,
    normalize_kinds,
    normalize_intruders,
    normalize_layers,
    normalize_leading_k,
    normalize_matrix_pairs,
    normalize_output_folder,
)
from ._version import __version__
from .errors import InvalidArgumentError
from .readings import intruder_reading, intruder_setting, kind_reading, overall_reading, random_rotation_nf

PathLike = Union[str, "os.PathLike[str]"]
ExpertArg = Union[None, int, str]

#: The version of the files :meth:`Comparison.save` writes (run.json's ``schema_version``; CHANGELOG.md).
OUTPUT_SCHEMA_VERSION = 3
#: The pooled series of a kind's routed experts (``expert='pooled'``).
POOLED = "pooled"

_EXPERT_FIELD = rf"\d+|{SHARED_EXPERT}"
#: Every entry :meth:`Comparison.save` may write (docs/outputs.md lists them).
COMPARISON_FILES = FileSet(
    "a comparison", [
        "table.csv", "table.json", "kinds.csv", "kinds.json", "spectra.npz", "summary.txt", "run.json",
        "svsm.png", "scaling_bands.png", "nf.png", "nf_experts.png", "intruders.png",
        "matrices_layer{layer}_{kind}.png", "matrices_layer{layer}_{kind}_expert{expert}.png",
    ],
    fields={"layer": r"\d+", "kind": "|".join(sorted(KINDS, key=len, reverse=True)), "expert": _EXPERT_FIELD})
#: Resolution of the saved figures.
SAVED_DPI = 110
#: The epsilons of the intruder curves (:meth:`Comparison.intruder_curve`, intruders.png).
INTRUDER_EPSILONS = np.linspace(0.0, 1.0, 101)

MatrixPair = Tuple[int, str, ExpertArg]


@dataclass(frozen=True)
class Series:
    """One line (or heatmap) of a kind in the figures: its dense matrices (expert None), its routed
    experts pooled per layer ('pooled'), its shared expert ('shared') or one routed expert (an index)."""
    kind: str
    expert: ExpertArg = None

    @property
    def label(self) -> str:
        """"gate", "gate experts", "gate shared", "gate expert 17"."""
        if self.expert is None:
            return self.kind
        if self.expert == POOLED:
            return f"{self.kind} experts"
        if self.expert == SHARED_EXPERT:
            return f"{self.kind} shared"
        return f"{self.kind} expert {self.expert}"

    @property
    def key(self) -> str:
        """The suffix of its arrays in spectra.npz: "gate", "gate_experts", "gate_expert_shared", "gate_expert_17"."""
        if self.expert is None:
            return self.kind
        if self.expert == POOLED:
            return f"{self.kind}_experts"
        return f"{self.kind}_expert_{self.expert}"


class Comparison:
    """The measures of every compared (layer, kind[, expert]) pair of two checkpoints.

    Made by :func:`postsvd.compare`. Tables are pandas DataFrames, spectra numpy arrays, plots
    matplotlib Figures. :meth:`matrices` recomputes one pair with its full similarity matrices
    (the factors are never kept).

    Attributes:
        base, post: the two folders the core read (a Hub model's: its folder in postsvd's cache).
        base_model, post_model: the two models as named (:class:`postsvd.hub.ResolvedModel`: the
            name as written; for a Hub model its repo id, revision and the commit read).
        base_name, post_name: how tables and summaries name them (a folder's last component, a Hub
            model as written).
        model_type: config.json's model_type.
        num_layers: layers of the model (not only the compared ones).
        layers: the compared layers.
        kinds: the compared kinds, in the paper's order.
        device, dtype: where and in which precision it ran.
        backend: the backend's description.
        elapsed_seconds: time spent comparing.
        factor_cache: the factor cache folder, or None.
        intruder_k, intruder_epsilon, intruder_side: the intruder count's settings (see
            :func:`postsvd.compare`): the top k post singular vectors examined, the |cosine|
            threshold and the side ('output' or 'input').
        adapter: with a PEFT adapter as the post model, what it applies (run.json's ``adapter``); else None.
    """

    def __init__(self, comparator: "_core.Comparator", records: List[Dict[str, Any]], layers: Sequence[int],
                 kinds: Sequence[str], elapsed_seconds: float = 0.0, *, device: Optional[str] = None,
                 decompositions: Optional[Dict[str, int]] = None,
                 models: Optional[Tuple[hub.ResolvedModel, hub.ResolvedModel]] = None):
        self._comparator = comparator
        self._records = records
        arch = comparator.architecture
        self.base: str = comparator.base.folder
        self.post: str = comparator.post.folder
        self.base_model, self.post_model = models or (hub.resolve(self.base, "base"), hub.resolve(self.post, "post"))
        self.base_name: str = self.base_model.label
        self.post_name: str = self.post_model.label
        self.model_type: str = arch["model_type"]
        self.num_layers: int = arch["num_layers"]
        self.layers: List[int] = list(layers)
        self.kinds: List[str] = list(kinds)
        self.device: str = device or comparator.device  # on Ray: where the tasks ran
        self.dtype: str = comparator.precision
        self.backend: str = comparator.backend_name
        self.elapsed_seconds: float = elapsed_seconds
        self.factor_cache: Optional[str] = comparator.factor_cache or None
        intruders = comparator.intruder_options
        self.intruder_k: int = intruders["k"]
        self.intruder_epsilon: float = intruders["epsilon"]
        self.intruder_side: str = intruders["side"]
        self._has_experts = any(r["expert"] != -1 for r in records)
        self._task_decompositions = decompositions  # on Ray: the tasks' cache counts, summed
        self.adapter: Optional[Dict[str, Any]] = adapters.record(comparator.post)

    # ------------------------------------------------------------------ data

    @property
    def has_experts(self) -> bool:
        """True when some compared pair is a MoE expert (routed or shared)."""
        return self._has_experts

    @property
    def decompositions(self) -> Dict[str, int]:
        """With a factor cache: how many decompositions were computed and how many
        loaded so far ({'computed': n, 'loaded': m}); both 0 without one."""
        counts = dict(self._comparator.cache_counts)
        for key, value in (self._task_decompositions or {}).items():
            counts[key] = counts.get(key, 0) + value
        return counts

    @property
    def records(self) -> List[Dict[str, Any]]:
        """One dict per pair: layer, kind, expert, tensor, rows, cols, k,
        sigma_base, sigma_post, scaling, scaling_mean, scaling_std, nf, iorth_diag, intruders and
        intruder_cosines (for each of the top min(intruder_k, k) post singular vectors, its largest
        |cosine| with any base singular vector on the intruder side)."""
        return self._records

    @property
    def table(self) -> pd.DataFrame:
        """A row per (layer, kind[, expert]): in_features, out_features, k,
        scaling_mean, scaling_std (top 90 %), nf, sigma_base_max, sigma_post_max,
        iorth_diag_mean, intruders (the intruder dimensions at the run's
        intruder_k, intruder_epsilon and side), tensor, warm_sweeps (Jacobi sweeps of the post's
        warm-started decomposition; -1 = decomposed cold). MoE models add the
        column ``expert``: the routed expert's index, ``'shared'`` for a shared
        expert, -1 for attention and dense MLP rows."""
        rows = []
        for r in self._records:
            row = {"layer": r["layer"], "kind": r["kind"]}
            if self._has_experts:
                row["expert"] = expert_label(r["expert"])
            row.update({
                "in_features": r["rows"], "out_features": r["cols"], "k": r["k"],
                "scaling_mean": r["scaling_mean"], "scaling_std": r["scaling_std"], "nf": r["nf"],
                "sigma_base_max": float(r["sigma_base"][0]), "sigma_post_max": float(r["sigma_post"][0]),
                "iorth_diag_mean": float(np.mean(r["iorth_diag"])), "intruders": int(r["intruders"]),
                "tensor": r["tensor"],
                "warm_sweeps": int(r.get("warm_sweeps", -1)),
            })
            rows.append(row)
        columns = ["layer", "kind"] + (["expert"] if self._has_experts else []) + [
            "in_features", "out_features", "k", "scaling_mean", "scaling_std", "nf", "sigma_base_max",
            "sigma_post_max", "iorth_diag_mean", "intruders", "tensor", "warm_sweeps"]
        return pd.DataFrame(rows, columns=columns)

    def kind_table(self) -> pd.DataFrame:
        """Per kind (the paper's Table 3 row): the pooled mean and population std
        of the top-90 % scaling factors over all compared layers (and experts), the
        mean and max NF, the random-rotation NF baseline sqrt(2/k), alpha' (the
        pooled mean rounded to one decimal, Table 4), ``intruders`` (the intruder dimensions of
        all its matrices, summed, as the paper sums them) and the ``reading`` of the
        summary (:func:`postsvd.readings.kind_reading`). MoE models add, per kind,
        the number of experts and the population std over experts of each expert's
        own scaling mean and mean NF."""
        rows = []
        for kind in self.kinds:
            records = [r for r in self._records if r["kind"] == kind]
            pooled = _pooled_scaling(records)
            nf = np.array([r["nf"] for r in records])
            mean = float(np.mean(pooled))
            row = {
                "kind": kind, "layers": len({r["layer"] for r in records}), "k": records[0]["k"],
                "scaling_mean": mean, "scaling_std": float(np.std(pooled)), "nf_mean": float(nf.mean()),
                "nf_max": float(nf.max()), "nf_random": random_rotation_nf(records[0]["k"]),
                "alpha": _core.table4_alpha(mean), "intruders": sum(int(r["intruders"]) for r in records),
            }
            row["reading"] = kind_reading(row["scaling_mean"], row["scaling_std"], row["nf_mean"],
                                          row["nf_random"]).text
            if self._has_experts:
                row.update(_expert_spread(records))
            rows.append(row)
        columns = ["kind", "layers", "k", "scaling_mean", "scaling_std", "nf_mean", "nf_max", "nf_random", "alpha",
                   "intruders"]
        if self._has_experts:
            columns += ["experts", "expert_scaling_mean_std", "expert_nf_mean_std"]
        return pd.DataFrame(rows, columns=columns + ["reading"])

    # ------------------------------------------------------------------ series

    def series(self, kinds: KindsArg = None, experts: Optional[Iterable[Union[int, str]]] = None) -> List[Series]:
        """The series of the figures, per kind in the paper's order: its dense matrices, then (MoE)
        its routed experts pooled and its shared expert, where the comparison has them, then each
        expert of `experts` (indices or 'shared') that the kind has."""
        chosen = [] if experts is None else [expert_label(expert_index(e, "experts")) for e in experts]
        out = []
        for kind in self._kinds_arg(kinds):
            present = {r["expert"] for r in self._records if r["kind"] == kind}
            if -1 in present:
                out.append(Series(kind))
            if any(e >= 0 for e in present):
                out.append(Series(kind, POOLED))
            if _core.SHARED_EXPERT in present:
                out.append(Series(kind, SHARED_EXPERT))
            for label in chosen:
                if label != SHARED_EXPERT and expert_index(label) in present:
                    out.append(Series(kind, label))
        return out

    def records_of(self, kind: str, expert: ExpertArg = None) -> List[Dict[str, Any]]:
        """The records of one series of `kind` (see :class:`Series`: `expert` None for its dense matrices,
        'pooled' for its routed experts, 'shared' or an index), by layer; a clear error when it has none."""
        kind = self._check_kind(kind)
        of_kind = [r for r in self._records if r["kind"] == kind]
        if expert is None:
            records = [r for r in of_kind if r["expert"] == -1]
            if not records:
                raise InvalidArgumentError(f"kind {kind!r} has only expert matrices in this comparison; pass "
                                           f"expert= an expert's index, 'shared' or '{POOLED}' (the mean over "
                                           f"each layer's routed experts)")
        elif isinstance(expert, str) and expert.strip().lower() == POOLED:
            records = [r for r in of_kind if r["expert"] >= 0]
            if not records:
                raise InvalidArgumentError(f"kind {kind!r} has no routed experts in this comparison")
        else:
            index = expert_index(expert)
            records = [r for r in of_kind if r["expert"] == index]
            if not records:
                raise InvalidArgumentError(f"kind {kind!r} has no expert {expert_label(index)} in this comparison")
        return sorted(records, key=lambda r: (r["layer"], r["expert"]))

    def layers_of(self, kind: str, expert: ExpertArg = None) -> List[int]:
        """The compared layers of a series of `kind`, ascending (the columns of :meth:`svsm`)."""
        return sorted({r["layer"] for r in self.records_of(kind, expert)})

    def svsm(self, kind: str, expert: ExpertArg = None) -> np.ndarray:
        """The singular value scaling matrix of `kind`: ``[k, layers]``, column j
        = sigma_post / sigma_base of the j-th compared layer (Eq. 4).

        `expert`: None (the dense matrices), an expert's index or 'shared', or 'pooled' (per layer the
        mean over the layer's routed experts; :meth:`svsm_spread` gives their std)."""
        return self._per_layer(kind, expert, "scaling")

    def svsm_spread(self, kind: str) -> np.ndarray:
        """MoE: the population std over each layer's routed experts of the scaling matrix, ``[k, layers]``."""
        return self._per_layer(kind, POOLED, "scaling", np.std)

    def sigma(self, kind: str, model: str = "base", expert: ExpertArg = None) -> np.ndarray:
        """Singular values of `kind` in one model: ``[k, layers]``, descending down each column
        ('pooled': the mean over each layer's routed experts).

        Args:
            model: 'base' or 'post'.
        """
        if model not in ("base", "post"):
            raise InvalidArgumentError(f"model: expected 'base' or 'post', got {model!r}")
        return self._per_layer(kind, expert, f"sigma_{model}")

    def nf(self, kind: str, expert: ExpertArg = None) -> np.ndarray:
        """NF per compared layer of `kind`: ``[layers]`` ('pooled': the mean over each layer's routed experts)."""
        return np.array([rs[0]["nf"] if len(rs) == 1 else np.mean([r["nf"] for r in rs])
                         for rs in self._by_layer(kind, expert)])

    def nf_range(self, kind: str, expert: ExpertArg = POOLED) -> Tuple[np.ndarray, np.ndarray]:
        """Per compared layer, the smallest and largest NF of a series' matrices (the spread of pooled experts)."""
        groups = self._by_layer(kind, expert)
        return (np.array([min(r["nf"] for r in rs) for rs in groups]),
                np.array([max(r["nf"] for r in rs) for rs in groups]))

    def scaling_by_layer(self, kind: str, expert: ExpertArg = None) -> Dict[str, List[float]]:
        """Per compared layer, the mean and population std of a series' top-90 % scaling factors (pooled over
        the layer's routed experts for 'pooled'): {"layers", "mean", "std"}."""
        groups = self._by_layer(kind, expert)
        pooled = [_pooled_scaling(rs) for rs in groups]
        return {"layers": [rs[0]["layer"] for rs in groups], "mean": [float(np.mean(p)) for p in pooled],
                "std": [float(np.std(p)) for p in pooled]}

    def nf_by_expert(self, kind: str) -> pd.DataFrame:
        """MoE models: NF of `kind` per expert (rows: routed experts, then 'shared') and MoE layer (columns)."""
        grid = self._expert_grid(kind)
        frame = pd.DataFrame(grid["nf"], index=grid["experts"], columns=grid["layers"])
        frame.index.name, frame.columns.name = "expert", "layer"
        return frame

    def intruders(self, epsilon: Optional[float] = None, k: Optional[int] = None) -> pd.DataFrame:
        """The intruder dimensions of every pair recounted from the kept largest |cosines| (nothing is
        decomposed again): a row per (layer, kind[, expert]) with ``intruders``, the number of the top `k`
        post singular vectors whose largest |cosine| with every base singular vector is below `epsilon`.

        Args:
            epsilon: the |cosine| threshold in [0, 1] (None = the run's ``intruder_epsilon``).
            k: the top singular vectors examined, at most the run's ``intruder_k`` (None = that).
        """
        epsilon, k = self._intruder_settings(epsilon, k)
        rows = []
        for r in self._records:
            row = {"layer": r["layer"], "kind": r["kind"]}
            if self._has_experts:
                row["expert"] = expert_label(r["expert"])
            row["intruders"] = _core.count_intruders(r["intruder_cosines"][:k], epsilon)
            rows.append(row)
        return pd.DataFrame(rows, columns=["layer", "kind"] + (["expert"] if self._has_experts else []) + ["intruders"])

    def intruder_curve(self, epsilons: Optional[Sequence[float]] = None, k: Optional[int] = None,
                       kinds: KindsArg = None) -> pd.DataFrame:
        """The intruder count against epsilon (the form of Shuttleworth et al.'s figures): a row per
        epsilon (the index; default 0, 0.01, ..., 1), a column per kind with the intruder dimensions of all
        its matrices summed, and ``all``, their sum. `k`: as in :meth:`intruders`."""
        grid = INTRUDER_EPSILONS if epsilons is None else [self._intruder_settings(e, k)[0] for e in epsilons]
        _, k = self._intruder_settings(None, k)
        pooled = {kind: [float(c) for r in self._records if r["kind"] == kind for c in r["intruder_cosines"][:k]]
                  for kind in self._kinds_arg(kinds)}
        table = pd.DataFrame({kind: [_core.count_intruders(cosines, float(e)) for e in grid]
                              for kind, cosines in pooled.items()}, index=pd.Index(grid, name="epsilon"))
        table["all"] = table.sum(axis=1)
        return table

    def _intruder_settings(self, epsilon: Optional[float], k: Optional[int]) -> Tuple[float, int]:
        """(epsilon, k) of a recount: the run's where None; k at most the run's intruder_k."""
        checked = normalize_intruders(self.intruder_k if k is None else k,
                                      self.intruder_epsilon if epsilon is None else epsilon, self.intruder_side)
        if checked["k"] > self.intruder_k:
            raise InvalidArgumentError(f"k: at most {self.intruder_k}, the top singular vectors this comparison "
                                       f"examined, got {checked['k']}; compare again with intruder_k={checked['k']}")
        return checked["epsilon"], checked["k"]

    def matrices(self, layer: int, kind: str, leading_k: Optional[int] = None,
                 expert: Union[None, int, str] = None) -> Dict[str, np.ndarray]:
        """Recomputes one pair with its full matrices (Fig. 3a, Eq. 5-7).

        Args:
            layer: a layer of the model (negative counts from the end).
            kind: one of the compared kinds.
            leading_k: keep only the leading k singular vectors (None = all).
            expert: MoE: the expert (an index or 'shared') where the layer's `kind` has experts.

        Returns:
            dict of numpy arrays: ``sim_u`` = |U_A^T U_B|, ``sim_v`` = |V_A^T V_B|,
            ``difference`` = |sim_u - sim_v|, ``q1`` = U_A^T U_B, ``q2`` = V_A^T V_B,
            ``iorth`` = q1^T q2 (each ``[kk, kk]``), plus ``nf``, ``sigma_base``,
            ``sigma_post`` and ``scaling`` of the pair.
        """
        from .linalg import with_difference

        record = self._record(layer, kind, expert)
        return with_difference(self._comparator.compare([record["index"]], True, normalize_leading_k(leading_k))[0])

    # ------------------------------------------------------------------ plots

    def plot_svsm(self, kinds: KindsArg = None, experts: Optional[Iterable[Union[int, str]]] = None):
        """Fig. 2: one SVSM heatmap per series (x = layer, y = singular value index); MoE kinds show
        their routed experts' mean (and `experts` their own). Returns a matplotlib Figure."""
        chosen = self.series(kinds, experts)
        from . import plots

        return plots.plot_svsm({s.label: self.svsm(s.kind, s.expert) for s in chosen},
                               {s.label: self.layers_of(s.kind, s.expert) for s in chosen},
                               title=f"SVSM: {self.post_name} / {self.base_name}")

    def plot_scaling_bands(self, kinds: KindsArg = None, experts: Optional[Iterable[Union[int, str]]] = None):
        """Fig. 8: per-layer mean ± std (top 90 %) of the scaling factors, one band per series (pooled
        experts: the spread of all their factors). Returns a matplotlib Figure."""
        series = {s.label: {"kind": s.kind, **self.scaling_by_layer(s.kind, s.expert)}
                  for s in self.series(kinds, experts)}
        from . import plots

        return plots.plot_scaling_bands(
            series, title=f"Scaling per layer: {self.post_name} / {self.base_name}")

    def plot_nf(self, kinds: KindsArg = None, experts: Optional[Iterable[Union[int, str]]] = None):
        """Fig. 3b: NF per layer, one line per series (pooled experts: their mean, with the band from
        the smallest to the largest expert's NF; dashed: unrelated rotations, sqrt(2/k)).
        Returns a matplotlib Figure."""
        series, baseline = {}, {}
        for s in self.series(kinds, experts):
            entry = {"kind": s.kind, "layers": self.layers_of(s.kind, s.expert), "nf": self.nf(s.kind, s.expert)}
            if s.expert == POOLED:
                entry["low"], entry["high"] = self.nf_range(s.kind)
            series[s.label] = entry
            baseline[s.label] = random_rotation_nf(self.records_of(s.kind, s.expert)[0]["k"])
        from . import plots

        return plots.plot_nf(series, baseline,
                             title=f"NF per layer: {self.post_name} vs {self.base_name}")

    def plot_intruders(self, kinds: KindsArg = None, k: Optional[int] = None):
        """Intruder dimensions against epsilon (the form of Shuttleworth et al. 2024's figures): per kind the
        intruder dimensions of all its matrices summed, and their total; the run's epsilon marked.
        Returns a matplotlib Figure."""
        curve = self.intruder_curve(k=k, kinds=kinds)
        from . import plots

        k = self.intruder_k if k is None else k
        return plots.plot_intruders(curve, self.intruder_epsilon,
                                    title=f"Intruder dimensions: {self.post_name} vs {self.base_name}",
                                    setting=intruder_setting(k, self.intruder_epsilon, self.intruder_side))

    def plot_expert_nf(self, kinds: KindsArg = None):
        """MoE models: a heatmap of NF per (layer, expert) for each kind that has experts.
        Returns a matplotlib Figure."""
        chosen = self._expert_kinds(kinds)
        from . import plots

        return plots.plot_expert_nf({k: self.nf_by_expert(k) for k in chosen},
                                    title=f"NF per expert: {self.post_name} vs {self.base_name}")

    def plot_matrices(self, layer: int, kind: str, leading_k: Optional[int] = 25,
                      expert: Union[None, int, str] = None):
        """Fig. 3a: sim_U, sim_V, difference and I_orth of one pair (leading
        `leading_k` vectors; None = all). Returns a matplotlib Figure."""
        result = self.matrices(layer, kind, leading_k=leading_k, expert=expert)
        from . import plots

        return plots.plot_matrices(result, title=self._matrices_title(layer, kind, expert, result))

    # ------------------------------------------------------------------ interactive figures (plotly)

    def interactive_layers(self, kinds: KindsArg = None, experts: Optional[Iterable[Union[int, str]]] = None):
        """NF (top) and the top-90 % scaling mean ± std (bottom) per layer, one line per series (pooled
        experts: their mean, with the band from the smallest to the largest expert's NF), with hover values
        (layer, kind, expert, NF, scaling mean ± std, intruders). A plotly Figure (``postsvd[interactive]``)."""
        from . import interactive

        series = self._layer_series(kinds, experts)
        return interactive.layers_figure(series, {s["label"]: s["nf_random"] for s in series},
                                         title=f"NF and scaling per layer: {printable(self.post_name)} vs "
                                               f"{printable(self.base_name)}")

    def interactive_experts(self, kinds: KindsArg = None):
        """MoE models: the layer x expert heatmaps of NF, one per kind with experts, with hover values (layer,
        kind, expert, NF, scaling mean ± std, intruders). A plotly Figure (``postsvd[interactive]``)."""
        from . import interactive

        return interactive.experts_figure({k: self._expert_grid(k) for k in self._expert_kinds(kinds)},
                                          title=f"NF per (layer, expert): {printable(self.post_name)} vs "
                                                f"{printable(self.base_name)}")

    def interactive_intruders(self, kinds: KindsArg = None):
        """Where the intruder dimensions are: per series and layer, the intruder dimensions of its matrices
        summed, with in how many matrices they are. A plotly Figure (``postsvd[interactive]``)."""
        from . import interactive

        series = self._layer_series(kinds)
        layers = sorted({layer for s in series for layer in s["layers"]})
        column = {layer: j for j, layer in enumerate(layers)}
        grids = {key: np.full((len(series), len(layers)), np.nan) for key in ("intruders", "matrices", "hit")}
        for i, s in enumerate(series):
            for key in grids:
                grids[key][i, [column[layer] for layer in s["layers"]]] = s[key]
        return interactive.intruders_figure(
            [s["label"] for s in series], layers, grids["intruders"], grids["matrices"], grids["hit"],
            title=f"Intruder dimensions per layer ({intruder_setting(self.intruder_k, self.intruder_epsilon, self.intruder_side)})")

    def interactive_matrices(self, layer: int, kind: str, leading_k: Optional[int] = 25,
                             expert: Union[None, int, str] = None):
        """Fig. 3a of one pair as heatmaps with hover values (recomputed, as :meth:`plot_matrices`). A plotly
        Figure (``postsvd[interactive]``)."""
        from . import interactive

        result = self.matrices(layer, kind, leading_k=leading_k, expert=expert)
        return interactive.matrices_figure(result, title=self._matrices_title(layer, kind, expert, result))

    def _matrices_title(self, layer: int, kind: str, expert, result: Dict[str, Any]) -> str:
        record = self._record(layer, kind, expert)
        which = "" if record["expert"] == -1 else f", expert {expert_label(record['expert'])}"
        return (f"W_{record['kind']}, layer {record['layer']}{which}: leading {result['sim_u'].shape[0]} of k = "
                f"{result['k']} singular vectors (NF = {result['nf']:.3g})")

    def _layer_series(self, kinds: KindsArg = None,
                      experts: Optional[Iterable[Union[int, str]]] = None) -> List[Dict[str, Any]]:
        """Per series (:meth:`series`) the numbers of the per-layer figures: label, kind, expert, nf_random and
        per layer: layers, nf (pooled: the experts' mean), scaling_mean and scaling_std (of the pooled top-90 %
        factors), intruders (summed), matrices, hit (matrices with at least one intruder); pooled experts add
        nf_low, nf_high and experts (their count)."""
        out = []
        for s in self.series(kinds, experts):
            groups = self._by_layer(s.kind, s.expert)
            pooled = [_pooled_scaling(rs) for rs in groups]
            counts = [[int(r["intruders"]) for r in rs] for rs in groups]
            entry = {"label": s.label, "kind": s.kind, "expert": s.expert,
                     "nf_random": random_rotation_nf(groups[0][0]["k"]),
                     "layers": [rs[0]["layer"] for rs in groups],
                     "nf": [float(np.mean([r["nf"] for r in rs])) for rs in groups],
                     "scaling_mean": [float(np.mean(p)) for p in pooled],
                     "scaling_std": [float(np.std(p)) for p in pooled],
                     "intruders": [sum(c) for c in counts], "matrices": [len(c) for c in counts],
                     "hit": [sum(1 for x in c if x > 0) for c in counts]}
            if s.expert == POOLED:
                entry["nf_low"] = [min(r["nf"] for r in rs) for rs in groups]
                entry["nf_high"] = [max(r["nf"] for r in rs) for rs in groups]
                entry["experts"] = [len(rs) for rs in groups]
            out.append(entry)
        return out

    def _expert_kinds(self, kinds: KindsArg) -> List[str]:
        chosen = [k for k in self._kinds_arg(kinds) if any(r["kind"] == k and r["expert"] != -1
                                                            for r in self._records)]
        if not chosen:
            raise InvalidArgumentError("no compared kind has expert matrices (not a MoE comparison, or its experts "
                                       "were not compared)")
        return chosen

    def _expert_grid(self, kind: str) -> Dict[str, Any]:
        """MoE: per (expert, layer) of `kind`, NF, scaling_mean, scaling_std and intruders ([E, L] arrays, NaN where
        not compared), with the expert labels (routed by index, then 'shared') and the layers."""
        kind = self._check_kind(kind)
        records = [r for r in self._records if r["kind"] == kind and r["expert"] != -1]
        if not records:
            raise InvalidArgumentError(f"kind {kind!r} has no expert matrices in this comparison")
        experts = sorted({r["expert"] for r in records}, key=lambda e: (e < 0, e))
        layers = sorted({r["layer"] for r in records})
        row = {e: i for i, e in enumerate(experts)}
        col = {layer: j for j, layer in enumerate(layers)}
        grid = {key: np.full((len(experts), len(layers)), np.nan) for key in ("nf", "scaling_mean", "scaling_std",
                                                                               "intruders")}
        for r in records:
            i, j = row[r["expert"]], col[r["layer"]]
            for key in grid:
                grid[key][i, j] = r[key]
        grid.update(experts=[expert_label(e) for e in experts], layers=layers)
        return grid

    def default_matrices(self, layer: Optional[int] = None) -> MatrixPair:
        """The pair whose matrices a result draws unless told: the first compared kind in `layer` (default:
        the first compared layer), its first routed expert where that layer has only experts of it, or the
        kind's first layer where it is not in `layer`."""
        layer, kind = self.layers[0] if layer is None else layer, self.kinds[0]
        present = sorted({r["expert"] for r in self._records if r["layer"] == layer and r["kind"] == kind},
                         key=lambda e: (e < 0, e))
        if not present:  # the kind starts at a later layer (e.g. DeepSeek's q_a only where q_lora_rank is set)
            first = min((r for r in self._records if r["kind"] == kind), key=lambda r: r["layer"])
            layer, present = first["layer"], [first["expert"]]
        return layer, kind, None if -1 in present else expert_label(present[0])

    # ------------------------------------------------------------------ output

    def save(self, out_dir: PathLike, *, plots: bool = True,
             matrices_for: Optional[Iterable[Sequence[Any]]] = None, leading_k: int = 25,
             experts: Optional[Iterable[Union[int, str]]] = None) -> List[str]:
        """Writes the results into `out_dir` (created if needed) and returns the paths.

        Files (:data:`COMPARISON_FILES`; docs/outputs.md): ``table.csv`` / ``table.json`` (a row
        per pair), ``kinds.csv`` / ``kinds.json`` (per kind), ``spectra.npz`` (:meth:`spectra`),
        ``summary.txt``, ``run.json`` (inputs, settings and ``schema_version``) and, with `plots`,
        ``svsm.png``, ``scaling_bands.png``, ``nf.png``, ``nf_experts.png`` (MoE), ``intruders.png`` and
        ``matrices_layer<L>_<kind>[_expert<E>].png`` for each pair in `matrices_for`, given as
        (layer, kind) or (layer, kind, expert) (default: :meth:`default_matrices`). `experts`: MoE
        experts (indices or 'shared') drawn and stored as their own series besides the pooled ones.

        Every argument is checked before anything is written. The files are
        written into a temporary folder beside `out_dir` and moved into place
        when all are done, so a failure leaves no partial result: a new folder
        appears complete or not at all; an existing folder holding only an
        earlier result is replaced as a whole; one holding other files too
        keeps them and gets the new files.
        """
        out = os.fspath(out_dir)
        target = normalize_output_folder(out, "out_dir")
        pairs = self.matrix_pairs(matrices_for, "matrices_for")
        chosen_experts = self._check_experts(experts)
        normalize_leading_k(leading_k)
        with atomic_folder(target, files=COMPARISON_FILES) as temp:
            return self.write(temp, out, plots=plots, matrices_for=pairs, leading_k=leading_k,
                              experts=chosen_experts)

    def write(self, folder: str, shown_as: Optional[str] = None, *, plots: bool = True,
              matrices_for: Optional[Sequence[MatrixPair]] = None, leading_k: Optional[int] = 25,
              experts: Optional[Sequence[Union[int, str]]] = None) -> List[str]:
        """Writes the files of :meth:`save` into the existing folder `folder` as they are, without the
        atomic step (for a writer that builds a larger result, e.g. :meth:`postsvd.Trajectory.save`);
        returns their paths under `shown_as` (default: `folder`)."""
        shown_as = folder if shown_as is None else shown_as
        pairs = [self.default_matrices()] if matrices_for is None else self.matrix_pairs(matrices_for, "matrices_for")
        experts = self._check_experts(experts)
        written: List[str] = []

        def path(template: str, **values) -> str:
            name = COMPARISON_FILES.name(template, **values)
            written.append(os.path.join(shown_as, name))
            return os.path.join(folder, name)

        table = self.table
        table.to_csv(path("table.csv"), index=False)
        table.to_json(path("table.json"), orient="records", indent=1)
        kinds = self.kind_table()
        kinds.to_csv(path("kinds.csv"), index=False)
        kinds.to_json(path("kinds.json"), orient="records", indent=1)
        np.savez(path("spectra.npz"), **self.spectra(experts))
        with open(path("summary.txt"), "w") as f:
            f.write(self.summary() + "\n")
        with open(path("run.json"), "w") as f:
            json.dump(self.run_info(), f, indent=1)
        if plots:
            figures = [("svsm.png", {}, self.plot_svsm(experts=experts)),
                       ("scaling_bands.png", {}, self.plot_scaling_bands(experts=experts)),
                       ("nf.png", {}, self.plot_nf(experts=experts)),
                       ("intruders.png", {}, self.plot_intruders())]
            if self._has_experts:
                figures.append(("nf_experts.png", {}, self.plot_expert_nf()))
            for layer, kind, expert in pairs:
                values = {"layer": layer, "kind": kind}
                if expert is None:
                    template = "matrices_layer{layer}_{kind}.png"
                else:
                    template, values["expert"] = "matrices_layer{layer}_{kind}_expert{expert}.png", expert
                figures.append((template, values, self.plot_matrices(layer, kind, leading_k, expert)))
            for template, values, figure in figures:
                figure.savefig(path(template, **values), dpi=SAVED_DPI)
        return written

    def spectra(self, experts: Optional[Iterable[Union[int, str]]] = None) -> Dict[str, np.ndarray]:
        """The arrays of spectra.npz, per series (:meth:`series`) with its key ``<kind>``,
        ``<kind>_experts``, ``<kind>_expert_shared`` or ``<kind>_expert_<E>``: ``svsm_<key>``,
        ``sigma_base_<key>``, ``sigma_post_<key>`` (each ``[k, layers]``; pooled experts: means over
        each layer's experts) and ``layers_<key>``; pooled experts add ``svsm_<key>_std`` and
        ``experts_<key>`` (experts per layer). At most 4 x k x layers numbers per series, so the
        file grows with the kinds and layers, not with the number of experts."""
        arrays: Dict[str, np.ndarray] = {}
        for s in self.series(experts=experts):
            arrays[f"svsm_{s.key}"] = self.svsm(s.kind, s.expert)
            arrays[f"sigma_base_{s.key}"] = self.sigma(s.kind, "base", s.expert)
            arrays[f"sigma_post_{s.key}"] = self.sigma(s.kind, "post", s.expert)
            arrays[f"layers_{s.key}"] = np.array(self.layers_of(s.kind, s.expert))
            if s.expert == POOLED:
                arrays[f"svsm_{s.key}_std"] = self.svsm_spread(s.kind)
                arrays[f"experts_{s.key}"] = np.array([len(rs) for rs in self._by_layer(s.kind, POOLED)])
        return arrays

    def run_info(self) -> Dict[str, Any]:
        """What run.json holds: the inputs, the selection and the settings of the run."""
        return {"schema_version": OUTPUT_SCHEMA_VERSION, "base": self.base, "post": self.post,
                "base_model": self.base_model.record(), "post_model": self.post_model.record(),
                "model_type": self.model_type, "num_layers": self.num_layers, "layers": self.layers,
                "kinds": self.kinds, "device": self.device, "dtype": self.dtype, "backend": self.backend,
                "elapsed_seconds": round(self.elapsed_seconds, 3), "factor_cache": self.factor_cache,
                "decompositions": self.decompositions if self.factor_cache else None,
                "intruders": {"k": self.intruder_k, "epsilon": self.intruder_epsilon, "side": self.intruder_side},
                "adapter": self.adapter, "postsvd_version": __version__}

    def _cache_note(self) -> str:
        if not self.factor_cache:
            return ""
        counts = self.decompositions
        return f" (factor cache: {counts['loaded']} decompositions loaded, {counts['computed']} computed)"

    def overall(self, kinds: Optional[pd.DataFrame] = None) -> str:
        """The one-sentence reading over every compared kind (the summary's "Overall:" line); `kinds`: the
        :meth:`kind_table` where the caller has it already."""
        kinds = self.kind_table() if kinds is None else kinds
        return overall_reading(kind_reading(r.scaling_mean, r.scaling_std, r.nf_mean, r.nf_random)
                               for r in kinds.itertuples())

    def summary(self) -> str:
        """A short text report: per kind the pooled scaling mean ± std, the mean
        NF against the unrelated-rotation baseline, and a one-line reading; a line on the
        intruder dimensions when there are any."""
        kinds = self.kind_table()
        lines = [
            f"postsvd: base '{printable(self.base_name)}' -> post '{printable(self.post_name)}'; "
            f"{printable(self.model_type)}, "
            f"{len(self.layers)} of {self.num_layers} layers, {len(self._records)} matrices, "
            f"{self.device} {self.dtype}, {self.elapsed_seconds:.1f} s" + self._cache_note(),
            f"{'kind':<5} {'scaling (top 90%)':>18} {'NF mean':>9} {'NF random':>9}  reading",
        ]
        for row in kinds.itertuples():
            lines.append(f"{row.kind:<5} {row.scaling_mean:>9.4f} ± {row.scaling_std:<6.4f} "
                         f"{row.nf_mean:>9.4f} {row.nf_random:>9.4f}  {row.reading}")
        lines.append("Overall: " + self.overall(kinds))
        intruders = self._intruder_line()
        if intruders:
            lines.append(intruders)
        lines += self._adapter_notes()
        quantization = self._quantization_note()
        if quantization:
            lines.append(quantization)
        lines.append("How to read: scaling = sigma_post / sigma_base per singular value (1 = unchanged; a small ± "
                     "means one factor for all); NF = ||Q1^T Q2 - I||_F / k is 0 when the input side (U) and the "
                     "output side (V) rotate by the same Q, and about 'NF random' for unrelated models.")
        return "\n".join(lines)

    def _adapter_notes(self) -> List[str]:
        """What the summary says about an adapter post model (nothing for a model folder)."""
        return adapters.notes(self._comparator.post, self.post_model.name, self.base_model.name)

    def _intruder_line(self) -> Optional[str]:
        """The summary's line on intruder dimensions, when there are any."""
        per_kind = []
        for kind in self.kinds:
            counts = [int(r["intruders"]) for r in self._records if r["kind"] == kind]
            per_kind.append((kind, sum(counts), sum(1 for c in counts if c > 0), len(counts)))
        return intruder_reading(per_kind, self.intruder_k, self.intruder_epsilon, self.intruder_side)

    def _quantization_note(self) -> Optional[str]:
        """A line when base and post store some matrix in different formats (e.g. BF16 and FP8): whether
        every difference stays within what rounding to the coarser format causes (docs/formats.md).

        Rounding each weight to a format with relative error u gives ||dW||_F <= u ||W||_F, so by
        Mirsky's inequality ||sigma_post - sigma_base||_2 <= u ||sigma_base||_2 for every matrix; NF of
        a quantized copy is also checked against u (measured far below it)."""
        base, post = self._comparator.base, self._comparator.post
        base_sources = self._comparator.architecture["matrices"]
        post_sources = _core.detect_architecture(post)["matrices"]
        formats, bound = set(), 0.0
        for r in self._records:
            fb = _core.stored_format(base, base_sources[r["index"]])
            fp = _core.stored_format(post, post_sources[r["index"]])
            if (fb["dtype"], fb["scheme"]) != (fp["dtype"], fp["scheme"]):
                formats.add((_format_name(fb), _format_name(fp)))
                coarser = fb if fb["relative_bound"] >= fp["relative_bound"] else fp
                if coarser["relative_bound"] > bound:
                    bound = coarser["relative_bound"]
                    coarse_name = "MXFP4" if coarser["scheme"] == "mxfp4" else coarser["dtype"]
        if not formats:
            return None
        spread = max(float(np.linalg.norm(np.asarray(r["sigma_post"], float) - np.asarray(r["sigma_base"], float))
                           / max(np.linalg.norm(np.asarray(r["sigma_base"], float)), 1e-300)) for r in self._records)
        nf = max(float(r["nf"]) for r in self._records)
        pairs = "; ".join(f"base {b}, post {p}" for b, p in sorted(formats))
        measured = (f"largest ||sigma_post - sigma_base|| / ||sigma_base|| {spread:.3g}, largest NF {nf:.3g}, "
                    f"bound {bound:.4g}")
        if spread <= bound and nf <= bound:
            return (f"Quantization: {pairs}. Every difference is within {coarse_name} rounding ({measured}): "
                    f"the pair may differ only by quantization.")
        return (f"Quantization: {pairs}. The differences exceed what {coarse_name} rounding alone causes "
                f"({measured}): the weights changed beyond quantization.")

    def _headline(self) -> str:
        return (f"{printable(self.post_name)} vs {printable(self.base_name)}: {printable(self.model_type)}, "
                f"{len(self.layers)} of {self.num_layers} layers x {len(self.kinds)} kinds, {len(self._records)} "
                f"matrices, {self.device} {self.dtype}")

    def __repr__(self) -> str:
        """A few lines: what was compared, per kind the scaling, NF and reading, and the overall reading."""
        kinds = self.kind_table()
        lines = [f"<postsvd.Comparison {self._headline()}"]
        width = max(len(k) for k in self.kinds)
        for row in kinds.itertuples():
            lines.append(f"  {row.kind:<{width}}  scaling {row.scaling_mean:.4f} ± {row.scaling_std:.4f}  NF "
                         f"{row.nf_mean:.4f} (unrelated {row.nf_random:.4f})"
                         + (f"  intruders {row.intruders}" if row.intruders else "") + f"  {row.reading}")
        lines.append(f"  Overall: {self.overall(kinds)}>")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The rich display in Jupyter: the reading, the per-kind table and one figure (NF and scaling per
        layer; interactive with ``postsvd[interactive]``, else a small PNG). Sized by kinds and layers, not by
        experts."""
        kinds = self.kind_table()
        moe = "experts" in kinds.columns
        header = ["kind", "layers", "k", "scaling mean ± std", "NF mean", "NF unrelated", "intruders"] + (
            ["experts"] if moe else []) + ["reading"]
        rows = [[row.kind, row.layers, row.k, f"{row.scaling_mean:.4f} ± {row.scaling_std:.4f}", f"{row.nf_mean:.4f}",
                 f"{row.nf_random:.4f}", row.intruders] + ([row.experts or "–"] if moe else []) + [row.reading]
                for row in kinds.itertuples()]
        body = [f'<div class="pd-reading"><b>Overall:</b> {_html.escape(self.overall(kinds))}</div>']
        notes = [line for line in (self._intruder_line(), *self._adapter_notes(), self._quantization_note()) if line]
        body += [f'<p class="note">{_html.escape(line)}</p>' for line in notes]
        body.append(_html.small_table(header, rows))
        body.append(_display.display_figure(lambda: self.interactive_layers().update_layout(height=440), self.plot_nf,
                                            "NF and scaling per layer, one line per series (MoE: routed experts "
                                            "pooled, with their spread)"))
        hint = ("More: <code>.table</code> (a row per matrix), <code>.summary()</code>, "
                + ("<code>.interactive_experts()</code> (NF per layer and expert), " if self._has_experts else "")
                + "<code>.interactive_layers()</code>, <code>postsvd.write_report(c, DIR)</code> (an HTML page).")
        return _html.display("postsvd.Comparison", self._headline(), body, hint)

    # ------------------------------------------------------------------ helpers

    def _check_kind(self, kind: str) -> str:
        names = normalize_kinds(kind, what="kind")
        if len(names) != 1:
            raise InvalidArgumentError(f"kind: expected one kind, got {kind!r}")
        if names[0] not in self.kinds:
            raise InvalidArgumentError(
                f"kind {names[0]!r} was not compared; compared kinds: {', '.join(self.kinds)}")
        return names[0]

    def _kinds_arg(self, kinds: KindsArg) -> List[str]:
        if kinds is None:
            return list(self.kinds)
        return [self._check_kind(k) for k in normalize_kinds(kinds)]

    def _check_experts(self, experts: Optional[Iterable[Union[int, str]]]) -> Optional[List[Union[int, str]]]:
        """`experts` as labels, each one compared (a clear error otherwise)."""
        if experts is None:
            return None
        items = [experts] if isinstance(experts, (int, str)) else list(experts)
        labels = [expert_label(expert_index(e, "experts")) for e in items]
        present = {expert_label(r["expert"]) for r in self._records if r["expert"] != -1}
        missing = [str(label) for label in labels if label not in present]
        if missing:
            have = ", ".join(str(e) for e in sorted(present, key=lambda e: (isinstance(e, str), str(e)))) or "none"
            raise InvalidArgumentError(f"experts: {', '.join(missing)} not compared; compared experts: {have}")
        return labels

    def _by_layer(self, kind: str, expert: ExpertArg) -> List[List[Dict[str, Any]]]:
        """The records of a series grouped by layer, in layer order (one each, but for pooled experts)."""
        groups: Dict[int, List[Dict[str, Any]]] = {}
        for r in self.records_of(kind, expert):
            groups.setdefault(r["layer"], []).append(r)
        return [groups[layer] for layer in sorted(groups)]

    def _per_layer(self, kind: str, expert: ExpertArg, key: str, reduce=np.mean) -> np.ndarray:
        """``[k, layers]``: per layer of a series, its record's `key` array, or `reduce` over the
        layer's records (pooled experts), one column per layer."""
        return np.stack([rs[0][key] if len(rs) == 1 and reduce is np.mean else
                         reduce(np.stack([r[key] for r in rs]), axis=0) for rs in self._by_layer(kind, expert)], axis=1)

    def _record(self, layer: int, kind: str, expert: Union[None, int, str]) -> Dict[str, Any]:
        """The record of one compared pair; a clear error naming what was compared otherwise."""
        layer = normalize_layers(layer, self.num_layers, self.model_type, what="layer")[0]
        kind = self._check_kind(kind)
        matches = [r for r in self._records if r["layer"] == layer and r["kind"] == kind
                   and (expert is None or r["expert"] == expert_index(expert))]
        if not matches:
            if not any(r["layer"] == layer for r in self._records):
                compared = ", ".join(str(x) for x in self.layers)
                raise InvalidArgumentError(f"layer {layer} was not compared; compared layers: {compared}")
            raise InvalidArgumentError(f"layer {layer}, kind {kind!r} has no expert {expert!r} in this comparison")
        if len(matches) > 1:
            raise InvalidArgumentError(f"layer {layer}, kind {kind!r} has {len(matches)} experts; pass expert= "
                                       f"(an index or 'shared')")
        return matches[0]

    def matrix_pairs(self, pairs: Optional[Iterable[Sequence[Any]]], what: str = "matrices") -> Optional[List[MatrixPair]]:
        """(layer, kind[, expert]) items that name compared matrices, as (layer, kind, expert label or None);
        a clear error naming `what` otherwise (an expert is needed where the layer's kind has several)."""
        if pairs is None:
            return None
        out = []
        for layer, kind, expert in normalize_matrix_pairs(pairs, self.layers, self.kinds, self.num_layers,
                                                          self.model_type, what):
            try:
                record = self._record(layer, kind, expert)
            except InvalidArgumentError as error:
                raise InvalidArgumentError(f"{what}: {error}") from None
            out.append((layer, kind, None if record["expert"] == -1 else expert_label(record["expert"])))
        return out


def _pooled_scaling(records: Sequence[Dict[str, Any]]) -> np.ndarray:
    """The top-90 % scaling factors of `records`, pooled."""
    return np.concatenate([r["scaling"][: r["scaling_count"]] for r in records])


def _format_name(stored: Dict[str, Any]) -> str:
    scheme = {"scaled-fp8": " with scales", "mxfp4": " (MXFP4)"}.get(stored["scheme"], "")
    return f"{stored['dtype']}{scheme}" if stored["scheme"] != "mxfp4" else "MXFP4"


def _expert_spread(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Across the routed and shared experts of one kind: how many, and the population std of the
    per-expert (layer-pooled) scaling mean and of the per-expert mean NF (0 for a kind without experts)."""
    by_expert: Dict[int, List[Dict[str, Any]]] = {}
    for r in records:
        if r["expert"] != -1:
            by_expert.setdefault(r["expert"], []).append(r)
    if not by_expert:
        return {"experts": 0, "expert_scaling_mean_std": 0.0, "expert_nf_mean_std": 0.0}
    scaling = [np.mean(_pooled_scaling(rs)) for rs in by_expert.values()]
    nf = [np.mean([r["nf"] for r in rs]) for rs in by_expert.values()]
    return {"experts": len(by_expert), "expert_scaling_mean_std": float(np.std(scaling)),
            "expert_nf_mean_std": float(np.std(nf))}
