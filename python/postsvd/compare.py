"""Comparing a base and a post-trained checkpoint: :func:`compare`.

The run itself lives in :mod:`postsvd._engine` (local) and :mod:`postsvd.distributed` (Ray);
the result, :class:`~postsvd.comparison.Comparison`, in :mod:`postsvd.comparison`. This
module only joins them.
"""
from __future__ import annotations

import os
from typing import Optional, Union

from . import _engine
from ._engine import check_compare_arguments, fetch_plans, open_run, resolve_models
from ._terminal import printable
from ._validate import INTRUDER_DEFAULTS, ExpertsArg, KindsArg, LayersArg
from .comparison import Comparison
from .errors import InvalidArgumentError, naming_models
from .readings import random_rotation_nf

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["compare", "Comparison", "check_compare_arguments", "fetch_plans", "resolve_models", "random_rotation_nf"]


def compare(base: Optional[PathLike], post: PathLike, *, device: str = "cpu", dtype: str = "float32",
            layers: LayersArg = None, kinds: KindsArg = None, progress: bool = True,
            num_threads: Optional[int] = None, memory_budget_bytes: Optional[int] = None,
            cache: Optional[PathLike] = None, experts: ExpertsArg = None, executor: str = "local",
            ray_address: Optional[str] = None, warm_start: Union[bool, str] = True,
            warm_from: Optional[PathLike] = None, whole_files: bool = False,
            intruder_k: int = INTRUDER_DEFAULTS["k"], intruder_epsilon: float = INTRUDER_DEFAULTS["epsilon"],
            intruder_side: str = INTRUDER_DEFAULTS["side"], residual_base: bool = False) -> "Comparison":
    """Compares a base and a post-trained checkpoint of one architecture, matrix by matrix.

    Every selected (layer, kind) pair is decomposed (reduced SVD in the paper's
    orientation ``W = W_hf.T``) and measured: singular values, the SVSM column
    ``sigma_post / sigma_base``, top-90 % scaling statistics, NF, the diagonal
    of ``I_orth`` and the intruder dimensions of Shuttleworth et al. 2024. The pairs stream layer by layer, so memory stays bounded by one
    layer's factors.

    Args:
        base: the base model: a folder (config.json + safetensors, single or sharded), or a
            Hub repo id ``org/name``, ``org/name@revision``, ``hf://org/name[@revision]``
            (an existing folder wins; see :mod:`postsvd.hub` and docs/hub.md). Of a Hub
            model only the tensors of the selected pairs are fetched, into postsvd's
            cache, as the run goes (overlapping the decompositions). None when `post` is a PEFT
            adapter whose adapter_config.json names its base (base_model_name_or_path: a folder
            or a Hub repo id, resolved the same way).
        post: the post-trained model, named the same ways; same architecture and shapes. Or a
            PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors; a folder or a Hub
            repo): each projection it changes is compared as W + ΔW, formed one matrix at a time
            (docs/adapters.md).
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
        whole_files: Hub models: fetch the shards holding the selected tensors
            complete (into the Hugging Face cache) instead of their byte ranges.
        intruder_k, intruder_epsilon, intruder_side: the intruder dimensions
            (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion
            of Equivalence", Algorithm 1; docs/measures.md): among the top
            `intruder_k` singular vectors of each post matrix, those whose
            largest |cosine| with every base singular vector is below
            `intruder_epsilon`. 'output' (the paper's and peft's: the left
            singular vectors of the stored [out, in] weight, V here) or
            'input' (U). The largest |cosines| are kept, so
            :meth:`Comparison.intruders` recounts at any epsilon.
        residual_base: `base` is the residual model that an adapter's initialization left
            (init_lora_weights 'pissa', 'olora', 'corda', 'loftq', 'lora_ga'); such adapters are
            refused without it.

    Returns:
        A :class:`Comparison`.

    Raises:
        BadCheckpointError: a folder is missing or malformed, the model_type is
            unsupported, or the models differ in architecture or shapes (the
            message names the first differing tensors).
        HubError: a Hub model could not be resolved or fetched (one line: repo
            or revision not found, no access, offline with data missing, ...).
        InvalidArgumentError: unknown kind, layer out of range, bad dtype; a NaN
            or Inf weight. An error about one model's data starts with that model
            as written here (``post 'org/model': tensor '...' in FILE: ...``).
        NotBuiltWithCudaError: device 'cuda' in a CPU build.
    """
    if executor not in ("local", "ray"):
        raise InvalidArgumentError(f"executor: expected 'local' or 'ray', got {executor!r}")
    if executor == "ray":
        from . import distributed  # Ray stays optional: imported only when asked for

        distributed.check_device(device)
    # On Ray the tasks decompose; this process only reads the headers and recomputes single pairs (matrices()).
    run = open_run(base, post, device=device, dtype=dtype, layers=layers, kinds=kinds, num_threads=num_threads,
                   memory_budget_bytes=memory_budget_bytes, cache=cache, experts=experts, warm_start=warm_start,
                   warm_from=warm_from, local_device="cpu" if executor == "ray" else None, whole_files=whole_files,
                   intruder_k=intruder_k, intruder_epsilon=intruder_epsilon, intruder_side=intruder_side,
                   residual_base=residual_base)
    desc = f"{printable(run.models[0].label)} vs {printable(run.models[1].label)}"
    with naming_models(*run.named):
        if executor == "ray":
            result = distributed.compare_units(run, address=ray_address, progress=progress, desc=desc)
            return Comparison(run.comparator, result.records, run.layers, run.kinds, result.elapsed_seconds,
                              device=result.device, decompositions=result.decompositions, models=run.models)
        records, elapsed = _engine.run_local(run, progress=progress, desc=desc)
    return Comparison(run.comparator, records, run.layers, run.kinds, elapsed, models=run.models)
