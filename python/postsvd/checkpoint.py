"""Opening Hugging Face model folders and reading their projection matrices."""
from __future__ import annotations

import collections
import os
from typing import Any, Dict, List, Optional, Union

import numpy as np

from . import _core
from ._validate import expert_index, normalize_dtype, normalize_folder, normalize_kinds, normalize_layers
from .errors import InvalidArgumentError

Checkpoint = _core.Checkpoint
PathLike = Union[str, "os.PathLike[str]"]


def open_checkpoint(folder: PathLike, base: Optional[PathLike] = None, *, residual_base: bool = False) -> Checkpoint:
    """Opens and validates a model folder (config.json plus model.safetensors, or
    the shards named in model.safetensors.index.json), memory-mapped.

    A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) opens
    applied to the model folder `base` (None: the folder its base_model_name_or_path
    names): its projections read as W + ΔW (:func:`read_matrix`), the rest as the base's
    (docs/adapters.md). `residual_base`: `base` is the residual model an initialization
    that changed the base weights left (PiSSA, OLoRA, ...). `base` is ignored for a
    model folder.

    Raises:
        BadCheckpointError: the folder or a file in it is missing or malformed;
            the message names the file and the tensor.
        InvalidArgumentError: an adapter option postsvd does not merge (naming it).
    """
    base_path = normalize_folder(base, "base") if base is not None else ""
    return _core.Checkpoint(normalize_folder(folder, "folder"), base_path, bool(residual_base))


def _as_checkpoint(checkpoint: Union[Checkpoint, PathLike]) -> Checkpoint:
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
    layer = normalize_layers(layer, arch["num_layers"], arch["model_type"])[0]
    kinds = normalize_kinds(kind)
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
    cp = _as_checkpoint(checkpoint)
    source = find_source(architecture(cp), layer, kind, expert)
    return _core.read_matrix(cp, source, normalize_dtype(dtype))


def describe(checkpoint: Union[Checkpoint, PathLike]) -> Dict[str, Any]:
    """A summary of a model folder: architecture, layers, files, dtypes and projection shapes (an adapter
    folder: its base's, and under ``adapter`` what the adapter applies)."""
    cp = _as_checkpoint(checkpoint)
    arch = architecture(cp)
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
        "adapter": cp.adapter,  # a PEFT adapter folder: what it applies (None for a model folder)
    }
