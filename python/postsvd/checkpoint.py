"""Opening Hugging Face model folders and reading their projection matrices.

Every function here also takes a model named by Hub repo id (``org/name[@revision]``,
``hf://org/name[@revision]``; an existing folder wins): it is resolved through
:mod:`postsvd.hub` (config, index and shard headers), and :func:`read_matrix` fetches
the one matrix it reads. A PEFT adapter (a folder or a Hub repo) opens applied to its base
(docs/adapters.md)."""
from __future__ import annotations

import collections
import os
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from . import _core, adapters, hub
from ._validate import expert_index, normalize_dtype, normalize_kinds, normalize_layers
from .errors import InvalidArgumentError

Checkpoint = _core.Checkpoint
PathLike = Union[str, "os.PathLike[str]"]


ModelArg = Union[PathLike, "hub.ResolvedModel"]


def open_checkpoint(folder: ModelArg, base: Optional[ModelArg] = None, *, residual_base: bool = False) -> Checkpoint:
    """Opens and validates a model folder (config.json plus model.safetensors, or
    the shards named in model.safetensors.index.json), memory-mapped. A Hub model
    opens from postsvd's cache with its headers only: reading a tensor not fetched
    (:func:`postsvd.hub.fetch`) raises BadCheckpointError.

    A PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors; a folder or
    a Hub repo) opens applied to the model `base` (None: the model its
    base_model_name_or_path names, a folder or a Hub repo id): its projections read
    as W + ΔW (:func:`read_matrix`), the rest as the base's (docs/adapters.md).
    `residual_base`: `base` is the residual model an initialization that changed the
    base weights left (PiSSA, OLoRA, ...). `base` is ignored for a model folder.

    Raises:
        BadCheckpointError: the folder or a file in it is missing or malformed;
            the message names the file and the tensor.
        InvalidArgumentError: an adapter option postsvd does not merge (naming it).
        HubError: a Hub model could not be resolved.
    """
    return _opened(folder, base, residual_base)[1]


def _opened(folder: ModelArg, base: Optional[ModelArg] = None, residual_base: bool = False
            ) -> Tuple[Tuple["hub.ResolvedModel", Optional["hub.ResolvedModel"]], Checkpoint]:
    """((the model, the base an adapter applies to or None), the open checkpoint)."""
    model = hub.resolve(folder, "folder")
    if not adapters.is_adapter(model.folder):
        return (model, None), _core.Checkpoint(model.folder)
    base_model = hub.resolve(base, "base") if base is not None else adapters.resolve_base(model)
    return (model, base_model), _core.Checkpoint(model.folder, base_model.folder, bool(residual_base))


def _as_checkpoint(checkpoint: Union[Checkpoint, PathLike, "hub.ResolvedModel"]) -> Checkpoint:
    return checkpoint if isinstance(checkpoint, _core.Checkpoint) else open_checkpoint(checkpoint)


def architecture(checkpoint: Union[Checkpoint, PathLike]) -> Dict[str, Any]:
    """The (layer, kind) -> tensor map of a checkpoint, as plain data.

    Returns ``{"model_type", "num_layers", "matrices": [source, ...]}``; each
    source is a dict with ``layer``, ``kind``, ``expert`` (-1 when not an
    expert, ``postsvd._core.SHARED_EXPERT`` for a shared expert), ``tensor``,
    ``conv1d``, ``in_features``, ``out_features``, ``out_offset``,
    ``fused_out``, ``out_step``, ``out_group``, ``out_group_stride``,
    ``stacked`` and ``stacked_index`` (fused tensors such as phi3
    ``qkv_proj`` give one source per part; DeepSeek's ``kv_b_proj`` one per
    K and V half, as per-head column groups; fused 3-D expert tensors one per
    expert slice; ``mxfp4_scales`` names the scales of an MXFP4 ``*_blocks``
    tensor, empty otherwise). ``warnings`` lists what the mapping left
    out that a caller should hear about (weight layers beyond config.json's
    layer count).

    Raises:
        BadCheckpointError: unknown model_type (the message lists the supported
            ones) or a tensor missing or of the wrong shape.
    """
    return _core.detect_architecture(_as_checkpoint(checkpoint))


def supported_model_types() -> List[str]:
    """The config.json ``model_type`` values postsvd maps to (layer, kind)."""
    return list(_core.supported_model_types())


def find_source(arch: Dict[str, Any], layer: int, kind: str, expert: Union[int, str] = -1) -> Dict[str, Any]:
    """The source dict of (layer, kind[, expert]) in ``arch``; a clear error when absent.
    `expert`: a routed expert's index, 'shared', or -1 (not an expert)."""
    layer = normalize_layers(layer, arch["num_layers"], arch["model_type"], what="layer")[0]
    kinds = normalize_kinds(kind, what="kind")
    if len(kinds) != 1:
        raise InvalidArgumentError(f"kind: expected one kind, got {kind!r}")
    kind = kinds[0]
    index = expert_index(expert)
    for source in arch["matrices"]:
        if source["layer"] == layer and source["kind"] == kind and source["expert"] == index:
            return source
    have = sorted({s["kind"] for s in arch["matrices"] if s["layer"] == layer})
    raise InvalidArgumentError(
        f"no matrix (layer {layer}, kind {kind!r}, expert {expert}) in this {arch['model_type']} model; "
        f"layer {layer} has kinds {', '.join(have)}")


