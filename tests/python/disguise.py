"""Function-preserving disguises of a llama-architecture transformers model (test helper for
test_lineage.py and benchmarks/calibrate_lineage.py; pytest collects nothing here).

Each disguise changes the weights and leaves every output unchanged (up to rounding): the ways a
copier could hide that a model derives from another. They act on a state dict of torch tensors
(transformers names, weights [out, in]) and return a new one; `config` is the model's config.

- permute_mlp_units: rows of gate/up and columns of down, by one permutation per layer.
- permute_heads: KV groups (with their query heads), and query heads inside each group.
- rotate_residual: an orthogonal rotation of the residual stream (SliceGPT / QuaRot), after folding
  every RMSNorm weight into the matrices that read its output (the norms become 1).
- rescale_heads: per-head factors between Q and K (scalars commute with RoPE) and between V and O.
- scale_uniformly: the residual stream times c (embeddings, o and down; RMSNorm removes it, its eps
  scaled by c^2 in the config) and up times s with down times 1/s.
"""
import copy
from typing import Callable, Dict

import numpy as np
import torch

StateDict = Dict[str, torch.Tensor]


def _layers(config) -> range:
    return range(config.num_hidden_layers)


def _head_sizes(config):
    """head_dim, KV groups, query heads per group."""
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = config.num_key_value_heads
    return hd, kv, config.num_attention_heads // kv


def permute_mlp_units(state: StateDict, config, seed: int = 0) -> StateDict:
    rng = np.random.default_rng(seed)
    out = dict(state)
    for layer in _layers(config):
        p = f"model.layers.{layer}.mlp."
        order = torch.as_tensor(rng.permutation(config.intermediate_size))
        out[p + "gate_proj.weight"] = state[p + "gate_proj.weight"][order]
        out[p + "up_proj.weight"] = state[p + "up_proj.weight"][order]
        out[p + "down_proj.weight"] = state[p + "down_proj.weight"][:, order]
    return out


def permute_heads(state: StateDict, config, seed: int = 0) -> StateDict:
    rng = np.random.default_rng(seed)
    out = dict(state)
    hd, kv, per_group = _head_sizes(config)
    for layer in _layers(config):
        p = f"model.layers.{layer}.self_attn."
        groups = rng.permutation(kv)
        heads = np.concatenate([g * per_group + rng.permutation(per_group) for g in groups])
        q_rows = torch.as_tensor(np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in heads]))
        kv_rows = torch.as_tensor(np.concatenate([np.arange(g * hd, (g + 1) * hd) for g in groups]))
        out[p + "q_proj.weight"] = state[p + "q_proj.weight"][q_rows]
        out[p + "k_proj.weight"] = state[p + "k_proj.weight"][kv_rows]
        out[p + "v_proj.weight"] = state[p + "v_proj.weight"][kv_rows]
        out[p + "o_proj.weight"] = state[p + "o_proj.weight"][:, q_rows]
    return out


def fold_norms(state: StateDict, config) -> StateDict:
    """Every RMSNorm weight multiplied into the matrices that read the norm's output; the norms become 1."""
    out = dict(state)
    for layer in _layers(config):
        p = f"model.layers.{layer}."
        for norm, readers in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                              ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):
            weight = state[p + norm + ".weight"]
            for reader in readers:
                out[p + reader + ".weight"] = state[p + reader + ".weight"] * weight
            out[p + norm + ".weight"] = torch.ones_like(weight)
    out["lm_head.weight"] = state["lm_head.weight"] * state["model.norm.weight"]
    out["model.norm.weight"] = torch.ones_like(state["model.norm.weight"])
    return out


