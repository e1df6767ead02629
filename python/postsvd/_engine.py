"""The run engine of a comparison: options, the selection of matrix pairs, and the per-pair work.

:func:`postsvd.compare` (and through it report, track, lineage) runs here: :func:`open_run`
normalizes the options, opens both checkpoints (:class:`postsvd._core.Comparator`) and selects
the pairs; :func:`run_local` decomposes them in this process, layer by layer in chunks;
:mod:`postsvd.distributed` sends the same units to Ray tasks, which call :func:`pair_records`,
the one per-pair computation of every executor. Nothing here builds tables or figures: the
records go to :class:`postsvd.comparison.Comparison`.

Models named by Hub repo id (:mod:`postsvd.hub`) are resolved first (:func:`resolve_models`:
config, index and shard headers, enough to open and check both and select the pairs); the
tensors are fetched unit by unit as the run goes (:class:`Fetcher`): locally a fetch thread
stays up to :data:`FETCH_AHEAD` units ahead of the unit decomposing (:func:`run_local`), on
Ray each task fetches its own unit into the shared cache.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _core, adapters, hub
from ._hub_cache import human_bytes
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
    normalize_intruders,
    normalize_kinds,
    normalize_layers,
    normalize_leading_k,
    normalize_matrix_pairs,
    normalize_output_folder,
    normalize_threads,
    normalize_warm_start,
)
from .errors import InvalidArgumentError, naming_models

PathLike = Union[str, "os.PathLike[str]"]

#: Per-pair values kept after the factors are released (all O(k); intruder_cosines O(intruder k)).
KEPT = ("rows", "cols", "k", "sigma_base", "sigma_post", "scaling", "scaling_mean", "scaling_std",
        "scaling_count", "nf", "iorth_diag", "warm_sweeps", "intruders", "intruder_cosines")
#: Matrix pairs per call into the backend.
CHUNK = 64
#: Hub models: units of pairs whose tensors are fetched ahead of the unit decomposing (see run_local). While
#: unit i decomposes, units i+1 .. i+FETCH_AHEAD may be fetched, never more: what is fetched and not yet
#: decomposed stays bounded by FETCH_AHEAD units (on disk, in postsvd's Hub cache; the fetch itself holds
#: one read buffer per file it reads, hub.PARALLEL_FILES at most).
FETCH_AHEAD = 4


def named_models(*models: Tuple[str, Optional["hub.ResolvedModel"]]) -> Tuple[Tuple[str, str, str], ...]:
    """(role, model) pairs as :func:`postsvd.errors.naming_models` takes them: the name as the caller wrote it
    (a Hub id or a folder) names the model in errors, the resolved folder (what the core opens) is how an
    error is matched to it. None (an absent warm_from) is left out."""
    return tuple((role, model.name, model.folder) for role, model in models if model is not None)


def resolve_models(base: Optional[Union[PathLike, "hub.ResolvedModel"]],
                   posts: Sequence[Union[PathLike, "hub.ResolvedModel"]], what: str = "post"
                   ) -> Tuple["hub.ResolvedModel", List["hub.ResolvedModel"]]:
    """The base and post arguments as models: local folders checked, Hub names resolved (headers only; see
    :func:`postsvd.hub.resolve`; a PEFT adapter on the Hub comes with its two small files), ResolvedModels as
    they are. The one resolution of every comparison. `base` None: the base the adapters among `posts` name
    (:func:`postsvd.adapters.resolve_base`, resolved the same way); `what` names the posts in errors."""
    post_models = [hub.resolve(post, what) for post in posts]
    if base is not None:
        return hub.resolve(base, "base"), post_models
    if not post_models:
        raise InvalidArgumentError(f"base: missing, and no {what} model names one")
    return adapters.common_base(post_models), post_models


def opened_models(comparator: "_core.Comparator", base: Optional["hub.ResolvedModel"],
                  post: Optional["hub.ResolvedModel"], warm: Optional["hub.ResolvedModel"]
                  ) -> List[Tuple["hub.ResolvedModel", "_core.Checkpoint"]]:
    """The models of a comparator with their open checkpoints, as :class:`Fetcher` takes them (None: a model the
    caller has not named). A Hub warm_from is opened here, unless it is an adapter (nothing of it to fetch)."""
    models = [(m, checkpoint) for m, checkpoint in ((base, comparator.base), (post, comparator.post)) if m is not None]
    if warm is not None and not warm.is_local and not adapters.is_adapter(warm.folder):
        models.append((warm, _core.Checkpoint(warm.folder)))
    return models


class Fetcher:
    """The Hub models of a run (local folders need nothing) and the stored tensors each pair reads from them:
    the source's tensor, FP8 scales, MXFP4 scales (:func:`postsvd.hub.source_tensors`), from the headers."""

    def __init__(self, models: Sequence[Tuple["hub.ResolvedModel", "_core.Checkpoint"]], whole_files: bool = False):
        self.whole_files = whole_files
        # A PEFT adapter reads the comparison base's weights (fetched as the base's) and its own file, which came
        # whole when it was resolved: nothing of it to fetch here.
        self._remote = [(model, checkpoint, _core.detect_architecture(checkpoint)["matrices"])
                        for model, checkpoint in models if not model.is_local and checkpoint.adapter is None]

    def __bool__(self) -> bool:
        return bool(self._remote)

    def tensors(self, indices: Iterable[int]) -> List[Tuple["hub.ResolvedModel", List[str]]]:
        """Per Hub model, the stored tensors the pairs at `indices` read."""
        chosen = list(indices)
        return [(model, hub.source_tensors(checkpoint, [sources[i] for i in chosen]))
                for model, checkpoint, sources in self._remote]

    def fetch(self, indices: Iterable[int], on_bytes: Optional[Callable[[int], Any]] = None) -> int:
        """Fetches what the pairs at `indices` read that the cache lacks; returns the bytes received.
        `on_bytes(n)` is called as bytes arrive (from the fetch's threads)."""
        total = 0
        for model, names in self.tensors(indices):
            seen = [0]

            def progress(done: int, _total: int) -> None:
                if on_bytes is not None:
                    on_bytes(done - seen[0])
                seen[0] = done

            total += hub.fetch(model, names, whole_files=self.whole_files, progress=progress).bytes_fetched
        return total


