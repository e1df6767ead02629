"""The run engine of a comparison: options, the selection of matrix pairs, and the per-pair work.

:func:`postsvd.compare` (and through it report, track, lineage) runs here: :func:`open_run`
normalizes the options, opens both checkpoints (:class:`postsvd._core.Comparator`) and selects
the pairs; :func:`run_local` decomposes them in this process, layer by layer in chunks;
:mod:`postsvd.distributed` sends the same units to Ray tasks, which call :func:`pair_records`,
the one per-pair computation of every executor. Nothing here builds tables or figures: the
records go to :class:`postsvd.comparison.Comparison`.
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _core, adapters
from ._validate import (
    INTRUDER_DEFAULTS,
    KINDS,
    ExpertsArg,
    KindsArg,
    LayersArg,
    expert_index,
    expert_label,
    normalize_cache,
    normalize_device,
    normalize_dtype,
    normalize_experts,
    normalize_folder,
    normalize_intruders,
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

#: Per-pair values kept after the factors are released (all O(k); intruder_cosines O(intruder k)).
KEPT = ("rows", "cols", "k", "sigma_base", "sigma_post", "scaling", "scaling_mean", "scaling_std",
        "scaling_count", "nf", "iorth_diag", "warm_sweeps", "intruders", "intruder_cosines")
#: Matrix pairs per call into the backend.
CHUNK = 64


@dataclass
class Run:
    """An opened comparison: both checkpoints, the normalized options and the selected pairs."""
    comparator: "_core.Comparator"
    base: str
    post: str
    device: str  # as asked ('cpu', 'cuda:0', 'auto' on Ray)
    precision: str
    budget: int
    num_threads: Optional[int]
    cache: str  # '' = none
    warm_start: str
    warm_from: str
    intruders: Dict[str, Any]  # {k, epsilon, side}
    residual_base: bool  # an adapter post's base is the residual model of its initialization
    layers: List[int]
    kinds: List[str]
    batches: Dict[int, List[int]]  # layer -> indices into the architecture's matrices

    @property
    def architecture(self) -> Dict[str, Any]:
        return self.comparator.architecture

    @property
    def total(self) -> int:
        return sum(len(b) for b in self.batches.values())

    def units(self) -> List[List[int]]:
        """The selected pairs, a list of indices per layer, in layer order."""
        return [self.batches[layer] for layer in sorted(self.batches)]


def open_run(base: Optional[PathLike], post: PathLike, *, device: str = "cpu", dtype: str = "float32",
             layers: LayersArg = None, kinds: KindsArg = None, num_threads: Optional[int] = None,
             memory_budget_bytes: Optional[int] = None, cache: Optional[PathLike] = None,
             experts: ExpertsArg = None, warm_start: Union[bool, str] = True,
             warm_from: Optional[PathLike] = None, local_device: Optional[str] = None,
             intruder_k: int = INTRUDER_DEFAULTS["k"], intruder_epsilon: float = INTRUDER_DEFAULTS["epsilon"],
             intruder_side: str = INTRUDER_DEFAULTS["side"], residual_base: bool = False) -> Run:
    """Checks the options, opens both folders and selects the pairs (see :func:`postsvd.compare`).

    `local_device`: the device of this process's comparator when the pairs run elsewhere (Ray: 'cpu').
    `base` None: the base a PEFT adapter `post` names (postsvd.adapters.resolve_base)."""
    post_path = normalize_folder(post, "post")
    base_model = adapters.resolve_base(base, post_path)
    base_path = base_model.folder
    precision, (device_kind, device_ids), threads, budget, cache_path = _options(
        dtype, local_device or device, num_threads, memory_budget_bytes, cache)
    warm_mode = normalize_warm_start(warm_start)
    warm_from_path = normalize_folder(warm_from, "warm_from") if warm_from is not None else ""
    intruders = normalize_intruders(intruder_k, intruder_epsilon, intruder_side)

    def open_comparator() -> "_core.Comparator":
        return _core.Comparator(base_path, post_path, device_kind, precision, device_ids, budget, threads,
                                cache_path, warm_mode, warm_from_path, intruders["k"], intruders["epsilon"],
                                intruders["side"], bool(residual_base))

    comparator = open_comparator()
    arch = comparator.architecture
    chosen_layers, chosen_kinds = _selection(arch, layers, kinds)
    chosen_experts = _check_experts(normalize_experts(experts), arch)
    batches = select_batches(arch, chosen_layers, chosen_kinds, chosen_experts)
    if not batches:
        raise InvalidArgumentError(f"no matrix selected: layers {layers!r}, kinds {kinds!r}, experts {experts!r}")
    if not base_model.is_local:  # a Hub base an adapter names: fetch what the run reads, then reopen (the
        # reader takes a partial copy's present ranges when it opens the folder)
        adapters.fetch_base(base_model, [arch["matrices"][i] for b in batches.values() for i in b])
        comparator = open_comparator()
    if cache_path:
        _warn_if_cache_may_not_fit(cache_path, [arch["matrices"][i] for b in batches.values() for i in b], precision)
    return Run(comparator, base_path, post_path, device, precision, budget, num_threads, cache_path, warm_mode,
               warm_from_path, intruders, bool(residual_base), chosen_layers, chosen_kinds, batches)


def select_batches(arch: Dict[str, Any], layers: Sequence[int], kinds: Sequence[str],
                   experts: Optional[set]) -> Dict[int, List[int]]:
    """layer -> the indices of the selected sources of that layer (experts: None = all)."""
    layer_set, kind_set = set(layers), set(kinds)
    batches: Dict[int, List[int]] = {}
    for index, source in enumerate(arch["matrices"]):
        if source["layer"] in layer_set and source["kind"] in kind_set and (
                experts is None or source["expert"] == -1 or source["expert"] in experts):
            batches.setdefault(source["layer"], []).append(index)
    return batches


def run_local(run: Run, *, progress: bool = True, desc: str = "") -> Tuple[List[Dict[str, Any]], float]:
    """Decomposes and measures the selected pairs in this process: (records in layer order, seconds)."""
    from tqdm.auto import tqdm

    records: List[Dict[str, Any]] = []
    started = time.perf_counter()
    with tqdm(total=run.total, desc=desc, unit="matrix", disable=not progress, leave=True) as bar:
        for layer in sorted(run.batches):
            bar.set_postfix_str(f"layer {layer}")
            # A MoE layer goes in chunks: the backend sees a bounded batch, the bar moves per chunk.
            for start in range(0, len(run.batches[layer]), CHUNK):
                indices = run.batches[layer][start:start + CHUNK]
                records += pair_records(run.comparator, indices)
                bar.update(len(indices))
    return records, time.perf_counter() - started


def pair_records(comparator: "_core.Comparator", indices: Sequence[int]) -> List[Dict[str, Any]]:
    """The kept measures of the pairs at `indices` (into the architecture's matrices), in that order.

    The one per-pair computation of every executor: :func:`run_local` calls it per chunk of a
    layer, a Ray task (:mod:`postsvd.distributed`) on its unit of pairs.
    """
    matrices = comparator.architecture["matrices"]
    records = []
    for index, measures in zip(indices, comparator.compare(list(indices), False, 0)):
        source = matrices[index]
        record = {"index": index, "layer": source["layer"], "kind": source["kind"],
                  "expert": source["expert"], "tensor": source["tensor"]}
        record.update({key: measures[key] for key in KEPT})
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


def check_compare_arguments(base: Optional[PathLike], posts: Sequence[PathLike], *, device: str = "cpu",
                            dtype: str = "float32", layers: LayersArg = None, kinds: KindsArg = None,
                            num_threads: Optional[int] = None, memory_budget_bytes: Optional[int] = None,
                            cache: Optional[PathLike] = None,
                            matrices_for: Optional[Iterable[Tuple[int, str]]] = None, leading_k: Optional[int] = 25,
                            outs: Sequence[PathLike] = (), experts: ExpertsArg = None,
                            shown_experts: ExpertsArg = None, intruder_k: int = INTRUDER_DEFAULTS["k"],
                            intruder_epsilon: float = INTRUDER_DEFAULTS["epsilon"],
                            intruder_side: str = INTRUDER_DEFAULTS["side"], residual_base: bool = False) -> None:
    """Checks every argument of comparing `base` with each of `posts` and saving the results
    (:func:`compare`, :meth:`Comparison.save`) before anything is computed or written.

    Each post model is opened against the base (headers only: folders, files, architecture and
    shapes); the layer, kind and expert selection, the `matrices_for` items ((layer, kind[, expert])),
    the `shown_experts` (:meth:`Comparison.save`'s `experts`), `leading_k`, the intruder options and the
    output folders `outs` are checked. Raises what :func:`compare` and :meth:`Comparison.save` would
    raise later, naming the argument.
    """
    post_paths = [normalize_folder(post, "post") for post in posts]
    if not post_paths:
        raise InvalidArgumentError("posts: expected at least one post-trained model folder, got none")
    base_paths = [adapters.resolve_base(base, post).folder for post in post_paths]
    precision, _, threads, _, _ = _options(dtype, device, num_threads, memory_budget_bytes, cache)
    normalize_leading_k(leading_k)
    normalize_intruders(intruder_k, intruder_epsilon, intruder_side)
    for out in outs:
        normalize_output_folder(out)
    for base_path, post_path in zip(base_paths, post_paths):
        # A CPU comparator without a cache opens both folders and checks that they match; it decomposes nothing.
        arch = _core.Comparator(base_path, post_path, "cpu", precision, [], 0, threads, "",
                                residual_base=bool(residual_base)).architecture
        chosen_layers, chosen_kinds = _selection(arch, layers, kinds)
        chosen_experts = _check_experts(normalize_experts(experts), arch)
        sources = [arch["matrices"][i] for batch in select_batches(arch, chosen_layers, chosen_kinds,
                                                                    chosen_experts).values() for i in batch]
        if matrices_for is not None:
            items = normalize_matrix_pairs(matrices_for, chosen_layers, chosen_kinds, arch["num_layers"],
                                           arch["model_type"], "matrices")
            _check_matrix_items(items, sources)
        if shown_experts is not None:
            compared = {s["expert"] for s in sources if s["expert"] != -1}
            missing = sorted(expert_label(e) for e in normalize_experts(shown_experts) - compared)
            if missing:
                raise InvalidArgumentError(f"experts shown: {', '.join(str(e) for e in missing)} not compared; "
                                           f"compared experts: {_expert_list(compared)}")


def _check_matrix_items(items: Sequence[Tuple[int, str, Any]], sources: Sequence[Dict[str, Any]]) -> None:
    """Each (layer, kind, expert) item names one compared matrix: an expert is named where the layer's
    kind has experts, and it is one of the compared ones."""
    for layer, kind, expert in items:
        present = {s["expert"] for s in sources if s["layer"] == layer and s["kind"] == kind}
        if expert is None and len(present) > 1:
            raise InvalidArgumentError(f"matrices: layer {layer}, kind {kind!r} has experts; name one as "
                                       f"{layer}:{kind}:EXPERT (compared: {_expert_list(present)})")
        if expert is not None and expert_index(expert) not in present:
            raise InvalidArgumentError(f"matrices: layer {layer}, kind {kind!r} has no compared expert {expert}; "
                                       f"compared: {_expert_list(present) if present - {-1} else 'none'}")


def _expert_list(experts) -> str:
    """'0, 1, 2, shared' from core expert indices."""
    ordered = sorted((e for e in experts if e != -1), key=lambda e: (e < 0, e))
    return ", ".join(str(expert_label(e)) for e in ordered) or "none"


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
                      f"full disk stops the comparison with an error", UserWarning, stacklevel=4)


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
