"""Decomposing single matrices with postsvd's backends."""
from __future__ import annotations

import threading
from typing import Dict, Optional, Tuple

import numpy as np

from . import _core
from ._validate import INTRUDER_DEFAULTS, normalize_device, normalize_dtype, normalize_intruders, normalize_leading_k
from .errors import InvalidArgumentError

_backends: Dict[Tuple[str, Tuple[int, ...]], _core.Backend] = {}
_backends_lock = threading.Lock()


def get_backend(device: str = "cpu") -> _core.Backend:
    """The shared backend for `device` ('cpu', 'cuda', 'cuda:N'), created on first use.

    Creating a CUDA backend costs handles and streams, so :func:`svd` reuses one
    per device. Calls on one backend are serialized by :func:`svd`.
    """
    kind, ids = normalize_device(device)
    key = (kind, tuple(ids))
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            backend = _core.Backend(kind, list(ids))
            _backends[key] = backend
        return backend


_call_lock = threading.Lock()


def _as_float_matrix(array, name: str) -> np.ndarray:
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # a torch tensor: bf16 has no numpy dtype
        import torch

        tensor = array.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        array = tensor.numpy()
    matrix = np.asarray(array)
    if matrix.ndim != 2:
        raise InvalidArgumentError(f"{name}: expected a 2-D array [rows, cols], got shape {list(matrix.shape)}")
    if matrix.dtype.kind in "biu":
        matrix = matrix.astype(np.float64)
    elif matrix.dtype.kind != "f":
        raise InvalidArgumentError(f"{name}: expected a real float array, got dtype {matrix.dtype}")
    return matrix


def svd(array, dtype: Optional[str] = None, device: str = "cpu") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduced SVD of one matrix in the paper's orientation, with postsvd's sign rule.

    ``array`` is ``W`` with shape ``[m, n]`` (for a checkpoint weight, the
    paper's ``W = W_hf.T``, ``[in, out]``). Returns ``(U, S, V)`` with
    ``W = U @ np.diag(S) @ V.T``, ``U`` ``[m, k]``, ``S`` ``[k]`` descending,
    ``V`` ``[n, k]``, ``k = min(m, n)``; the largest-magnitude entry of every
    column of ``U`` is positive (the matching column of ``V`` flips with it).

    Args:
        array: a 2-D numpy array (float16/32/64, C or Fortran order, any
            strides; integers are converted) or a torch tensor.
        dtype: working precision, 'float32' or 'float64'; ``None`` takes
            float64 for float64 input and float32 otherwise.
        device: 'cpu', or 'cuda' / 'cuda:N' in a CUDA build.

    Returns:
        ``(U, S, V)`` as numpy arrays of the working precision.

    Raises:
        InvalidArgumentError: not 2-D, empty, not a float array, NaN or Inf entries.
        NotBuiltWithCudaError: device 'cuda' in a CPU build.
    """
    matrix = _as_float_matrix(array, "array")
    precision = ("float64" if matrix.dtype == np.float64 else "float32") if dtype is None else normalize_dtype(dtype)
    backend = get_backend(device)
    with _call_lock:
        return backend.svd(matrix, precision)


def pair_measures(base, post, dtype: str = "float32", device: str = "cpu", full_matrices: bool = False,
                  leading_k: Optional[int] = None, intruder_k: int = INTRUDER_DEFAULTS["k"],
                  intruder_epsilon: float = INTRUDER_DEFAULTS["epsilon"],
                  intruder_side: str = INTRUDER_DEFAULTS["side"]) -> dict:
    """The paper's measures of one pair of equal-shape matrices (paper orientation ``[in, out]``).

    Returns a dict with ``sigma_base``, ``sigma_post``, ``scaling``,
    ``scaling_mean``, ``scaling_std`` (top 90 %), ``nf``, ``iorth_diag``,
    ``rows``, ``cols``, ``k``, ``intruders`` and ``intruder_cosines`` (the intruder dimensions,
    as in :func:`postsvd.compare`) and, with ``full_matrices``, ``sim_u``,
    ``sim_v``, ``difference``, ``q1``, ``q2``, ``iorth`` (leading ``leading_k``).
    """
    base_matrix = _as_float_matrix(base, "base")
    post_matrix = _as_float_matrix(post, "post")
    if base_matrix.shape != post_matrix.shape:
        raise InvalidArgumentError(
            f"post: expected the shape of base {list(base_matrix.shape)}, got {list(post_matrix.shape)}")
    intruders = normalize_intruders(intruder_k, intruder_epsilon, intruder_side)
    backend = get_backend(device)
    with _call_lock:
        result = backend.measures(base_matrix, post_matrix, normalize_dtype(dtype), bool(full_matrices),
                                  normalize_leading_k(leading_k), intruder_k=intruders["k"],
                                  intruder_epsilon=intruders["epsilon"], intruder_side=intruders["side"])
    return with_difference(result) if full_matrices else result


def with_difference(result: dict) -> dict:
    """Adds ``difference`` = |sim_U - sim_V| (Fig. 3a) to measures computed with their full matrices."""
    result["difference"] = np.abs(result["sim_u"] - result["sim_v"])
    return result