@dataclass
class Run:
    """An opened comparison: both checkpoints, the normalized options and the selected pairs."""
    comparator: "_core.Comparator"
    base: str  # the folders the core reads (a Hub model's: its folder in postsvd's cache)
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
    models: Tuple["hub.ResolvedModel", "hub.ResolvedModel"]  # base, post as named
    warm_model: Optional["hub.ResolvedModel"]
    fetcher: Fetcher

    @property
    def architecture(self) -> Dict[str, Any]:
        return self.comparator.architecture

    @property
    def total(self) -> int:
        return sum(len(b) for b in self.batches.values())

    @property
    def named(self) -> Tuple[Tuple[str, str, str], ...]:
        """The models as :func:`postsvd.errors.naming_models` takes them (see :func:`named_models`)."""
        return named_models(("base", self.models[0]), ("post", self.models[1]), ("warm_from", self.warm_model))

    def units(self) -> List[List[int]]:
        """The selected pairs, a list of indices per layer, in layer order."""
        return [self.batches[layer] for layer in sorted(self.batches)]

    def local_units(self) -> List[Tuple[int, List[int]]]:
        """(layer, pair indices) of each call into the backend of a local run (see run_local)."""
        size = 1 if self.fetcher and self.comparator.device == "cpu" else CHUNK
        return [(layer, self.batches[layer][start:start + size]) for layer in sorted(self.batches)
                for start in range(0, len(self.batches[layer]), size)]


