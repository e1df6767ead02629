"""Attention entropy per layer and head (paper Section 4, Appendix C.2, Fig. 4b / 15-18).

For each prompt, one forward pass over the prompt the model sees before its first
generated token (chat template with the simple system prompt of Appendix H.1 when
the tokenizer has one), with eager attention in float32 and
``output_attentions=True``. For layer l, head h and query position i the attention
row ``a_i`` (a distribution over key positions j <= i) has entropy
``H_i = -sum_j a_ij ln a_ij`` (nats, 0 ln 0 = 0). The reported entropy of (l, h) is
the mean of ``H_i`` over the query positions of a prompt, then the mean over prompts.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .._extras import require
from ._models import (
    SIMPLE_SYSTEM_PROMPT,
    ModelLike,
    as_model_dict,
    check_prompts,
    encode_prompt,
    load_model_and_tokenizer,
)

__all__ = ["attention_entropy", "entropy_of_attention", "plot_attention_entropy"]


def entropy_of_attention(attention) -> np.ndarray:
    """Mean entropy (nats) over query positions, per head.

    ``attention``: probabilities ``[heads, queries, keys]`` (or ``[1, heads, queries, keys]``),
    each row summing to 1. Returns ``[heads]`` float64.
    """
    torch = require("torch", "entropy_of_attention")

    probs = torch.as_tensor(attention).to(torch.float64)
    if probs.dim() == 4 and probs.shape[0] == 1:
        probs = probs[0]
    if probs.dim() != 3:
        raise ValueError(f"attention: expected shape [heads, queries, keys] or [1, heads, queries, keys], "
                         f"got {list(probs.shape)}")
    if probs.shape[1] == 0 or probs.shape[2] == 0:
        raise ValueError(f"attention: expected at least one query and one key, got {list(probs.shape)}")
    if not torch.isfinite(probs).all():
        raise ValueError("attention: contains NaN or infinite probabilities")
    row_sums = probs.sum(dim=-1)
    if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-3):
        worst = (row_sums - 1).abs().max().item()
        raise ValueError(f"attention: every row must sum to 1 (softmax probabilities), worst deviation {worst:.3g}")
    per_query = torch.special.entr(probs.clamp_min(0)).sum(dim=-1)  # [heads, queries]
    return per_query.mean(dim=-1).cpu().numpy()


def _layer_list(layers: Optional[Iterable[int]], n_layers: int, name: str) -> list:
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (int, np.integer)):
        layers = [int(layers)]
    chosen = sorted({int(l) for l in layers})
    bad = [l for l in chosen if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers: model {name!r} has layers 0..{n_layers - 1}, got {bad}")
    return chosen


def attention_entropy(model_or_dir: Union[ModelLike, Mapping[str, ModelLike]],
                      prompts: Union[str, Sequence[str]], *, tokenizer: Any = None, device: str = "cpu",
                      layers: Optional[Iterable[int]] = None,
                      system_prompt: Optional[str] = SIMPLE_SYSTEM_PROMPT,
                      chat_template: Union[bool, str] = "auto", per_prompt: bool = False) -> pd.DataFrame:
    """Attention entropy of every (model, layer, head) on ``prompts``.

    ``model_or_dir``: a checkpoint folder, a loaded model (eager attention; switched to it
    where possible), or a dict ``name -> folder/model`` for a model and its constructions.
    ``layers``: a subset of layers (the paper tracks 0, 3, 5, 8, ...); all by default.
    ``tokenizer``: a tokenizer or folder; by default each model's own.

    Returns a DataFrame with a row per (model, layer, head): ``entropy`` (nats, mean over
    query positions, then over prompts), ``entropy_std`` (population std over prompts),
    ``n_prompts`` and ``n_queries`` (query positions summed over prompts). With
    ``per_prompt=True`` a row per (model, prompt, layer, head) instead.
    """
    torch = require("torch", "attention_entropy")

    models = as_model_dict(model_or_dir, "attention_entropy")
    prompts = check_prompts(prompts, "attention_entropy")
    frames = []
    for name, model in models.items():
        loaded, tok = load_model_and_tokenizer(model, tokenizer, device=device, dtype="float32",
                                               attn_implementation="eager", what=f"model {name!r}")
        n_layers = int(loaded.config.num_hidden_layers)
        chosen = _layer_list(layers, n_layers, name)
        rows = []
        for p_index, prompt in enumerate(prompts):
            ids = encode_prompt(tok, prompt, system_prompt=system_prompt, chat_template=chat_template)
            input_ids = torch.tensor([ids], device=device)
            with torch.no_grad():
                out = loaded(input_ids=input_ids, output_attentions=True, use_cache=False)
            attentions = out.attentions
            if attentions is None or len(attentions) != n_layers or any(a is None for a in attentions):
                raise RuntimeError(f"model {name!r} returned no attention probabilities for every layer; "
                                   "it must run with attn_implementation='eager'")
            for layer in chosen:
                try:
                    per_head = entropy_of_attention(attentions[layer])
                except ValueError as err:
                    raise ValueError(f"model {name!r}, layer {layer}, prompt {p_index}: {err}") from None
                for head, value in enumerate(per_head):
                    rows.append((name, p_index, layer, head, float(value), len(ids)))
        del loaded
        frames.append(pd.DataFrame(rows, columns=["model", "prompt", "layer", "head", "entropy", "n_queries"]))
    per = pd.concat(frames, ignore_index=True)
    if per_prompt:
        return per
    grouped = per.groupby(["model", "layer", "head"], sort=False)
    table = grouped.agg(entropy=("entropy", "mean"), entropy_std=("entropy", lambda x: float(np.std(x))),
                        n_prompts=("prompt", "nunique"), n_queries=("n_queries", "sum")).reset_index()
    return table


def plot_attention_entropy(df: pd.DataFrame, *, kind: str = "layers", band: str = "std",
                           title: Optional[str] = None, ax=None):
    """Figure of an :func:`attention_entropy` table (paper Fig. 4b / 15).

    ``kind="layers"``: per layer the mean entropy over heads, one line per model, with a
    band of ±1 std over heads (``band="std"``) or the heads' min..max (``band="minmax"``).
    ``kind="heatmap"``: one layers x heads heatmap per model on a shared colour scale.
    Returns a matplotlib Figure (no pyplot state; `ax` draws the layers plot into an existing axes).
    """
    from matplotlib.figure import Figure

    needed = {"model", "layer", "head", "entropy"}
    if not isinstance(df, pd.DataFrame) or not needed <= set(df.columns):
        got = list(df.columns) if isinstance(df, pd.DataFrame) else type(df).__name__
        raise ValueError(f"plot_attention_entropy: expected a DataFrame with columns {sorted(needed)}, got {got}")
    if df.empty:
        raise ValueError("plot_attention_entropy: the table is empty")
    table = df.groupby(["model", "layer", "head"], sort=False)["entropy"].mean().reset_index()
    names = list(dict.fromkeys(table["model"]))
    if kind == "layers":
        if band not in ("std", "minmax"):
            raise ValueError(f"band: expected 'std' or 'minmax', got {band!r}")
        if ax is None:
            fig = Figure(figsize=(6.4, 4.0))
            ax = fig.subplots()
        else:
            fig = ax.figure
        for name in names:
            stats = table[table["model"] == name].groupby("layer")["entropy"]
            mean = stats.mean()
            if band == "std":
                spread = stats.std(ddof=0)
                low, high = mean - spread, mean + spread
            else:
                low, high = stats.min(), stats.max()
            line, = ax.plot(mean.index, mean.values, marker="o", markersize=3, label=name)
            ax.fill_between(mean.index, low.values, high.values, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("layer")
        ax.set_ylabel("attention entropy (nats), mean over heads")
        ax.legend()
        ax.set_title(title or "Attention entropy")
        fig.tight_layout()
        return fig
    if kind == "heatmap":
        if ax is not None:
            raise ValueError("kind='heatmap' draws one panel per model and takes no ax")
        fig = Figure(figsize=(3.6 * len(names) + 0.8, 3.8))
        axes = fig.subplots(1, len(names), squeeze=False)
        vmin, vmax = float(table["entropy"].min()), float(table["entropy"].max())
        image = None
        for panel, name in zip(axes[0], names):
            grid = table[table["model"] == name].pivot(index="layer", columns="head", values="entropy")
            image = panel.imshow(grid.values, aspect="auto", origin="lower", vmin=vmin, vmax=vmax,
                                 cmap="viridis", interpolation="nearest")
            panel.set_yticks(range(len(grid.index)))
            panel.set_yticklabels([str(l) for l in grid.index])
            panel.set_xlabel("head")
            panel.set_ylabel("layer")
            panel.set_title(name)
        fig.colorbar(image, ax=list(axes[0]), label="entropy (nats)")
        if title:
            fig.suptitle(title)
        return fig
    raise ValueError(f"kind: expected 'layers' or 'heatmap', got {kind!r}")
