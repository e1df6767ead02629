"""Comparing a base and a post-trained checkpoint: :func:`compare` and :class:`Comparison`."""
from __future__ import annotations

import json
import math
import os
import re
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from . import _core
from ._names import short_name
from ._outputs import atomic_folder
from ._terminal import printable
from ._validate import (
    KINDS,
    ExpertsArg,
    LayersArg,
    KindsArg,
    expert_index,
    expert_label,
    normalize_cache,
    normalize_device,
    normalize_dtype,
    normalize_experts,
    normalize_folder,
    normalize_kinds,
    normalize_layers,
    normalize_leading_k,
    normalize_matrix_pairs,
    normalize_output_folder,
    normalize_threads,
    normalize_warm_start,
)
from .errors import InvalidArgumentError

PathLike = Union[str, "os.PathLike[str]"]

# Per-pair values kept after the factors are released (all O(k)).
_KEPT = ("rows", "cols", "k", "sigma_base", "sigma_post", "scaling", "scaling_mean", "scaling_std",
         "scaling_count", "nf", "iorth_diag", "warm_sweeps")

#: Readings of the summary; NF is judged against unrelated rotations (sqrt(2/k)).
CONSISTENT_NF_RATIO = 0.25
PARTIAL_NF_RATIO = 0.6
UNIFORM_SCALING_CV = 0.05

#: The files :meth:`Comparison.save` writes: a folder holding only these is a previous result it may replace.
SAVED_FILES = re.compile(r"(table|kinds)\.(csv|json)|spectra\.npz|summary\.txt|run\.json|"
                         r"(svsm|scaling_bands|nf)\.png|matrices_layer\d+_[a-z]+\.png")


def random_rotation_nf(k: int) -> float:
    """Expected NF of two unrelated random rotations of size k: sqrt(2 / k).

    For a random orthogonal R, ||R - I||_F^2 = 2k - 2 tr(R) ~ 2k, so NF ~ sqrt(2k) / k.
    """
    return math.sqrt(2.0 / k)