def open_run(base: Optional[Union[PathLike, "hub.ResolvedModel"]], post: Union[PathLike, "hub.ResolvedModel"], *,
             device: str = "cpu", dtype: str = "float32", layers: LayersArg = None, kinds: KindsArg = None,
             num_threads: Optional[int] = None, memory_budget_bytes: Optional[int] = None,
             cache: Optional[PathLike] = None, experts: ExpertsArg = None, warm_start: Union[bool, str] = True,
             warm_from: Optional[Union[PathLike, "hub.ResolvedModel"]] = None, local_device: Optional[str] = None,
             whole_files: bool = False, intruder_k: int = INTRUDER_DEFAULTS["k"],
             intruder_epsilon: float = INTRUDER_DEFAULTS["epsilon"],
             intruder_side: str = INTRUDER_DEFAULTS["side"], residual_base: bool = False) -> Run:
    """Checks the options, opens both models and selects the pairs (see :func:`postsvd.compare`); a Hub
    model's tensors are not fetched yet (:attr:`Run.fetcher`).

    `local_device`: the device of this process's comparator when the pairs run elsewhere (Ray: 'cpu').
    `base` None: the base a PEFT adapter `post` names (see :func:`resolve_models`)."""
    base_model, (post_model,) = resolve_models(base, [post])
    precision, (device_kind, device_ids), threads, budget, cache_path = _options(
        dtype, local_device or device, num_threads, memory_budget_bytes, cache)
    warm_mode = normalize_warm_start(warm_start)
    warm_model = hub.resolve(warm_from, "warm_from") if warm_from is not None else None
    warm_from_path = warm_model.folder if warm_model is not None else ""
    intruders = normalize_intruders(intruder_k, intruder_epsilon, intruder_side)
    named = named_models(("base", base_model), ("post", post_model), ("warm_from", warm_model))
    with naming_models(*named):
        comparator = _core.Comparator(base_model.folder, post_model.folder, device_kind, precision, device_ids,
                                      budget, threads, cache_path, warm_mode, warm_from_path, intruders["k"],
                                      intruders["epsilon"], intruders["side"], bool(residual_base))
    arch = comparator.architecture
    chosen_layers, chosen_kinds = _selection(arch, layers, kinds)
    chosen_experts = _check_experts(normalize_experts(experts), arch)
    batches = select_batches(arch, chosen_layers, chosen_kinds, chosen_experts)
    if not batches:
        raise InvalidArgumentError(f"no matrix selected: layers {layers!r}, kinds {kinds!r}, experts {experts!r}")
    if cache_path:
        _warn_if_cache_may_not_fit(cache_path, [arch["matrices"][i] for b in batches.values() for i in b], precision)
    with naming_models(*named):
        models = opened_models(comparator, base_model, post_model, warm_model)
    return Run(comparator, base_model.folder, post_model.folder, device, precision, budget, num_threads, cache_path,
               warm_mode, warm_from_path, intruders, bool(residual_base), chosen_layers, chosen_kinds, batches,
               (base_model, post_model), warm_model, Fetcher(models, whole_files))


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
    """Decomposes and measures the selected pairs in this process: (records in layer order, seconds).

    The pairs go to the backend in units: a layer, in chunks of CHUNK pairs (a MoE layer: the backend sees
    a bounded batch). Hub models: a fetch thread fetches each unit's tensors at most FETCH_AHEAD units
    ahead of the unit decomposing, so fetching overlaps the decompositions, and on the CPU a unit is one
    pair (the CPU backend decomposes pair by pair anyway, and the first unit, whose fetch nothing can
    hide, stays small); the bar shows the bytes fetched."""
    from tqdm.auto import tqdm

    units = run.local_units()
    records: List[Dict[str, Any]] = []
    started = time.perf_counter()
    with tqdm(total=run.total, desc=desc, unit="matrix", disable=not progress, leave=True) as bar:
        fetched = _FetchedBytes(bar)
        prefetch: Optional[_Prefetcher] = None

        def on_bytes(n: int) -> None:
            if prefetch is not None and prefetch.stopped():
                raise _Stopped()  # the run is over: stop this fetch at its next bytes
            fetched.add(n)

        if run.fetcher:
            prefetch = _Prefetcher(lambda i: run.fetcher.fetch(units[i][1], on_bytes), len(units), FETCH_AHEAD)
        try:
            for i, (layer, indices) in enumerate(units):
                fetched.layer = layer
                fetched.show()
                if prefetch is not None:
                    prefetch.ready(i)
                records += pair_records(run.comparator, indices)
                bar.update(len(indices))
        finally:
            if prefetch is not None:
                prefetch.close()
        fetched.show()
    return records, time.perf_counter() - started


