"""Comparisons on a Ray cluster: ``postsvd.compare(..., executor="ray")``.

The driver (the calling process) opens both folders once to read the
architecture, groups the selected (layer, kind[, expert]) pairs into units
(:func:`plan_units`: a layer's pairs, split where they hold more than
:data:`UNIT_ELEMENTS` weights) and submits one Ray task per unit. Each task
opens the folders by path (a file system every node sees; a Hub model travels
as its :class:`postsvd.hub.ResolvedModel`, and the task fetches its own unit's
tensors into the shared cache, or resolves the model by commit where its node
has another cache path: :func:`postsvd.hub.on_this_machine`), runs
:func:`postsvd._engine.pair_records` (the same per-pair code as a local run)
and returns only the measures (O(k) per pair); no weights go through Ray's
object store. The records are put back in the local run's order, so in the
same precision the tables equal a local run's to the last digit.

Resources: a task asks for one GPU (and uses the CUDA backend) with
``device='cuda'``, or with ``device='auto'`` on a cluster that has GPUs;
otherwise ``num_threads`` CPUs (1 when None) and LAPACK with as many threads.

Faults: a task whose worker dies (killed process, lost node) is retried by
Ray (``max_retries``); a task that raises (a bad input: truncated shard, NaN
weight) is not retried, and the run fails with that error (naming the tensor
and file). Ctrl-C cancels the outstanding tasks and re-raises.

A lost node: Ray notices it within its health check (seconds), marks the node's
running tasks failed and retries them on the other nodes (``max_retries``); the
run goes on and its tables are those of a run without the loss. Only when every
retry of a unit is lost too does the run fail, with a BackendError naming the
unit's tensors.

Fault injection for tests: ``POSTSVD_RAY_FAULT=kill-once:MARKER`` (in the
driver's environment, handed to every task, or in the workers' own): the
first task that creates the file MARKER kills its own worker process
(SIGKILL) before it computes anything; the retry finds MARKER and runs.
``hold-once:MARKER``: that first task writes its process id and node id to
MARKER and waits (up to :data:`HOLD_SECONDS`) before computing, so that a
test can remove its node while it runs.

Tokens: a task finds the Hub token the way huggingface_hub does (``HF_TOKEN`` in
the job's runtime environment, or a stored login on each node); no token is
passed as an argument or stored.

Ray is optional: this module imports it only when a run asks for it
(``pip install postsvd[ray]``).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from . import _core, hub
from ._engine import Fetcher, Run, opened_models, pair_records
from ._extras import install_hint, require
from ._hub_cache import human_bytes
from .errors import BackendError, InvalidArgumentError

#: A unit holds the pairs of one layer up to this many weights (both models); a larger pair is a unit alone.
UNIT_ELEMENTS = 1 << 25
#: Ray retries a task this many times when its worker dies (not when the task raises).
MAX_RETRIES = 3
#: Environment variable of the fault injection (see the module's doc).
FAULT_VARIABLE = "POSTSVD_RAY_FAULT"
#: How long a ``hold-once`` task waits for its node to be removed.
HOLD_SECONDS = 120
#: What to install for executor='ray'.
INSTALL_HINT = install_hint("ray")

_task = None  # the Ray remote function, made on first use


@dataclass(frozen=True)
class RunOptions:
    """What every task needs to open and compare the pairs (only paths and settings travel)."""
    base: str
    post: str
    device: str  # 'auto', 'cpu' or 'cuda'
    precision: str
    memory_budget_bytes: int
    num_threads: Optional[int]
    cache: str  # '' = none
    warm_start: str = "auto"  # 'auto', 'always', 'off'
    warm_from: str = ""  # '' = the base's factors
    intruders: Optional[Dict[str, Any]] = None  # {k, epsilon, side}; None = the core's defaults
    base_model: Optional[hub.ResolvedModel] = None  # as named; a Hub model's tensors are fetched by the task
    post_model: Optional[hub.ResolvedModel] = None
    warm_model: Optional[hub.ResolvedModel] = None
    whole_files: bool = False
    residual_base: bool = False  # an adapter post applies to the base as its residual model


@dataclass
class RunResult:
    records: List[Dict[str, Any]]
    elapsed_seconds: float
    device: str
    decompositions: Dict[str, int]


def import_ray():
    """The ray module, or an ImportError that says how to install it."""
    return require("ray", "executor='ray'")


def check_device(device: Any) -> str:
    """Checks a device of executor='ray' ('auto', 'cpu' or 'cuda') and that Ray is installed."""
    text = device.strip().lower() if isinstance(device, str) else None
    if text not in ("auto", "cpu", "cuda"):
        raise InvalidArgumentError(f"device: with executor='ray' expected 'auto', 'cpu' or 'cuda' (Ray assigns "
                                   f"each task its GPU), got {device!r}")
    import_ray()
    return text


def connect(address: Optional[str] = None):
    """Joins a Ray cluster unless this process already has: `address`, else a running one, else a new local one.

    Returns the ray module.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address is not None:
        ray.init(address=address, logging_level="WARNING")
        return ray
    try:
        ray.init(address="auto", logging_level="WARNING")
    except ConnectionError:  # no running cluster: start one on this machine
        ray.init(include_dashboard=False, logging_level="WARNING")
    return ray