def compare(base: PathLike, post: PathLike, *, device: str = "cpu", dtype: str = "float32",
            layers: LayersArg = None, kinds: KindsArg = None, progress: bool = True,
            num_threads: Optional[int] = None, memory_budget_bytes: Optional[int] = None,
            cache: Optional[PathLike] = None, experts: ExpertsArg = None, executor: str = "local",
            ray_address: Optional[str] = None, warm_start: Union[bool, str] = True,
            warm_from: Optional[PathLike] = None) -> "Comparison":
    """Compares a base and a post-trained checkpoint of one architecture, matrix by matrix.

    Every selected (layer, kind) pair is decomposed (reduced SVD in the paper's
    orientation ``W = W_hf.T``) and measured: singular values, the SVSM column
    ``sigma_post / sigma_base``, top-90 % scaling statistics, NF and the diagonal
    of ``I_orth``. The pairs stream layer by layer, so memory stays bounded by one
    layer's factors.

    Args:
        base: folder of the base model (config.json + safetensors, single or sharded).
        post: folder of the post-trained model; same architecture and shapes.
        device: 'cpu', or 'cuda' / 'cuda:N' / 'cuda:0,1' in a CUDA build.
        dtype: working precision, 'float32' (the paper's) or 'float64'.
        layers: None (all), an int, a list of ints, or text like '0,1,5-9';
            negative indices count from the end.
        kinds: None (all), a list or comma-separated text of kinds (q, k, v, o,
            gate, up, down; DeepSeek's q_a, q_b, kv_a, kv_b_k, kv_b_v), or the
            groups 'attention' (or 'attn') / 'mlp'.
        progress: show a tqdm progress bar.
        num_threads: CPU threads for LAPACK/BLAS (None = all cores).
        memory_budget_bytes: device memory the CUDA backend may hold (None = 90 % of free).
        cache: a factor cache folder (created if needed), shared with
            :func:`postsvd.construct`: each matrix's decomposition is loaded
            from it when there, otherwise computed and saved. Comparing one
            base with several post models then decomposes the base once, and
            the constructions reuse the comparison's decompositions. Costs disk
            (U, S and V in the working precision: about 4x the bf16 weights
            in float32, twice that in float64) and, on a cold cache,
            the write. None = no cache (the default). With ``executor='ray'``
            it must be on storage that every node sees.
        experts: MoE models: the experts to compare, e.g. '0-7', '0-7,shared',
            [0, 3] or 'shared' (the shared expert); None = all. Attention and
            dense MLP matrices are compared whatever this says.
        executor: 'local' (this process) or 'ray': the pairs go in groups to
            the tasks of a Ray cluster, which open both folders by path (a file
            system every node sees) and return only the measures; see
            :mod:`postsvd.distributed`. Needs ``pip install postsvd[ray]``.
        ray_address: with 'ray', the cluster to use ('auto', 'ray://host:10001',
            'host:6379'); None = a running cluster if there is one, else a
            local one. With 'ray', ``device`` may also be 'auto': a GPU per
            task where the cluster has GPUs, CPUs otherwise.
        warm_start: decompose each post matrix from the base's factors (a
            Jacobi on the nearly diagonal rotated Gram matrix), falling back to
            the cold SVD where the pair is not close. True / 'auto': where the
            backend measured it faster (the CUDA backend; on the CPU the cold
            SVD measured faster at every shape, benchmarks/RESULTS.md);
            'always'; False / 'off': never. The ``warm_sweeps`` column says
            what ran (-1: cold). Same results to the backend's accuracy.
        warm_from: with ``cache``, a checkpoint whose cached factors start the
            post matrices instead of the base's (:func:`postsvd.track` passes
            the previous checkpoint). Same architecture as the base.

    Returns:
        A :class:`Comparison`.

    Raises:
        BadCheckpointError: a folder is missing or malformed, the model_type is
            unsupported, or the models differ in architecture or shapes (the
            message names the first differing tensors).
        InvalidArgumentError: unknown kind, layer out of range, bad dtype; a NaN
            or Inf weight (naming the tensor).
        NotBuiltWithCudaError: device 'cuda' in a CPU build.
    """
    base_path = normalize_folder(base, "base")
    post_path = normalize_folder(post, "post")
    if executor not in ("local", "ray"):
        raise InvalidArgumentError(f"executor: expected 'local' or 'ray', got {executor!r}")
    if executor == "ray":
        from . import distributed  # Ray stays optional: imported only when asked for

        distributed.check_device(device)
    # On Ray the tasks decompose; this process only reads the headers and recomputes single pairs (matrices()).
    local_device = "cpu" if executor == "ray" else device
    precision, (device_kind, device_ids), threads, budget, cache_path = _options(
        dtype, local_device, num_threads, memory_budget_bytes, cache)
    warm_mode = normalize_warm_start(warm_start)
    warm_from_path = normalize_folder(warm_from, "warm_from") if warm_from is not None else ""
    comparator = _core.Comparator(base_path, post_path, device_kind, precision, device_ids, budget, threads,
                                  cache_path, warm_mode, warm_from_path)
    arch = comparator.architecture
    chosen_layers, chosen_kinds = _selection(arch, layers, kinds)
    chosen_experts = _check_experts(normalize_experts(experts), arch)
    layer_set, kind_set = set(chosen_layers), set(chosen_kinds)
    batches: Dict[int, List[int]] = {}
    for index, source in enumerate(arch["matrices"]):
        if source["layer"] in layer_set and source["kind"] in kind_set and (
                chosen_experts is None or source["expert"] == -1 or source["expert"] in chosen_experts):
            batches.setdefault(source["layer"], []).append(index)
    if not batches:
        raise InvalidArgumentError(f"no matrix selected: layers {layers!r}, kinds {kinds!r}, experts {experts!r}")
    total = sum(len(b) for b in batches.values())
    if cache_path:
        _warn_if_cache_may_not_fit(cache_path, [arch["matrices"][i] for b in batches.values() for i in b], precision)

    desc = f"{_display_name(base_path)} vs {_display_name(post_path)}"
    if executor == "ray":
        run = distributed.compare_units(
            distributed.RunOptions(base_path, post_path, device, precision, budget, num_threads, cache_path,
                                   warm_mode, warm_from_path),
            [batches[layer] for layer in sorted(batches)], arch, address=ray_address, progress=progress, desc=desc)
        return Comparison(comparator, run.records, chosen_layers, chosen_kinds, run.elapsed_seconds,
                          device=run.device, decompositions=run.decompositions)

    from tqdm.auto import tqdm

    records: List[Dict[str, Any]] = []
    started = time.perf_counter()
    with tqdm(total=total, desc=desc, unit="matrix", disable=not progress, leave=True) as bar:
        for layer in sorted(batches):
            bar.set_postfix_str(f"layer {layer}")
            # A MoE layer goes in chunks: the backend sees a bounded batch, the bar moves per chunk.
            for start in range(0, len(batches[layer]), _CHUNK):
                indices = batches[layer][start:start + _CHUNK]
                records += pair_records(comparator, indices)
                bar.update(len(indices))
    elapsed = time.perf_counter() - started
    return Comparison(comparator, records, chosen_layers, chosen_kinds, elapsed)


