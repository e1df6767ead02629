"""Linear CKA between two models' per-layer representations (paper Section 5, Appendix D.2,
Fig. 6 / 19; Kornblith et al. 2019).

The reading used here (docs/measures.md leaves the matrices open): for a model and layer i,
the representation is a matrix ``R_i`` ``[N, hidden]`` with one row per prompt: that
prompt's hidden state after block i (``output_hidden_states=True``; row 0 of the
result is the embedding output, i.e. "layer 0" = embeddings, "layer i" = block i-1's
output; transformers applies the final norm to the last entry), averaged over the
prompt's tokens. Each prompt is the chat-formatted question with the simple system
prompt of Appendix H.1, as in the paper. ``CKA[i, j] = linear_cka(R^A_i, R^B_j)``.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .._extras import require
from ._models import (
    SIMPLE_SYSTEM_PROMPT,
    ModelLike,
    check_prompts,
    encode_prompt,
    load_model_and_tokenizer,
    model_name,
)

__all__ = ["linear_cka", "layer_representations", "cka_matrix", "plot_cka"]


def _as_feature_matrix(X, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected shape [examples, features], got {list(X.shape)}")
    if X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(f"{name}: expected at least 2 examples and 1 feature, got {list(X.shape)}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return X


def _is_constant(X: np.ndarray) -> bool:
    """True when every column is constant over the examples (up to rounding of the mean)."""
    amax = np.abs(X).max()
    if amax == 0.0:
        return True
    spread = np.abs(X - X.mean(axis=0, keepdims=True)).max()
    return spread <= 1e-13 * amax


def _normalized_centered_gram(X: np.ndarray) -> Optional[np.ndarray]:
    """Centred Gram matrix ``Xc Xc^T`` divided by its Frobenius norm; None when X is constant."""
    if _is_constant(X):
        return None
    Xc = X - X.mean(axis=0, keepdims=True)
    gram = Xc @ Xc.T  # [n, n]
    return gram / np.linalg.norm(gram)


def linear_cka(X, Y) -> float:
    """Linear CKA of two representations of the same n examples, in float64.

    ``X`` ``[n, p]``, ``Y`` ``[n, q]`` (rows = examples). With column-centred Xc, Yc:
    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``, in [0, 1]; invariant to
    orthogonal transforms and isotropic scaling of either side. NaN (with a warning) when
    either side is constant over the examples.
    """
    X = _as_feature_matrix(X, "X")
    Y = _as_feature_matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of examples (rows), got X {list(X.shape)} "
                         f"and Y {list(Y.shape)}")
    n, p, q = X.shape[0], X.shape[1], Y.shape[1]
    if n * n * (p + q) <= n * (p * q + p * p + q * q):
        Kx, Ky = _normalized_centered_gram(X), _normalized_centered_gram(Y)
        if Kx is None or Ky is None:
            warnings.warn("linear_cka: a representation is constant over the examples; CKA is undefined (NaN)")
            return float("nan")
        return float(np.clip(np.sum(Kx * Ky), 0.0, 1.0))
    if _is_constant(X) or _is_constant(Y):
        warnings.warn("linear_cka: a representation is constant over the examples; CKA is undefined (NaN)")
        return float("nan")
    Xc = X - X.mean(axis=0, keepdims=True)
    Yc = Y - Y.mean(axis=0, keepdims=True)
    denom = np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)
    return float(np.clip(np.linalg.norm(Yc.T @ Xc) ** 2 / denom, 0.0, 1.0))


def layer_representations(model: ModelLike, prompts: Sequence[str], *, tokenizer: Any = None,
                          device: str = "cpu", dtype: Any = "float32",
                          system_prompt: Optional[str] = SIMPLE_SYSTEM_PROMPT,
                          chat_template: Union[bool, str] = "auto") -> np.ndarray:
    """``[layers + 1, N, hidden]`` float64: per layer (0 = embeddings), one row per prompt,
    the hidden state averaged over the prompt's tokens."""
    torch = require("torch", "layer_representations")

    prompts = check_prompts(prompts, "layer_representations", minimum=2)
    loaded, tok = load_model_and_tokenizer(model, tokenizer, device=device, dtype=dtype,
                                           what=f"model {model_name(model)!r}")
    per_prompt = []
    for prompt in prompts:
        ids = encode_prompt(tok, prompt, system_prompt=system_prompt, chat_template=chat_template)
        with torch.no_grad():
            out = loaded(input_ids=torch.tensor([ids], device=device), output_hidden_states=True,
                         use_cache=False)
        states = torch.stack([h[0].to(torch.float64).mean(dim=0) for h in out.hidden_states])  # [L+1, hidden]
        per_prompt.append(states.cpu().numpy())
    return np.stack(per_prompt, axis=1)