class _FetchedBytes:
    """The bar's postfix: the layer decomposing and the bytes fetched so far (counted from the fetch's threads)."""

    def __init__(self, bar):
        self.bar, self.layer, self.bytes = bar, None, 0
        self._lock = threading.Lock()
        self._shown = 0.0

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n
        if time.monotonic() - self._shown > 0.5:
            self.show()

    def show(self) -> None:
        self._shown = time.monotonic()
        text = f"layer {self.layer}" + (f", fetched {human_bytes(self.bytes)}" if self.bytes else "")
        self.bar.set_postfix_str(text)


class _Stopped(Exception):
    """Raised inside a fetch that the run no longer needs (the run ended or failed)."""


class _Prefetcher:
    """Runs fetch(0), fetch(1), ... in a thread, fetch(j) only once unit j - ahead is decomposing; ready(i) waits
    for fetch(i) (raising its error). close() stops a fetch in progress at its next bytes and joins the thread."""

    def __init__(self, fetch: Callable[[int], Any], count: int, ahead: int):
        self._fetch, self._count, self._ahead = fetch, count, ahead
        self._cond = threading.Condition()
        self._current = 0  # the unit decomposing (or about to)
        self._done = 0  # units fetched
        self._error: Optional[BaseException] = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="postsvd-fetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for j in range(self._count):
                with self._cond:
                    while not self._stop and j > self._current + self._ahead:
                        self._cond.wait()
                    if self._stop:
                        return
                self._fetch(j)
                with self._cond:
                    self._done = j + 1
                    self._cond.notify_all()
        except BaseException as error:  # handed to the run's thread by ready()
            with self._cond:
                self._error = error
                self._cond.notify_all()

    def stopped(self) -> bool:
        return self._stop

    def ready(self, i: int) -> None:
        with self._cond:
            self._current = i
            self._cond.notify_all()
            while self._done <= i and self._error is None:
                self._cond.wait()
            if self._done <= i:
                raise self._error  # type: ignore[misc]

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()


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