def rotate_residual(state: StateDict, config, seed: int = 0) -> StateDict:
    """x -> x R for a random orthogonal R: readers W -> W R, writers W -> R^T W (norms folded first)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((config.hidden_size, config.hidden_size)))
    rotation = torch.as_tensor(q * np.sign(np.diag(r)), dtype=torch.float64)
    out = fold_norms(state, config)

    def turn(weight, side):
        w = weight.double()
        return (w @ rotation if side == "in" else rotation.T @ w).to(weight.dtype)

    out["model.embed_tokens.weight"] = turn(out["model.embed_tokens.weight"], "in")
    out["lm_head.weight"] = turn(out["lm_head.weight"], "in")
    for layer in _layers(config):
        p = f"model.layers.{layer}."
        for reader in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            out[p + reader + ".weight"] = turn(out[p + reader + ".weight"], "in")
        for writer in ("self_attn.o_proj", "mlp.down_proj"):
            out[p + writer + ".weight"] = turn(out[p + writer + ".weight"], "out")
    return out


def rescale_heads(state: StateDict, config, seed: int = 0) -> StateDict:
    """Per KV group g: K / c_g and its query heads x c_g; V x s_g and the group's O columns / s_g."""
    rng = np.random.default_rng(seed)
    out = dict(state)
    hd, kv, per_group = _head_sizes(config)
    for layer in _layers(config):
        p = f"model.layers.{layer}.self_attn."
        q, k = state[p + "q_proj.weight"].clone(), state[p + "k_proj.weight"].clone()
        v, o = state[p + "v_proj.weight"].clone(), state[p + "o_proj.weight"].clone()
        for g in range(kv):
            c, s = float(np.exp(rng.uniform(-1.5, 1.5))), float(np.exp(rng.uniform(-1.5, 1.5)))
            group_rows = slice(g * per_group * hd, (g + 1) * per_group * hd)
            q[group_rows] *= c
            k[g * hd:(g + 1) * hd] /= c
            v[g * hd:(g + 1) * hd] *= s
            o[:, group_rows] /= s
        out.update({p + "q_proj.weight": q, p + "k_proj.weight": k, p + "v_proj.weight": v, p + "o_proj.weight": o})
    return out


def scale_uniformly(state: StateDict, config, residual: float = 3.0, up: float = 0.25) -> StateDict:
    """Changes config.rms_norm_eps (x residual^2) as well: RMSNorm(c x) with eps c^2 equals RMSNorm(x)."""
    config.rms_norm_eps = config.rms_norm_eps * residual ** 2
    out = dict(state)
    out["model.embed_tokens.weight"] = state["model.embed_tokens.weight"] * residual
    for layer in _layers(config):
        p = f"model.layers.{layer}."
        out[p + "self_attn.o_proj.weight"] = state[p + "self_attn.o_proj.weight"] * residual
        out[p + "mlp.down_proj.weight"] = state[p + "mlp.down_proj.weight"] * (residual / up)
        out[p + "mlp.up_proj.weight"] = state[p + "mlp.up_proj.weight"] * up
    return out


def all_disguises(state: StateDict, config, seed: int = 0) -> StateDict:
    for step in (permute_mlp_units, permute_heads, rescale_heads, scale_uniformly, rotate_residual):
        state = step(state, config, seed) if step is not scale_uniformly else step(state, config)
    return state


DISGUISES: Dict[str, Callable] = {
    "permute_mlp_units": permute_mlp_units,
    "permute_heads": permute_heads,
    "rotate_residual": rotate_residual,
    "rescale_heads": rescale_heads,
    "scale_uniformly": lambda state, config, seed=0: scale_uniformly(state, config),
    "all": all_disguises,
}


def disguised_copy(src: str, dst: str, disguise: str, seed: int = 0, check_logits: bool = True) -> float:
    """Loads `src` (transformers, float32), applies DISGUISES[disguise], saves float32 to `dst`; returns the
    largest |logit difference| on a few fixed sequences (checked < 1e-4 when `check_logits`)."""
    import transformers

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    config = model.config
    if getattr(config, "tie_word_embeddings", False):
        raise ValueError(f"{src}: disguised_copy handles untied embeddings only")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = copy.deepcopy(config)  # a disguise may change it (scale_uniformly: the norms' eps)
    new_state = DISGUISES[disguise](state, config, seed)
    disguised = transformers.AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    disguised.load_state_dict(new_state, strict=True)
    tokens = torch.as_tensor(np.random.default_rng(seed).integers(0, config.vocab_size, (3, 24)))
    with torch.no_grad():
        before, after = model(tokens).logits, disguised(tokens).logits
    difference = float((before - after).abs().max())
    if check_logits and difference >= 1e-4:
        raise AssertionError(f"disguise {disguise} changed the logits by {difference:.3g}")
    disguised.save_pretrained(dst)
    return difference