def _representations(model, prompts, what: str, **kwargs) -> np.ndarray:
    if isinstance(model, np.ndarray):
        if model.ndim != 3:
            raise ValueError(f"{what}: expected representations of shape [layers + 1, N, hidden], "
                             f"got {list(model.shape)}")
        return model.astype(np.float64, copy=False)
    if prompts is None:
        raise ValueError(f"{what}: prompts are needed to compute the representations of a model")
    return layer_representations(model, prompts, **kwargs)


def cka_matrix(model_a: Union[ModelLike, np.ndarray], model_b: Union[ModelLike, np.ndarray],
               prompts: Optional[Sequence[str]] = None, *, tokenizer: Any = None, device: str = "cpu",
               dtype: Any = "float32", system_prompt: Optional[str] = SIMPLE_SYSTEM_PROMPT,
               chat_template: Union[bool, str] = "auto") -> np.ndarray:
    """Linear CKA between every layer of model A and every layer of model B.

    Each model is a checkpoint folder, a loaded model, or its precomputed
    :func:`layer_representations` (``[layers + 1, N, hidden]``; saves recomputing the
    reference model when it is compared with several constructions). Returns
    ``[layers_a + 1, layers_b + 1]`` float64; row/column 0 is the embedding output.
    Entries where a layer's representation is non-finite or constant are NaN (with a warning).
    """
    kwargs = dict(tokenizer=tokenizer, device=device, dtype=dtype, system_prompt=system_prompt,
                  chat_template=chat_template)
    reps_a = _representations(model_a, prompts, "model_a", **kwargs)
    reps_b = _representations(model_b, prompts, "model_b", **kwargs)
    if reps_a.shape[1] != reps_b.shape[1]:
        raise ValueError(f"model_a and model_b representations must cover the same prompts, got "
                         f"{reps_a.shape[1]} and {reps_b.shape[1]} rows")
    if reps_a.shape[1] < 2:
        raise ValueError(f"CKA needs at least 2 prompts, got {reps_a.shape[1]}")

    def grams(reps: np.ndarray, side: str) -> np.ndarray:
        n = reps.shape[1]
        out = np.full((reps.shape[0], n * n), np.nan)
        for layer, R in enumerate(reps):
            if not np.isfinite(R).all():
                warnings.warn(f"cka_matrix: {side} layer {layer} has NaN or infinite hidden states; its CKA is NaN")
                continue
            gram = _normalized_centered_gram(R)
            if gram is None:
                warnings.warn(f"cka_matrix: {side} layer {layer} is constant over the prompts; its CKA is NaN")
                continue
            out[layer] = gram.ravel()
        return out

    matrix = grams(reps_a, "model_a") @ grams(reps_b, "model_b").T
    return np.clip(matrix, 0.0, 1.0)


def plot_cka(matrix: Union[np.ndarray, Mapping[str, np.ndarray]], *, title: Optional[str] = None,
             xlabel: str = "layer (model B)", ylabel: str = "layer (model A)", cmap: str = "magma", ax=None):
    """Layers x layers CKA heatmap (paper Fig. 6 / 19); a dict ``name -> matrix`` draws one
    panel per matrix on the shared [0, 1] scale. Layer 0 is the embedding output. Returns a matplotlib
    Figure (no pyplot state; `ax` draws into an existing axes instead)."""
    from matplotlib.figure import Figure

    panels = dict(matrix) if isinstance(matrix, Mapping) else {title or "CKA": matrix}
    if not panels:
        raise ValueError("plot_cka: expected at least one matrix")
    for name, m in panels.items():
        m = np.asarray(m)
        if m.ndim != 2:
            raise ValueError(f"plot_cka: matrix {name!r} must be 2-D [layers_a + 1, layers_b + 1], got {list(m.shape)}")
    if ax is not None and len(panels) != 1:
        raise ValueError("plot_cka: ax draws a single matrix; several matrices get their own panels")
    if ax is None:
        fig = Figure(figsize=(4.2 * len(panels) + 0.8, 4.0))
        axes = list(fig.subplots(1, len(panels), squeeze=False)[0])
    else:
        fig, axes = ax.figure, [ax]
    image = None
    for panel, (name, m) in zip(axes, panels.items()):
        m = np.asarray(m, dtype=np.float64)
        image = panel.imshow(m, origin="lower", vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto",
                             interpolation="nearest")
        panel.set_xlabel(xlabel)
        panel.set_ylabel(ylabel)
        panel.set_title(name if len(panels) > 1 or title else "CKA")
    fig.colorbar(image, ax=axes, label="linear CKA")
    if title and len(panels) > 1:
        fig.suptitle(title)
    return fig