def check_compare_arguments(base: Optional[Union[PathLike, "hub.ResolvedModel"]],
                            posts: Sequence[Union[PathLike, "hub.ResolvedModel"]], *, device: str = "cpu",
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
    shapes; a Hub model is resolved, nothing of its tensors fetched); the layer, kind and expert
    selection, the `matrices_for` items ((layer, kind[, expert])), the `shown_experts`
    (:meth:`Comparison.save`'s `experts`), `leading_k`, the intruder options and the output folders
    `outs` are checked. Raises what :func:`compare` and :meth:`Comparison.save` would raise later,
    naming the argument.
    """
    _checked_selections(base, posts, device=device, dtype=dtype, layers=layers, kinds=kinds,
                        num_threads=num_threads, memory_budget_bytes=memory_budget_bytes, cache=cache,
                        matrices_for=matrices_for, leading_k=leading_k, outs=outs, experts=experts,
                        shown_experts=shown_experts, intruder_k=intruder_k, intruder_epsilon=intruder_epsilon,
                        intruder_side=intruder_side, residual_base=residual_base)


def fetch_plans(base: Optional[Union[PathLike, "hub.ResolvedModel"]],
                posts: Sequence[Union[PathLike, "hub.ResolvedModel"]], *, layers: LayersArg = None,
                kinds: KindsArg = None, experts: ExpertsArg = None, whole_files: bool = False, dtype: str = "float32",
                residual_base: bool = False) -> List["hub.FetchPlan"]:
    """What comparing `base` with each of `posts` would fetch (the dry run of compare, report and track): a
    :class:`postsvd.hub.FetchPlan` per model, the base's covering every comparison; local folders' plans
    are empty, and so are PEFT adapters' (an adapter on the Hub comes whole when it is resolved; the base's
    tensors it reads are the base's plan). The arguments are checked as :func:`check_compare_arguments`
    checks them."""
    selections = _checked_selections(base, posts, layers=layers, kinds=kinds, experts=experts, dtype=dtype,
                                     residual_base=residual_base)
    wanted: Dict[str, Tuple["hub.ResolvedModel", List[str]]] = {}
    for base_model, post_model, comparator, indices in selections:
        fetcher = Fetcher([(base_model, comparator.base), (post_model, comparator.post)])
        for model, names in fetcher.tensors(indices):
            wanted.setdefault(model.folder, (model, []))[1].extend(names)
    plans = []
    for model in [selections[0][0]] + [post for _, post, _, _ in selections]:
        names = wanted.get(model.folder, (model, []))[1]
        plans.append(hub.plan(model, names, whole_files=whole_files))
    return plans


def _checked_selections(base, posts, *, device: str = "cpu", dtype: str = "float32", layers: LayersArg = None,
                        kinds: KindsArg = None, num_threads: Optional[int] = None,
                        memory_budget_bytes: Optional[int] = None, cache: Optional[PathLike] = None,
                        matrices_for: Optional[Iterable[Tuple[int, str]]] = None, leading_k: Optional[int] = 25,
                        outs: Sequence[PathLike] = (), experts: ExpertsArg = None, shown_experts: ExpertsArg = None,
                        intruder_k: int = INTRUDER_DEFAULTS["k"],
                        intruder_epsilon: float = INTRUDER_DEFAULTS["epsilon"],
                        intruder_side: str = INTRUDER_DEFAULTS["side"], residual_base: bool = False
                        ) -> List[Tuple["hub.ResolvedModel", "hub.ResolvedModel", "_core.Comparator", List[int]]]:
    """check_compare_arguments's checks; per post: (base, post, a comparator of both, the selected pairs)."""
    posts = list(posts)
    if not posts:
        raise InvalidArgumentError("posts: expected at least one post-trained model folder, got none")
    base_model, post_models = resolve_models(base, posts)
    precision, _, threads, _, _ = _options(dtype, device, num_threads, memory_budget_bytes, cache)
    normalize_leading_k(leading_k)
    normalize_intruders(intruder_k, intruder_epsilon, intruder_side)
    for out in outs:
        normalize_output_folder(out)
    selections = []
    for post_model in post_models:
        # A CPU comparator without a cache opens both folders and checks that they match; it decomposes nothing.
        with naming_models(*named_models(("base", base_model), ("post", post_model))):
            comparator = _core.Comparator(base_model.folder, post_model.folder, "cpu", precision, [], 0, threads,
                                          "", residual_base=bool(residual_base))
        arch = comparator.architecture
        chosen_layers, chosen_kinds = _selection(arch, layers, kinds)
        chosen_experts = _check_experts(normalize_experts(experts), arch)
        indices = [i for batch in select_batches(arch, chosen_layers, chosen_kinds, chosen_experts).values()
                   for i in batch]
        sources = [arch["matrices"][i] for i in indices]
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
        selections.append((base_model, post_model, comparator, indices))
    return selections


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