def read_matrix(checkpoint: Union[Checkpoint, PathLike], layer: int, kind: str, *,
                expert: Union[int, str] = -1, dtype: str = "float32") -> np.ndarray:
    """One projection matrix in the paper's orientation ``W = W_hf.T``, ``[in, out]``.

    Fused tensors are split (phi3 ``qkv_proj`` -> q, k, v; gpt2 ``c_attn``;
    DeepSeek ``kv_b_proj`` -> kv_b_k, kv_b_v; fused experts -> one matrix per
    expert) and GPT-2 Conv1D tensors (stored ``[in, out]``) are taken as they
    are. `expert`: a routed expert's index, 'shared' or -1 (not an expert).

    Raises:
        InvalidArgumentError: unknown kind, layer out of range, NaN/Inf weight.
    """
    if isinstance(checkpoint, _core.Checkpoint):
        weights, cp = None, checkpoint
    else:
        (model, base), cp = _opened(checkpoint)
        weights = base or model  # an adapter reads its base's weights (its own file came whole)
    source = find_source(architecture(cp), layer, kind, expert)
    precision = normalize_dtype(dtype)
    if weights is not None and not weights.is_local:
        hub.fetch(weights, hub.source_tensors(cp, [source]))  # a Hub model: this matrix's bytes, once
    return _core.read_matrix(cp, source, precision)


def describe(checkpoint: Union[Checkpoint, PathLike, "hub.ResolvedModel"], *, values: bool = True,
             base: Optional[ModelArg] = None) -> Dict[str, Any]:
    """A summary of a model: architecture, layers, files, dtypes and projection shapes, and every problem a
    comparison would refuse it for; ``model`` says what was read (the name, and for a Hub model the repo id,
    revision and commit). A PEFT adapter is described applied to its base (`base`, or the one it names; see
    :func:`open_checkpoint`): its base's architecture and files, and under ``adapter`` what it applies
    (``base_model``: that base as named).

    The checks are those of :func:`postsvd.compare` on one model, without decomposing: every mapped tensor
    present with the shape and dtype config.json gives, FP8 weights' scales present and shaped, MXFP4
    blocks and scales that pair, and (with `values`, which reads every projection) weights finite once
    dequantized. ``problems`` lists one line per problem, naming its file and tensor; empty means the
    folder compares. ``warnings`` lists what the mapping leaves out (weight layers or routed experts
    config.json does not count).

    A Hub model is described from its headers: nothing of its tensors is fetched. The projections whose
    bytes postsvd's cache lacks are checked from the headers (present, shaped) and counted in
    ``not_fetched``; their scales and values are checked when a command fetches them.

    Raises:
        BadCheckpointError: the folder cannot be opened at all (no config.json, a malformed header).
        HubError: a Hub model could not be resolved.
    """
    if isinstance(checkpoint, _core.Checkpoint):
        model, base_model = hub.resolve(checkpoint.folder, "folder"), None
        cp = checkpoint
    else:
        (model, base_model), cp = _opened(checkpoint, base)
    check = _core.check_checkpoint(cp, bool(values))
    arch = check["architecture"] or {"model_type": cp.config.get("model_type"), "num_layers": None,
                                     "matrices": [], "warnings": []}
    names = cp.tensor_names()
    dtype_counts: Dict[str, int] = collections.Counter()
    parameters = 0
    for name in names:
        info = cp.info(name)
        dtype_counts[info["dtype"]] += 1
        parameters += int(np.prod(info["shape"], dtype=np.int64))
    kinds: Dict[str, Dict[str, Any]] = {}
    for source in arch["matrices"]:
        entry = kinds.setdefault(source["kind"], {"in_features": source["in_features"],
                                                  "out_features": source["out_features"],
                                                  "tensor": source["tensor"], "count": 0})
        entry["count"] += 1
    config = cp.config
    return {
        "folder": cp.folder,
        "model": model.record(),
        "model_type": arch["model_type"],
        "num_layers": arch["num_layers"],
        "files": [os.path.basename(f) for f in cp.files()],
        "sharded": cp.sharded,
        "num_tensors": len(names),
        "parameters": parameters,
        "dtypes": dict(dtype_counts),
        "torch_dtype": config.get("torch_dtype", config.get("dtype")),
        "kinds": kinds,
        "warnings": list(arch.get("warnings", [])),  # e.g. weight layers config.json does not count
        "problems": list(check["problems"]),  # what compare would refuse; [] = the folder compares
        "values_checked": bool(values),
        "not_fetched": check["not_fetched"],  # a Hub model: projections checked from the headers only
        "adapter": cp.adapter,  # a PEFT adapter: what it applies (None for a model folder)
        "base_model": base_model.record() if base_model is not None else None,
    }