def plan_units(batches: Sequence[Sequence[int]], matrices: Sequence[Dict[str, Any]],
               max_elements: int = UNIT_ELEMENTS, max_pairs: int = 64) -> List[List[int]]:
    """Splits each layer's pair indices into units of at most `max_elements` weights (both models) and
    `max_pairs` pairs (a MoE layer's many small experts: the backend sees a bounded batch)."""
    units: List[List[int]] = []
    for batch in batches:
        unit: List[int] = []
        size = 0
        for index in batch:
            elements = 2 * int(matrices[index]["in_features"]) * int(matrices[index]["out_features"])
            if unit and (size + elements > max_elements or len(unit) >= max_pairs):
                units.append(unit)
                unit, size = [], 0
            unit.append(index)
            size += elements
        if unit:
            units.append(unit)
    return units


def inject_fault(spec: Optional[str]) -> None:
    """Acts on a fault specification (see the module's doc); None or '' does nothing."""
    if not spec:
        return
    kind, _, marker = spec.partition(":")
    if kind not in ("kill-once", "hold-once") or not marker:
        raise InvalidArgumentError(f"{FAULT_VARIABLE}: expected 'kill-once:MARKER_FILE' or "
                                   f"'hold-once:MARKER_FILE', got {spec!r}")
    try:
        descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return  # done once already: this is a retry or another task
    node = import_ray().get_runtime_context().get_node_id() if kind == "hold-once" else ""
    os.write(descriptor, f"{os.getpid()}{' ' + node if node else ''}\n".encode())
    os.close(descriptor)
    if kind == "hold-once":
        time.sleep(HOLD_SECONDS)  # the node goes away meanwhile (or the task goes on after the wait)
    else:
        os.kill(os.getpid(), signal.SIGKILL)


def run_unit(options: RunOptions, device: str, num_threads: int, indices: List[int], fault: Optional[str]):
    """One task: opens both models, fetches what its pairs read of a Hub model, compares the pairs at
    `indices`; returns (records, cache counts)."""
    inject_fault(fault or os.environ.get(FAULT_VARIABLE))
    base, post, warm = (hub.on_this_machine(m, what) if m is not None else None for m, what in (
        (options.base_model, "base"), (options.post_model, "post"), (options.warm_model, "warm_from")))
    intruders = options.intruders or _core.intruder_options()
    comparator = _core.Comparator(base.folder if base else options.base, post.folder if post else options.post,
                                  device, options.precision, [], options.memory_budget_bytes, num_threads,
                                  options.cache, options.warm_start, warm.folder if warm else options.warm_from,
                                  intruders["k"], intruders["epsilon"], intruders["side"], options.residual_base)
    fetched = Fetcher(opened_models(comparator, base, post, warm), options.whole_files).fetch(indices)
    return pair_records(comparator, indices), {**dict(comparator.cache_counts), "fetched_bytes": fetched}


def compare_units(run: Run, *, address: Optional[str] = None, progress: bool = True, desc: str = "") -> RunResult:
    """Runs the selected pairs of `run` as Ray tasks; the records come back in the local run's order."""
    global _task
    options = RunOptions(run.base, run.post, run.device, run.precision, run.budget, run.num_threads, run.cache,
                         run.warm_start, run.warm_from, dict(run.intruders), run.models[0], run.models[1],
                         run.warm_model, run.fetcher.whole_files, run.residual_base)
    batches, arch = run.units(), run.architecture
    ray = connect(address)
    if _task is None:
        _task = ray.remote(run_unit)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = check_device(options.device)
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if device == "cuda" and gpus == 0:
        raise InvalidArgumentError("device='cuda': this Ray cluster has no GPUs; use device='cpu' or 'auto'")
    threads = options.num_threads or 1
    resources = {"num_gpus": 1, "num_cpus": 1} if device == "cuda" else {"num_cpus": threads}
    remote = _task.options(max_retries=MAX_RETRIES, retry_exceptions=False, **resources)
    units = plan_units(batches, arch["matrices"])
    fault = os.environ.get(FAULT_VARIABLE)

    from tqdm.auto import tqdm

    started = time.perf_counter()
    refs = [remote.remote(options, device, threads, unit, fault) for unit in units]
    unit_of = {ref: i for i, ref in enumerate(refs)}
    results: List[Any] = [None] * len(units)
    pending = list(refs)
    slots = int(ray.cluster_resources().get("GPU" if device == "cuda" else "CPU", 0))
    total = sum(len(unit) for unit in units)
    where = f"ray: {len(units)} units, {slots} {'GPUs' if device == 'cuda' else 'CPUs'}"
    fetched = 0
    try:
        with tqdm(total=total, desc=desc, unit="matrix", disable=not progress, leave=True) as bar:
            bar.set_postfix_str(where)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = unit_of[ref]
                    results[i] = _get(ray, ref, units[i], arch["matrices"])
                    fetched += int(results[i][1].get("fetched_bytes", 0))
                    if fetched:
                        bar.set_postfix_str(f"{where}, fetched {human_bytes(fetched)}", refresh=False)
                    bar.update(len(units[i]))
    except BaseException:  # Ctrl-C or a failed unit: stop the cluster's remaining work, then re-raise
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    records: List[Dict[str, Any]] = []
    counts = {"computed": 0, "loaded": 0}
    for unit_records, unit_counts in results:
        records += unit_records
        for key in counts:
            counts[key] += int(unit_counts.get(key, 0))
    return RunResult(records, time.perf_counter() - started, device, counts)


def _get(ray, ref, unit: List[int], matrices: Sequence[Dict[str, Any]]):
    """A unit's result; a task's own error comes out as itself, a lost task as a BackendError naming its pairs."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise
    except ray.exceptions.RayError as error:
        tensors = ", ".join(matrices[i]["tensor"] for i in unit[:3]) + (", ..." if len(unit) > 3 else "")
        raise BackendError(f"ray: the task comparing {tensors} failed after {MAX_RETRIES} retries: "
                           f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error