#: Matrix pairs per call into the backend.
_CHUNK = 64


def pair_records(comparator: "_core.Comparator", indices: Sequence[int]) -> List[Dict[str, Any]]:
    """The kept measures of the pairs at `indices` (into the architecture's matrices), in that order.

    The one per-pair computation of every executor: a local :func:`compare` calls it per chunk of
    a layer, a Ray task (:mod:`postsvd.distributed`) on its unit of pairs.
    """
    matrices = comparator.architecture["matrices"]
    records = []
    for index, measures in zip(indices, comparator.compare(list(indices), False, 0)):
        source = matrices[index]
        record = {"index": index, "layer": source["layer"], "kind": source["kind"],
                  "expert": source["expert"], "tensor": source["tensor"]}
        record.update({key: measures[key] for key in _KEPT})
        records.append(record)
    return records


def _check_experts(chosen: Optional[set], arch: Dict[str, Any]) -> Optional[set]:
    if chosen is None:
        return None
    present = {s["expert"] for s in arch["matrices"] if s["expert"] != -1}
    if not present:
        raise InvalidArgumentError(f"experts: this {arch['model_type']} model has no MoE experts")
    missing = sorted(chosen - present)
    if missing:
        routed = sorted(e for e in present if e >= 0)
        have = f"experts 0..{routed[-1]}" if routed else "no routed experts"
        if _core.SHARED_EXPERT in present:
            have += " and 'shared'"
        raise InvalidArgumentError(f"experts: {', '.join(str(expert_label(e)) for e in missing)} not in this "
                                   f"{arch['model_type']} model; it has {have}")
    return chosen


def _options(dtype, device, num_threads, memory_budget_bytes, cache):
    """The normalized run options of :func:`compare`: precision, (device, ids), threads, budget, cache path."""
    precision = normalize_dtype(dtype)
    device_choice = normalize_device(device)
    threads = normalize_threads(num_threads)
    budget = 0 if memory_budget_bytes is None else int(memory_budget_bytes)
    if budget < 0:
        raise InvalidArgumentError(f"memory_budget_bytes: expected >= 0 or None, got {memory_budget_bytes!r}")
    return precision, device_choice, threads, budget, normalize_cache(cache)


def _selection(arch: Dict[str, Any], layers: LayersArg, kinds: KindsArg) -> Tuple[List[int], List[str]]:
    """The compared layers and kinds of a model's architecture."""
    available = [k for k in KINDS if any(s["kind"] == k for s in arch["matrices"])]
    chosen_kinds = normalize_kinds(kinds, available)
    return normalize_layers(layers, arch["num_layers"], arch["model_type"]), chosen_kinds


def check_compare_arguments(base: PathLike, posts: Sequence[PathLike], *, device: str = "cpu",
                            dtype: str = "float32", layers: LayersArg = None, kinds: KindsArg = None,
                            num_threads: Optional[int] = None, memory_budget_bytes: Optional[int] = None,
                            cache: Optional[PathLike] = None,
                            matrices_for: Optional[Iterable[Tuple[int, str]]] = None, leading_k: Optional[int] = 25,
                            outs: Sequence[PathLike] = (), experts: ExpertsArg = None) -> None:
    """Checks every argument of comparing `base` with each of `posts` and saving the results
    (:func:`compare`, :meth:`Comparison.save`) before anything is computed or written.

    Each post model is opened against the base (headers only: folders, files, architecture and
    shapes); the layer and kind selection, the `matrices_for` pairs, `leading_k` and the output
    folders `outs` are checked. Raises what :func:`compare` and :meth:`Comparison.save` would
    raise later, naming the argument.
    """
    base_path = normalize_folder(base, "base")
    post_paths = [normalize_folder(post, "post") for post in posts]
    if not post_paths:
        raise InvalidArgumentError("posts: expected at least one post-trained model folder, got none")
    precision, _, threads, _, _ = _options(dtype, device, num_threads, memory_budget_bytes, cache)
    normalize_leading_k(leading_k)
    for out in outs:
        normalize_output_folder(out)
    for post_path in post_paths:
        # A CPU comparator without a cache opens both folders and checks that they match; it decomposes nothing.
        arch = _core.Comparator(base_path, post_path, "cpu", precision, [], 0, threads, "").architecture
        chosen_layers, chosen_kinds = _selection(arch, layers, kinds)
        _check_experts(normalize_experts(experts), arch)
        if matrices_for is not None:
            normalize_matrix_pairs(matrices_for, chosen_layers, chosen_kinds, arch["num_layers"],
                                   arch["model_type"], "matrices")


def cache_bytes_needed(sources: Sequence[Dict[str, Any]], dtype: str = "float32") -> int:
    """Upper bound on the factor cache bytes for these matrices (both models, nothing cached yet):
    U [in, k], S [k] and V [out, k] per matrix and model, in the working precision."""
    item = 8 if dtype == "float64" else 4
    total = 0
    for s in sources:
        m, n = int(s["in_features"]), int(s["out_features"])
        total += 2 * ((m + n + 1) * min(m, n) * item + 64)
    return total


def _warn_if_cache_may_not_fit(cache_path: str, sources: Sequence[Dict[str, Any]], dtype: str) -> None:
    import shutil
    import warnings

    need = cache_bytes_needed(sources, dtype)
    probe = cache_path
    while not os.path.exists(probe):  # the folder is created on first use: ask its nearest existing parent
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent
    free = shutil.disk_usage(probe).free
    if need > free:
        warnings.warn(f"cache: filling '{cache_path}' for this comparison may need up to {_size(need)} "
                      f"(less for matrices already cached), but only {_size(free)} are free there; a "
                      f"full disk stops the comparison with an error", UserWarning, stacklevel=3)


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _display_name(path: str) -> str:
    """The folder's name, safe to print on a terminal."""
    return printable(short_name(path))


class Comparison:
    """The measures of every compared (layer, kind) pair of two checkpoints.

    Made by :func:`compare`. Tables are pandas DataFrames, spectra numpy
    arrays, plots matplotlib Figures. :meth:`matrices` recomputes one pair with
    its full similarity matrices (the factors are never kept).

    Attributes:
        base, post: the two folders.
        model_type: config.json's model_type.
        num_layers: layers of the model (not only the compared ones).
        layers: the compared layers.
        kinds: the compared kinds, in the paper's order.
        device, dtype: where and in which precision it ran.
        backend: the backend's description.
        elapsed_seconds: time spent comparing.
        factor_cache: the factor cache folder, or None.
    """

    def __init__(self, comparator: "_core.Comparator", records: List[Dict[str, Any]], layers: Sequence[int],
                 kinds: Sequence[str], elapsed_seconds: float = 0.0, *, device: Optional[str] = None,
                 decompositions: Optional[Dict[str, int]] = None):
        self._comparator = comparator
        self._records = records
        arch = comparator.architecture
        self.base: str = comparator.base.folder
        self.post: str = comparator.post.folder
        self.model_type: str = arch["model_type"]
        self.num_layers: int = arch["num_layers"]
        self.layers: List[int] = list(layers)
        self.kinds: List[str] = list(kinds)
        self.device: str = device or comparator.device  # on Ray: where the tasks ran
        self.dtype: str = comparator.precision
        self.backend: str = comparator.backend_name
        self.elapsed_seconds: float = elapsed_seconds
        self.factor_cache: Optional[str] = comparator.factor_cache or None
        self._has_experts = any(r["expert"] != -1 for r in records)
        self._task_decompositions = decompositions  # on Ray: the tasks' cache counts, summed

    # ------------------------------------------------------------------ data

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
        sigma_base, sigma_post, scaling, scaling_mean, scaling_std, nf, iorth_diag."""
        return self._records

    @property
    def table(self) -> pd.DataFrame:
        """A row per (layer, kind[, expert]): in_features, out_features, k,
        scaling_mean, scaling_std (top 90 %), nf, sigma_base_max, sigma_post_max,
        iorth_diag_mean, tensor, warm_sweeps (Jacobi sweeps of the post's
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
                "iorth_diag_mean": float(np.mean(r["iorth_diag"])), "tensor": r["tensor"],
                "warm_sweeps": int(r.get("warm_sweeps", -1)),
            })
            rows.append(row)
        columns = ["layer", "kind"] + (["expert"] if self._has_experts else []) + [
            "in_features", "out_features", "k", "scaling_mean", "scaling_std", "nf", "sigma_base_max",
            "sigma_post_max", "iorth_diag_mean", "tensor", "warm_sweeps"]
        return pd.DataFrame(rows, columns=columns)

    def kind_table(self) -> pd.DataFrame:
        """Per kind (the paper's Table 3 row): the pooled mean and population std
        of the top-90 % scaling factors over all compared layers, the mean and
        max NF, the random-rotation NF baseline sqrt(2/k), and alpha' (the pooled
        mean rounded to one decimal, Table 4)."""
        rows = []
        for kind in self.kinds:
            records = [r for r in self._records if r["kind"] == kind]
            pooled = np.concatenate([r["scaling"][: r["scaling_count"]] for r in records])
            nf = np.array([r["nf"] for r in records])
            mean = float(np.mean(pooled))
            row = {
                "kind": kind, "layers": len({r["layer"] for r in records}), "k": records[0]["k"],
                "scaling_mean": mean, "scaling_std": float(np.std(pooled)), "nf_mean": float(nf.mean()),
                "nf_max": float(nf.max()), "nf_random": random_rotation_nf(records[0]["k"]),
                "alpha": _core.table4_alpha(mean),
            }
            if self._has_experts:
                row.update(_expert_spread(records))
            rows.append(row)
        columns = ["kind", "layers", "k", "scaling_mean", "scaling_std", "nf_mean", "nf_max", "nf_random", "alpha"]
        if self._has_experts:
            columns += ["experts", "expert_scaling_mean_std", "expert_nf_mean_std"]
        return pd.DataFrame(rows, columns=columns)

    def layers_of(self, kind: str) -> List[int]:
        """The compared layers that have `kind`, ascending (the columns of :meth:`svsm`)."""
        return sorted({r["layer"] for r in self._of_kind(kind)})

    def svsm(self, kind: str, expert: Optional[int] = None) -> np.ndarray:
        """The singular value scaling matrix of `kind`: ``[k, layers]``, column j
        = sigma_post / sigma_base of the j-th compared layer (Eq. 4)."""
        return self._stack(kind, "scaling", expert)

    def sigma(self, kind: str, model: str = "base", expert: Optional[int] = None) -> np.ndarray:
        """Singular values of `kind` in one model: ``[k, layers]``, descending down each column.

        Args:
            model: 'base' or 'post'.
        """
        if model not in ("base", "post"):
            raise InvalidArgumentError(f"model: expected 'base' or 'post', got {model!r}")
        return self._stack(kind, f"sigma_{model}", expert)

    def nf(self, kind: str, expert: Optional[int] = None) -> np.ndarray:
        """NF per compared layer of `kind`: ``[layers]``."""
        return np.array([r["nf"] for r in self._of_kind(kind, expert)])

    def matrices(self, layer: int, kind: str, leading_k: Optional[int] = None,
                 expert: Optional[int] = None) -> Dict[str, np.ndarray]:
        """Recomputes one pair with its full matrices (Fig. 3a, Eq. 5-7).

        Args:
            layer: a layer of the model (negative counts from the end).
            kind: one of the compared kinds.
            leading_k: keep only the leading k singular vectors (None = all).

        Returns:
            dict of numpy arrays: ``sim_u`` = |U_A^T U_B|, ``sim_v`` = |V_A^T V_B|,
            ``difference`` = |sim_u - sim_v|, ``q1`` = U_A^T U_B, ``q2`` = V_A^T V_B,
            ``iorth`` = q1^T q2 (each ``[kk, kk]``), plus ``nf``, ``sigma_base``,
            ``sigma_post`` and ``scaling`` of the pair.
        """
        from .linalg import _with_difference

        layer = normalize_layers(layer, self.num_layers, self.model_type)[0]
        kind = self._check_kind(kind)
        matches = [r for r in self._records if r["layer"] == layer and r["kind"] == kind
                   and (expert is None or r["expert"] == expert_index(expert))]
        if not matches:
            compared = ", ".join(str(x) for x in self.layers)
            raise InvalidArgumentError(f"layer {layer} was not compared; compared layers: {compared}")
        if len(matches) > 1:
            raise InvalidArgumentError(f"layer {layer}, kind {kind!r} has {len(matches)} experts; pass expert= "
                                       f"(an index or 'shared')")
        return _with_difference(self._comparator.compare([matches[0]["index"]], True,
                                                          normalize_leading_k(leading_k))[0])

    # ------------------------------------------------------------------ plots

    def plot_svsm(self, kinds: KindsArg = None):
        """Fig. 2: one SVSM heatmap per kind (x = layer, y = singular value index).
        Returns a matplotlib Figure."""
        chosen = self._kinds_arg(kinds)
        from . import plots

        return plots.plot_svsm({k: self.svsm(k) for k in chosen}, {k: self.layers_of(k) for k in chosen},
                               title=f"SVSM: {short_name(self.post)} / {short_name(self.base)}")

    def plot_scaling_bands(self, kinds: KindsArg = None):
        """Fig. 8: per-layer mean ± std (top 90 %) of the scaling factors, one
        band per kind. Returns a matplotlib Figure."""
        series = {}
        for kind in self._kinds_arg(kinds):
            records = self._of_kind(kind)
            series[kind] = {"layers": [r["layer"] for r in records],
                            "mean": [r["scaling_mean"] for r in records],
                            "std": [r["scaling_std"] for r in records]}
        from . import plots

        return plots.plot_scaling_bands(
            series, title=f"Scaling per layer: {short_name(self.post)} / {short_name(self.base)}")

    def plot_nf(self, kinds: KindsArg = None):
        """Fig. 3b: NF per layer, one line per kind (dashed: unrelated
        rotations, sqrt(2/k)). Returns a matplotlib Figure."""
        series, baseline = {}, {}
        for kind in self._kinds_arg(kinds):
            records = self._of_kind(kind)
            series[kind] = {"layers": [r["layer"] for r in records], "nf": [r["nf"] for r in records]}
            baseline[kind] = random_rotation_nf(records[0]["k"])
        from . import plots

        return plots.plot_nf(series, baseline,
                             title=f"NF per layer: {short_name(self.post)} vs {short_name(self.base)}")

    def nf_by_expert(self, kind: str) -> pd.DataFrame:
        """MoE models: NF of `kind` per expert (rows: routed experts, then 'shared') and MoE layer (columns)."""
        kind = self._check_kind(kind)
        records = [r for r in self._records if r["kind"] == kind and r["expert"] != -1]
        if not records:
            raise InvalidArgumentError(f"kind {kind!r} has no expert matrices in this comparison")
        experts = sorted({r["expert"] for r in records}, key=lambda e: (e < 0, e))
        layers = sorted({r["layer"] for r in records})
        grid = pd.DataFrame(np.nan, index=[expert_label(e) for e in experts], columns=layers)
        for r in records:
            grid.loc[expert_label(r["expert"]), r["layer"]] = r["nf"]
        grid.index.name, grid.columns.name = "expert", "layer"
        return grid

    def plot_expert_nf(self, kinds: KindsArg = None):
        """MoE models: a heatmap of NF per (layer, expert) for each kind that has experts.
        Returns a matplotlib Figure."""
        chosen = [k for k in self._kinds_arg(kinds) if any(r["kind"] == k and r["expert"] != -1
                                                            for r in self._records)]
        if not chosen:
            raise InvalidArgumentError("plot_expert_nf: no compared kind has expert matrices")
        from . import plots

        return plots.plot_expert_nf({k: self.nf_by_expert(k) for k in chosen},
                                    title=f"NF per expert: {short_name(self.post)} vs {short_name(self.base)}")

    def plot_matrices(self, layer: int, kind: str, leading_k: Optional[int] = 25):
        """Fig. 3a: sim_U, sim_V, difference and I_orth of one pair (leading
        `leading_k` vectors; None = all). Returns a matplotlib Figure."""
        result = self.matrices(layer, kind, leading_k=leading_k)
        layer = normalize_layers(layer, self.num_layers, self.model_type)[0]
        shown = result["sim_u"].shape[0]
        from . import plots

        return plots.plot_matrices(result, title=f"W_{kind}, layer {layer}: leading {shown} of k = {result['k']} "
                                                 f"singular vectors (NF = {result['nf']:.3g})")

    # ------------------------------------------------------------------ output

    def save(self, out_dir: PathLike, *, plots: bool = True, matrices_for: Optional[Iterable[Tuple[int, str]]] = None,
             leading_k: int = 25) -> List[str]:
        """Writes the results into `out_dir` (created if needed) and returns the paths.

        Files: ``table.csv`` / ``table.json`` (a row per pair), ``kinds.csv`` /
        ``kinds.json`` (per kind), ``spectra.npz`` (``svsm_<kind>``,
        ``sigma_base_<kind>``, ``sigma_post_<kind>``, ``layers_<kind>``: arrays
        ``[k, layers]``), ``summary.txt``, ``run.json`` (inputs and settings) and,
        with `plots`, ``svsm.png``, ``scaling_bands.png``, ``nf.png`` and
        ``matrices_layer<L>_<kind>.png`` for each (layer, kind) in `matrices_for`
        (default: the first compared layer and kind).

        Every argument is checked before anything is written. The files are
        written into a temporary folder beside `out_dir` and moved into place
        when all are done, so a failure leaves no partial result: a new folder
        appears complete or not at all; an existing folder holding only an
        earlier result is replaced as a whole; one holding other files too
        keeps them and gets the new files.
        """
        out = os.fspath(out_dir)
        target = normalize_output_folder(out, "out_dir")
        if matrices_for is None:
            pairs = [(self.layers[0], self.kinds[0])]
        else:
            pairs = normalize_matrix_pairs(matrices_for, self.layers, self.kinds, self.num_layers, self.model_type,
                                           "matrices_for")
        normalize_leading_k(leading_k)
        with atomic_folder(target, owned=lambda name: SAVED_FILES.fullmatch(name) is not None) as temp:
            return self._write_files(temp, out, plots, pairs, leading_k)

    def _write_files(self, folder: str, out: str, plots: bool, pairs: List[Tuple[int, str]],
                     leading_k: Optional[int]) -> List[str]:
        """Writes the files of :meth:`save` into `folder`; returns their paths under `out`."""
        written: List[str] = []

        def path(name: str) -> str:
            written.append(os.path.join(out, name))
            return os.path.join(folder, name)

        table = self.table
        table.to_csv(path("table.csv"), index=False)
        table.to_json(path("table.json"), orient="records", indent=1)
        kinds = self.kind_table()
        kinds.to_csv(path("kinds.csv"), index=False)
        kinds.to_json(path("kinds.json"), orient="records", indent=1)
        arrays = {}
        for kind in self.kinds:
            if self._has_experts:
                continue
            arrays[f"svsm_{kind}"] = self.svsm(kind)
            arrays[f"sigma_base_{kind}"] = self.sigma(kind, "base")
            arrays[f"sigma_post_{kind}"] = self.sigma(kind, "post")
            arrays[f"layers_{kind}"] = np.array(self.layers_of(kind))
        np.savez(path("spectra.npz"), **arrays)
        with open(path("summary.txt"), "w") as f:
            f.write(self.summary() + "\n")
        with open(path("run.json"), "w") as f:
            json.dump(self._run_info(), f, indent=1)
        if plots and not self._has_experts:
            figures = [("svsm.png", self.plot_svsm()), ("scaling_bands.png", self.plot_scaling_bands()),
                       ("nf.png", self.plot_nf())]
            for layer, kind in pairs:
                figures.append((f"matrices_layer{layer}_{kind}.png", self.plot_matrices(layer, kind, leading_k)))
            for name, figure in figures:
                figure.savefig(path(name), dpi=110)
        if plots and self._has_experts:
            self.plot_expert_nf().savefig(path("nf_experts.png"), dpi=110)
        return written

    def _run_info(self) -> Dict[str, Any]:
        from ._version import __version__

        return {"base": self.base, "post": self.post, "model_type": self.model_type,
                "num_layers": self.num_layers, "layers": self.layers, "kinds": self.kinds,
                "device": self.device, "dtype": self.dtype, "backend": self.backend,
                "elapsed_seconds": round(self.elapsed_seconds, 3), "factor_cache": self.factor_cache,
                "decompositions": self.decompositions if self.factor_cache else None,
                "postsvd_version": __version__}

    def _cache_note(self) -> str:
        if not self.factor_cache:
            return ""
        counts = self.decompositions
        return f" (factor cache: {counts['loaded']} decompositions loaded, {counts['computed']} computed)"

    def summary(self) -> str:
        """A short text report: per kind the pooled scaling mean ± std, the mean
        NF against the unrelated-rotation baseline, and a one-line reading."""
        kinds = self.kind_table()
        lines = [
            f"postsvd: base '{_display_name(self.base)}' -> post '{_display_name(self.post)}'; "
            f"{printable(self.model_type)}, "
            f"{len(self.layers)} of {self.num_layers} layers, {len(self._records)} matrices, "
            f"{self.device} {self.dtype}, {self.elapsed_seconds:.1f} s" + self._cache_note(),
            f"{'kind':<5} {'scaling (top 90%)':>18} {'NF mean':>9} {'NF random':>9}  reading",
        ]
        readings = []
        for row in kinds.itertuples():
            reading = _reading(row.scaling_mean, row.scaling_std, row.nf_mean, row.nf_random)
            readings.append(reading)
            lines.append(f"{row.kind:<5} {row.scaling_mean:>9.4f} ± {row.scaling_std:<6.4f} "
                         f"{row.nf_mean:>9.4f} {row.nf_random:>9.4f}  {reading}")
        consistent = all(r.endswith("+ consistent rotation") for r in readings)
        uniform = all(r.startswith("near-uniform") or r.startswith("unchanged") for r in readings)
        if consistent and uniform:
            overall = ("Overall: post-training looks like near-uniform scaling of the singular values plus one "
                       "consistent rotation of the input and output sides (the paper's finding).")
        elif consistent:
            overall = "Overall: the two sides rotate together (small NF), but the scaling is not uniform."
        elif any("no consistent rotation" in r for r in readings):
            from .lineage import LINEAGE_HINT

            overall = ("Overall: the singular vectors do not rotate consistently (NF near the value for unrelated "
                       f"models); {LINEAGE_HINT}")
        else:
            overall = "Overall: partly consistent rotations; see nf.png and the per-layer table."
        lines.append(overall)
        quantization = self._quantization_note()
        if quantization:
            lines.append(quantization)
        lines.append("How to read: scaling = sigma_post / sigma_base per singular value (1 = unchanged; a small ± "
                     "means one factor for all); NF = ||Q1^T Q2 - I||_F / k is 0 when the input side (U) and the "
                     "output side (V) rotate by the same Q, and about 'NF random' for unrelated models.")
        return "\n".join(lines)

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

    def __repr__(self) -> str:
        return (f"<postsvd.Comparison {printable(self.model_type)}: {_display_name(self.post)} vs "
                f"{_display_name(self.base)}, "
                f"{len(self.layers)} layers x {len(self.kinds)} kinds, {self.device} {self.dtype}>")

    # ------------------------------------------------------------------ helpers

    def _check_kind(self, kind: str) -> str:
        names = normalize_kinds(kind)
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

    def _of_kind(self, kind: str, expert: Union[None, int, str] = None) -> List[Dict[str, Any]]:
        kind = self._check_kind(kind)
        records = [r for r in self._records if r["kind"] == kind]
        if self._has_experts:
            if expert is None:
                raise InvalidArgumentError(f"this model has experts; pass expert= (an index or 'shared') for "
                                           f"kind {kind!r}")
            index = expert_index(expert)
            records = [r for r in records if r["expert"] == index]
        return sorted(records, key=lambda r: r["layer"])

    def _stack(self, kind: str, key: str, expert: Optional[int]) -> np.ndarray:
        return np.stack([r[key] for r in self._of_kind(kind, expert)], axis=1)


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
    scaling = [np.mean(np.concatenate([r["scaling"][: r["scaling_count"]] for r in rs])) for rs in by_expert.values()]
    nf = [np.mean([r["nf"] for r in rs]) for rs in by_expert.values()]
    return {"experts": len(by_expert), "expert_scaling_mean_std": float(np.std(scaling)),
            "expert_nf_mean_std": float(np.std(nf))}


def _reading(scaling_mean: float, scaling_std: float, nf_mean: float, nf_random: float) -> str:
    cv = scaling_std / abs(scaling_mean) if scaling_mean else float("inf")
    if cv < UNIFORM_SCALING_CV and abs(scaling_mean - 1.0) < 0.005:
        scaling = "unchanged singular values"
    elif cv < UNIFORM_SCALING_CV:
        scaling = f"near-uniform scaling x{scaling_mean:.3g}"
    else:
        scaling = "non-uniform scaling"
    ratio = nf_mean / nf_random
    if ratio < CONSISTENT_NF_RATIO:
        rotation = "consistent rotation"
    elif ratio < PARTIAL_NF_RATIO:
        rotation = "partly consistent rotation"
    else:
        rotation = "no consistent rotation"
    return f"{scaling} + {rotation}"
