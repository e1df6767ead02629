"""Function-preserving disguises of tiny transformers models of every family lineage reads (test helper
for test_lineage.py and benchmarks/calibrate_lineage.py; pytest collects nothing here).

Each disguise changes the weights and leaves every output unchanged (up to rounding): the ways a
copier could hide that a model derives from another. They act on a state dict of torch tensors as the
transformers module holds it (names and layouts in memory: weights [out, in], gpt2's Conv1D [in, out],
MoE experts fused [experts, ...]) and return a new one; `config` is the text model's config. Which
disguise an architecture allows is `allowed(config)`; `disguised_copy` checks the logits.

- permute_mlp_units: per MLP block (dense, shared expert, each routed expert) one permutation of its
  hidden units: rows of gate/up (phi3's fused halves, gpt2's c_fc columns, gpt-oss's interleaved
  columns), columns of down.
- permute_experts: per MoE layer one permutation of the routed experts, with the router's rows (and its
  biases).
- permute_heads: key/value groups with their query heads, and query heads inside each group (gpt-oss's
  sinks, OLMo 2's query and key norms move with them); DeepSeek's MLA: whole heads.
- rotate_residual: a transformation of the residual stream. With RMSNorm before each block, every norm
  folded into the matrices that read it, then a random rotation (SliceGPT / QuaRot). Where a norm sits on
  a block's output (Gemma, OLMo 2) only a signed permutation of the coordinates keeps the function (the
  norm weights move with it); GPT-2's LayerNorm centres its input, so only a permutation.
- rescale_heads: per head factors between Q and K (scalars commute with RoPE; not where a norm rescales
  the queries and keys, Qwen 3, Gemma 3, OLMo 2, Llama 4: it removes any factor, up to its eps) and between
  V and O; MLA: the nope part of Q and K.
- scale_uniformly: the residual stream times c (embeddings and every writer; the norms' eps times c^2) and,
  in a GLU MLP, up times s with down times 1/s; tied embeddings: the final norm divided by c. RMSNorm
  before each block and GPT-2 only, without query/key norms (every norm shares the config's eps).
- mix_latents (MLA): the query and key/value latents rotated (their norms folded into q_b and kv_b), each
  head's nope part of Q and K mixed by an invertible map and its inverse transpose, V and O likewise.
"""
import copy
import re
from typing import Callable, Dict, List

import numpy as np
import torch

from frontier_models import FUSED_IN_OUT_EXPERTS

StateDict = Dict[str, torch.Tensor]

#: Names (relative to a layer) of the matrices that read the residual stream, [out, in].
_READERS = re.compile(r"^(self_attn\.(q_proj|k_proj|v_proj|qkv_proj|q_a_proj|kv_a_proj_with_mqa)|"
                      r"(mlp|feed_forward)\.(shared_experts?\.)?(gate_proj|up_proj|gate_up_proj)|"
                      r"(mlp|feed_forward)\.(gate|router|shared_expert_gate))\.weight$")
#: Matrices (and their biases) that write it, [out, in].
_WRITERS = re.compile(r"^(self_attn\.o_proj|(mlp|feed_forward)\.(shared_experts?\.)?down_proj)\.(weight|bias)$")


def _weightless_qk_norm(config, layer: int) -> bool:
    """Llama 4: an L2 norm (no weight) on each head's queries and keys, in the layers with RoPE."""
    return config.model_type.startswith("llama4") and bool(getattr(config, "use_qk_norm", False)) and \
        bool(config.no_rope_layers[layer])


def _has_qk_norm(config) -> bool:
    return config.model_type in ("qwen3", "qwen3_moe", "gemma3_text", "olmo2", "olmo3") or \
        bool(getattr(config, "use_qk_norm", False))


def _rng(seed):
    return np.random.default_rng(seed)


def _tensor(x, like):
    return torch.as_tensor(np.asarray(x), dtype=torch.float64).to(like.dtype)


class Layout:
    """Where a model's residual-stream tensors live in its state dict."""

    def __init__(self, state: StateDict, config):
        self.config = config
        self.model_type = config.model_type
        self.gpt2 = "transformer.wte.weight" in state
        if self.gpt2:
            self.layers = [f"transformer.h.{i}." for i in range(config.n_layer)]
            self.embeddings = ["transformer.wte.weight", "transformer.wpe.weight"]
            self.final_norm = "transformer.ln_f"
            self.hidden = config.n_embd
            self.heads = self.kv_heads = config.n_head
            self.head_dim = self.hidden // self.heads
            self.before, self.after = ("ln_1", "ln_2"), ()
            self.norm = "LayerNorm"
        else:
            self.layers = [f"model.layers.{i}." for i in range(config.num_hidden_layers)]
            self.embeddings = ["model.embed_tokens.weight"]
            self.final_norm = "model.norm"
            self.hidden = config.hidden_size
            self.heads = config.num_attention_heads
            self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
            self.head_dim = getattr(config, "head_dim", None) or self.hidden // self.heads
            gemma = self.model_type.startswith("gemma")
            olmo = self.model_type.startswith("olmo")
            self.norm = "GemmaRMSNorm" if gemma else "RMSNorm"
            self.before = () if olmo else ("input_layernorm", "pre_feedforward_layernorm" if gemma else
                                           "post_attention_layernorm")
            self.after = ("post_attention_layernorm", "post_feedforward_layernorm") if gemma or olmo else ()
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        self.mla = "kv_b_proj.weight" in " ".join(state)
        self.fused = FUSED_IN_OUT_EXPERTS.get(self.model_type)  # None: experts [E, out, in]
        q_norm = f"{self.layers[0]}self_attn.q_norm.weight"
        qk_norm = None if q_norm not in state else "per head" if len(state[q_norm]) == self.head_dim else "across"
        #: Per layer: how queries and keys are normed ("per head", "across" heads, or None).
        self.qk_norms = ["per head" if _weightless_qk_norm(config, i) else qk_norm for i in range(len(self.layers))]

    def names(self, state: StateDict, layer: str, pattern) -> List[str]:
        return [k for k in state if k.startswith(layer) and pattern.match(k[len(layer):])]

    def mlp(self, layer: str, state: StateDict) -> str:
        return layer + ("feed_forward." if f"{layer}feed_forward.experts.down_proj" in state or
                        f"{layer}feed_forward.down_proj.weight" in state else "mlp.")


# ---------------------------------------------------------------------- MLP units and experts

def _permute_dense(out, state, module, perm, gpt2=False):
    """One dense MLP (or shared expert) `module` ("...mlp."): its units permuted."""
    p = torch.as_tensor(perm)
    if gpt2:
        out[module + "c_fc.weight"] = state[module + "c_fc.weight"][:, p]
        out[module + "c_fc.bias"] = state[module + "c_fc.bias"][p]
        out[module + "c_proj.weight"] = state[module + "c_proj.weight"][p]
        return
    if module + "gate_up_proj.weight" in state:  # phi3: [gate; up]
        n = len(perm)
        out[module + "gate_up_proj.weight"] = state[module + "gate_up_proj.weight"][torch.cat([p, p + n])]
    else:
        out[module + "gate_proj.weight"] = state[module + "gate_proj.weight"][p]
        out[module + "up_proj.weight"] = state[module + "up_proj.weight"][p]
    out[module + "down_proj.weight"] = state[module + "down_proj.weight"][:, p]


def _expert_columns(perm, fused):
    """The gate_up indices (along its 2n axis) of units `perm`: halves [gate; up], or interleaved."""
    p = torch.as_tensor(perm)
    n = len(perm)
    if fused == "interleaved":
        return torch.stack([2 * p, 2 * p + 1], dim=1).reshape(-1)
    return torch.cat([p, p + n])


def permute_mlp_units(state: StateDict, config, seed: int = 0) -> StateDict:
    rng = _rng(seed)
    out = dict(state)
    lay = Layout(state, config)
    for layer in lay.layers:
        mlp = lay.mlp(layer, state)
        if lay.gpt2:
            _permute_dense(out, state, mlp, rng.permutation(state[mlp + "c_fc.weight"].shape[1]), gpt2=True)
            continue
        for module in (mlp, mlp + "shared_expert.", mlp + "shared_experts."):
            for down in (module + "down_proj.weight",):
                if down in state:
                    _permute_dense(out, state, module, rng.permutation(state[down].shape[1]))
        gate_up = mlp + "experts.gate_up_proj"
        if gate_up not in state:
            continue
        w, down = state[gate_up].clone(), state[mlp + "experts.down_proj"].clone()
        bias = state.get(gate_up + "_bias")
        bias = bias.clone() if bias is not None else None
        for e in range(w.shape[0]):
            if lay.fused is None:  # [E, 2n, d] and [E, d, n]
                perm = rng.permutation(down.shape[2])
                w[e] = w[e][_expert_columns(perm, None)]
                down[e] = down[e][:, torch.as_tensor(perm)]
            else:  # [E, d, 2n] and [E, n, d]
                perm = rng.permutation(down.shape[1])
                cols = _expert_columns(perm, lay.fused)
                w[e] = w[e][:, cols]
                down[e] = down[e][torch.as_tensor(perm)]
                if bias is not None:
                    bias[e] = bias[e][cols]
        out[gate_up], out[mlp + "experts.down_proj"] = w, down
        if bias is not None:
            out[gate_up + "_bias"] = bias
    return out


def permute_experts(state: StateDict, config, seed: int = 0) -> StateDict:
    rng = _rng(seed)
    out = dict(state)
    lay = Layout(state, config)
    for layer in lay.layers:
        mlp = lay.mlp(layer, state)
        if mlp + "experts.gate_up_proj" not in state:
            continue
        order = torch.as_tensor(rng.permutation(state[mlp + "experts.gate_up_proj"].shape[0]))
        for name in list(state):
            if name.startswith(mlp + "experts.") or name in (mlp + "gate.weight", mlp + "router.weight",
                                                            mlp + "router.bias", mlp + "gate.e_score_correction_bias"):
                out[name] = state[name][order]
    return out


def permute_mlp_and_experts(state: StateDict, config, seed: int = 0) -> StateDict:
    return permute_experts(permute_mlp_units(state, config, seed), config, seed + 1)


# ---------------------------------------------------------------------- heads

def _blocks(order, size):
    return torch.as_tensor(np.concatenate([np.arange(h * size, (h + 1) * size) for h in order]))


def _head_order(lay: Layout, rng):
    """Key/value groups and, inside each, query heads: (query head order, group order)."""
    per_group = lay.heads // lay.kv_heads
    groups = rng.permutation(lay.kv_heads)
    heads = np.concatenate([g * per_group + rng.permutation(per_group) for g in groups])
    return heads, groups


def permute_heads(state: StateDict, config, seed: int = 0) -> StateDict:
    rng = _rng(seed)
    out = dict(state)
    lay = Layout(state, config)
    hd = lay.head_dim
    for layer in lay.layers:
        if lay.mla:
            _permute_latent_heads(out, state, layer, config, rng.permutation(lay.heads))
            continue
        heads, groups = _head_order(lay, rng)
        q_rows, kv_rows = _blocks(heads, hd), _blocks(groups, hd)
        if lay.gpt2:
            p = layer + "attn."
            d = lay.hidden
            cols = torch.cat([q_rows, kv_rows + d, kv_rows + 2 * d])
            out[p + "c_attn.weight"] = state[p + "c_attn.weight"][:, cols]
            out[p + "c_attn.bias"] = state[p + "c_attn.bias"][cols]
            out[p + "c_proj.weight"] = state[p + "c_proj.weight"][q_rows]
            continue
        p = layer + "self_attn."
        if p + "qkv_proj.weight" in state:  # phi3: [q; k; v]
            q_out, kv_out = lay.heads * hd, lay.kv_heads * hd
            rows = torch.cat([q_rows, kv_rows + q_out, kv_rows + q_out + kv_out])
            out[p + "qkv_proj.weight"] = state[p + "qkv_proj.weight"][rows]
        else:
            for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
                for suffix in (".weight", ".bias"):
                    if p + name + suffix in state:
                        out[p + name + suffix] = state[p + name + suffix][rows]
        out[p + "o_proj.weight"] = state[p + "o_proj.weight"][:, q_rows]
        if p + "sinks" in state:  # gpt-oss: one sink logit per query head
            out[p + "sinks"] = state[p + "sinks"][torch.as_tensor(heads)]
        if lay.qk_norms[0] == "across":  # OLMo 2: the norms' weights span every head
            out[p + "q_norm.weight"] = state[p + "q_norm.weight"][q_rows]
            out[p + "k_norm.weight"] = state[p + "k_norm.weight"][kv_rows]
    return out


def _permute_latent_heads(out, state, layer, config, heads):
    p = layer + "self_attn."
    q = p + ("q_b_proj.weight" if p + "q_b_proj.weight" in state else "q_proj.weight")
    out[q] = state[q][_blocks(heads, config.qk_nope_head_dim + config.qk_rope_head_dim)]
    out[p + "kv_b_proj.weight"] = state[p + "kv_b_proj.weight"][_blocks(heads, config.qk_nope_head_dim +
                                                                         config.v_head_dim)]
    out[p + "o_proj.weight"] = state[p + "o_proj.weight"][:, _blocks(heads, config.v_head_dim)]


def rescale_heads(state: StateDict, config, seed: int = 0) -> StateDict:
    """Per KV group g: K / c_g and its query heads x c_g (not where a norm rescales the queries and keys: it
    removes any factor up to its eps); V x s_g and the group's O columns / s_g. MLA: per head."""
    rng = _rng(seed)
    out = dict(state)
    lay = Layout(state, config)
    hd, per_group = lay.head_dim, lay.heads // lay.kv_heads

    def factor():
        return float(np.exp(rng.uniform(-1.5, 1.5)))

    for layer, qk_norm in zip(lay.layers, lay.qk_norms):
        if lay.mla:
            _rescale_latent_heads(out, state, layer, config, factor)
            continue
        if lay.gpt2:
            p, d = layer + "attn.", lay.hidden
            w, b = state[p + "c_attn.weight"].clone(), state[p + "c_attn.bias"].clone()
            o = state[p + "c_proj.weight"].clone()
            for h in range(lay.heads):
                c, s = factor(), factor()
                q, k, v = (slice(part * d + h * hd, part * d + (h + 1) * hd) for part in range(3))
                w[:, q] *= c
                b[q] *= c
                w[:, k] /= c
                b[k] /= c
                w[:, v] *= s
                b[v] *= s
                o[h * hd:(h + 1) * hd] /= s
            out.update({p + "c_attn.weight": w, p + "c_attn.bias": b, p + "c_proj.weight": o})
            continue
        p = layer + "self_attn."
        fused = p + "qkv_proj.weight" in state
        if fused:
            qkv = state[p + "qkv_proj.weight"].clone()
            q_out, kv_out = lay.heads * hd, lay.kv_heads * hd
            parts = {"q": (qkv, 0), "k": (qkv, q_out), "v": (qkv, q_out + kv_out)}
        else:
            parts = {name: (state[p + name + "_proj.weight"].clone(), 0) for name in "qkv"}
        biases = {name: state[p + name + "_proj.bias"].clone() for name in "qkv" if p + name + "_proj.bias" in state}
        o = state[p + "o_proj.weight"].clone()

        def scale(name, rows, by):
            matrix, offset = parts[name]
            matrix[offset + rows.start:offset + rows.stop] *= by
            if name in biases:
                biases[name][rows] *= by

        for g in range(lay.kv_heads):
            group = slice(g * hd, (g + 1) * hd)
            if qk_norm is None:
                c = factor()
                scale("k", group, 1 / c)
                for h in range(g * per_group, (g + 1) * per_group):
                    scale("q", slice(h * hd, (h + 1) * hd), c)
            s = factor()
            scale("v", group, s)
            o[:, g * per_group * hd:(g + 1) * per_group * hd] /= s
        if fused:
            out[p + "qkv_proj.weight"] = qkv
        else:
            out.update({p + name + "_proj.weight": parts[name][0] for name in "qkv"})
        out.update({p + name + "_proj.bias": b for name, b in biases.items()})
        out[p + "o_proj.weight"] = o
    return out


def _rescale_latent_heads(out, state, layer, config, factor):
    p = layer + "self_attn."
    nope, rope, v = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
    q_name = p + ("q_b_proj.weight" if p + "q_b_proj.weight" in state else "q_proj.weight")
    q, kv_b, o = state[q_name].clone(), state[p + "kv_b_proj.weight"].clone(), state[p + "o_proj.weight"].clone()
    for h in range(config.num_attention_heads):
        c, s = factor(), factor()
        q[h * (nope + rope):h * (nope + rope) + nope] *= c
        kv_b[h * (nope + v):h * (nope + v) + nope] /= c
        kv_b[h * (nope + v) + nope:(h + 1) * (nope + v)] *= s
        o[:, h * v:(h + 1) * v] /= s
    out.update({q_name: q, p + "kv_b_proj.weight": kv_b, p + "o_proj.weight": o})


# ---------------------------------------------------------------------- the residual stream

def _scale_of(lay: Layout, weight):
    return 1.0 + weight if lay.norm == "GemmaRMSNorm" else weight


def fold_norms(state: StateDict, config) -> StateDict:
    """Every RMSNorm before a block multiplied into the matrices that read its output (the norms become 1),
    the final norm into lm_head. Only for RMSNorm before each block and untied embeddings."""
    lay = Layout(state, config)
    if lay.after or lay.norm != "RMSNorm" or lay.tied:
        raise ValueError(f"{lay.model_type}: norms fold into the readers only before each block, untied")
    out = dict(state)
    for layer in lay.layers:
        for name in lay.names(state, layer, _READERS):
            norm = lay.before[0] if ".self_attn." in name else lay.before[1]
            out[name] = state[name] * state[f"{layer}{norm}.weight"]
        for norm in lay.before:
            out[f"{layer}{norm}.weight"] = torch.ones_like(state[f"{layer}{norm}.weight"])
        mlp = lay.mlp(layer, state)
        if mlp + "experts.gate_up_proj" in state:
            weight = state[f"{layer}{lay.before[1]}.weight"]
            experts = state[mlp + "experts.gate_up_proj"]
            out[mlp + "experts.gate_up_proj"] = experts * (weight[:, None] if lay.fused else weight)
    out["lm_head.weight"] = state["lm_head.weight"] * state["model.norm.weight"]
    out["model.norm.weight"] = torch.ones_like(state["model.norm.weight"])
    return out


def _transform_residual(state: StateDict, lay: Layout, m: np.ndarray, permutation=None) -> StateDict:
    """The residual stream x -> M x: readers W -> W M^T, writers and their biases W -> M W, embeddings
    E -> E M^T; the norms over the residual are permuted by `permutation` (M a signed permutation)."""
    mt = torch.as_tensor(m, dtype=torch.float64)
    out = dict(state)

    def right(w):  # w @ M^T
        return (w.double() @ mt.T).to(w.dtype)

    def left(w):  # M @ w
        return (mt @ w.double()).to(w.dtype)

    for name in lay.embeddings + ([] if lay.tied else ["lm_head.weight"]):
        out[name] = right(state[name])
    for layer in lay.layers:
        for name in lay.names(state, layer, _READERS):
            out[name] = right(state[name])
        for name in lay.names(state, layer, _WRITERS):
            out[name] = left(state[name])
        if lay.gpt2:
            for name in ("attn.c_attn.weight", "mlp.c_fc.weight"):
                out[layer + name] = left(state[layer + name])
            for name in ("attn.c_proj", "mlp.c_proj"):
                out[f"{layer}{name}.weight"] = right(state[f"{layer}{name}.weight"])
                out[f"{layer}{name}.bias"] = left(state[f"{layer}{name}.bias"])
        mlp = lay.mlp(layer, state)
        if mlp + "experts.gate_up_proj" in state:
            gate_up, down = state[mlp + "experts.gate_up_proj"], state[mlp + "experts.down_proj"]
            if lay.fused is None:  # [E, 2n, d], [E, d, n]
                out[mlp + "experts.gate_up_proj"] = (gate_up.double() @ mt.T).to(gate_up.dtype)
                out[mlp + "experts.down_proj"] = (mt @ down.double()).to(down.dtype)
            else:  # [E, d, 2n], [E, n, d]
                out[mlp + "experts.gate_up_proj"] = (mt @ gate_up.double()).to(gate_up.dtype)
                out[mlp + "experts.down_proj"] = (down.double() @ mt.T).to(down.dtype)
            if mlp + "experts.down_proj_bias" in state:
                out[mlp + "experts.down_proj_bias"] = right(state[mlp + "experts.down_proj_bias"])
        if permutation is not None:
            for norm in lay.before + lay.after:
                for suffix in (".weight", ".bias"):
                    if f"{layer}{norm}{suffix}" in state:
                        out[f"{layer}{norm}{suffix}"] = state[f"{layer}{norm}{suffix}"][permutation]
    if permutation is not None:
        for suffix in (".weight", ".bias"):
            if lay.final_norm + suffix in state:
                out[lay.final_norm + suffix] = state[lay.final_norm + suffix][permutation]
    return out


def rotate_residual(state: StateDict, config, seed: int = 0) -> StateDict:
    """RMSNorm before each block: norms folded, then a random rotation. Norms after a block (Gemma, OLMo 2):
    a random signed permutation. LayerNorm (GPT-2): a random permutation."""
    rng = _rng(seed)
    lay = Layout(state, config)
    d = lay.hidden
    if lay.after or lay.norm == "LayerNorm":
        order = rng.permutation(d)
        signs = np.ones(d) if lay.norm == "LayerNorm" else rng.choice([-1.0, 1.0], d)
        m = np.zeros((d, d))
        m[np.arange(d), order] = signs  # (M x)_i = sign_i x_order(i)
        return _transform_residual(state, lay, m, permutation=torch.as_tensor(order))
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return _transform_residual(fold_norms(state, config), lay, q * np.sign(np.diag(r)))


def scale_uniformly(state: StateDict, config, residual: float = 3.0, up: float = 0.25) -> StateDict:
    """Changes the norms' eps in `config` (x residual^2) as well: RMSNorm(c x) with eps c^2 equals RMSNorm(x),
    LayerNorm likewise."""
    lay = Layout(state, config)
    if lay.after:
        raise ValueError(f"{lay.model_type}: the norms after each block share the config's eps")
    if lay.gpt2:
        config.layer_norm_epsilon = config.layer_norm_epsilon * residual ** 2
    else:
        config.rms_norm_eps = config.rms_norm_eps * residual ** 2
    out = dict(state)
    for name in lay.embeddings:
        out[name] = state[name] * residual
    if lay.tied:  # the unembedding is the embedding: the final norm's output divided by as much
        for suffix in (".weight", ".bias"):
            if lay.final_norm + suffix in state:
                out[lay.final_norm + suffix] = state[lay.final_norm + suffix] / residual
    glu = not lay.gpt2 and lay.model_type != "gpt_oss"  # gpt-oss: (up + 1) * glu(gate), not homogeneous in up
    for layer in lay.layers:
        writers = lay.names(state, layer, _WRITERS) + (
            [f"{layer}{n}.{s}" for n in ("attn.c_proj", "mlp.c_proj") for s in ("weight", "bias")] if lay.gpt2 else [])
        mlp = lay.mlp(layer, state)
        writers += [n for n in (mlp + "experts.down_proj", mlp + "experts.down_proj_bias") if n in state]
        for name in writers:
            is_down = "down_proj" in name and "bias" not in name
            out[name] = state[name] * (residual / up if glu and is_down else residual)
        if glu:
            for name in lay.names(state, layer, _READERS):
                if name.endswith("gate_up_proj.weight"):  # phi3: [gate; up]
                    w = state[name].clone()
                    w[w.shape[0] // 2:] *= up
                    out[name] = w
                elif name.endswith("up_proj.weight"):
                    out[name] = state[name] * up
            if mlp + "experts.gate_up_proj" in state:
                w = state[mlp + "experts.gate_up_proj"].clone()
                if lay.fused is None:
                    w[:, w.shape[1] // 2:] *= up
                else:
                    w[:, :, w.shape[2] // 2:] *= up
                out[mlp + "experts.gate_up_proj"] = w
    return out


def mix_latents(state: StateDict, config, seed: int = 0) -> StateDict:
    """MLA: the latents rotated (norms folded into q_b / kv_b), each head's nope Q/K and V/O mixed."""
    rng = _rng(seed)
    out = dict(state)
    lay = Layout(state, config)
    nope, rope, v, h = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim, lay.heads
    rank = config.kv_lora_rank

    def orthogonal(n):
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        return q * np.sign(np.diag(r))

    def mixing(n):  # well-conditioned and invertible: a rotation times positive scales
        return orthogonal(n) @ np.diag(np.exp(rng.uniform(-0.7, 0.7, n)))

    for layer in lay.layers:
        p = layer + "self_attn."
        as64 = {k: state[k].double() for k in state if k.startswith(p)}
        q_name = p + ("q_b_proj.weight" if p + "q_b_proj.weight" in state else "q_proj.weight")
        q = as64[q_name].clone()
        if p + "q_a_proj.weight" in state:
            turn = torch.as_tensor(orthogonal(config.q_lora_rank))
            q = q * as64[p + "q_a_layernorm.weight"] @ turn.T
            out[p + "q_a_proj.weight"] = _tensor(turn @ as64[p + "q_a_proj.weight"], state[p + "q_a_proj.weight"])
            out[p + "q_a_layernorm.weight"] = torch.ones_like(state[p + "q_a_layernorm.weight"])
        turn = torch.as_tensor(orthogonal(rank))
        kv_a = as64[p + "kv_a_proj_with_mqa.weight"].clone()
        kv_a[:rank] = turn @ kv_a[:rank]
        kv_b = as64[p + "kv_b_proj.weight"] * as64[p + "kv_a_layernorm.weight"] @ turn.T
        out[p + "kv_a_layernorm.weight"] = torch.ones_like(state[p + "kv_a_layernorm.weight"])
        o = as64[p + "o_proj.weight"].clone()
        for head in range(h):
            a, b = torch.as_tensor(mixing(nope)), torch.as_tensor(mixing(v))
            qs = slice(head * (nope + rope), head * (nope + rope) + nope)
            ks = slice(head * (nope + v), head * (nope + v) + nope)
            vs = slice(head * (nope + v) + nope, (head + 1) * (nope + v))
            q[qs] = torch.linalg.inv(a).T @ q[qs]
            kv_b[ks] = a @ kv_b[ks]
            kv_b[vs] = b @ kv_b[vs]
            o[:, head * v:(head + 1) * v] = o[:, head * v:(head + 1) * v] @ torch.linalg.inv(b)
        out[q_name] = _tensor(q, state[q_name])
        out[p + "kv_a_proj_with_mqa.weight"] = _tensor(kv_a, state[p + "kv_a_proj_with_mqa.weight"])
        out[p + "kv_b_proj.weight"] = _tensor(kv_b, state[p + "kv_b_proj.weight"])
        out[p + "o_proj.weight"] = _tensor(o, state[p + "o_proj.weight"])
    return out


# ---------------------------------------------------------------------- which, and all at once

def allowed(config) -> List[str]:
    """The disguises that keep the function of a model of this config (in the order `all` applies them)."""
    config = config.get_text_config()
    names = ["permute_mlp_units"]
    if any(getattr(config, key, None) for key in ("num_local_experts", "num_experts", "n_routed_experts")):
        names.append("permute_experts")
    names += ["permute_heads", "rescale_heads"]
    mla = getattr(config, "kv_lora_rank", None)
    if mla:
        names.append("mix_latents")
    if not config.model_type.startswith(("gemma", "olmo")) and not _has_qk_norm(config):
        names.append("scale_uniformly")  # norms after a block or on queries and keys share the config's eps
    names.append("rotate_residual")
    return names


def all_disguises(state: StateDict, config, seed: int = 0) -> StateDict:
    for name in allowed(config):
        state = DISGUISES[name](state, config, seed)
    return state


DISGUISES: Dict[str, Callable] = {
    "permute_mlp_units": permute_mlp_units,
    "permute_experts": permute_experts,
    "permute_heads": permute_heads,
    "rotate_residual": rotate_residual,
    "rescale_heads": rescale_heads,
    "scale_uniformly": lambda state, config, seed=0: scale_uniformly(state, config),
    "mix_latents": mix_latents,
    "all": all_disguises,
}
#: The disguises `allowed` chooses among.
_ARCHITECTURE_DEPENDENT = frozenset(DISGUISES) - {"all"}


def disguised_copy(src: str, dst: str, disguise: str, seed: int = 0, check_logits: bool = True) -> float:
    """Loads `src` (transformers, float32), applies DISGUISES[disguise], saves float32 to `dst`; returns the
    largest |logit difference| on a few fixed sequences (checked < 1e-4 when `check_logits`)."""
    import transformers

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    config = copy.deepcopy(model.config)  # a disguise may change it (scale_uniformly: the norms' eps)
    if disguise in _ARCHITECTURE_DEPENDENT and disguise not in allowed(config):
        raise ValueError(f"{config.model_type} does not allow the disguise {disguise}; it allows {allowed(config)}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    new_state = DISGUISES[disguise](state, config, seed)
    if Layout(state, config).tied:  # one matrix: the unembedding follows the embedding
        new_state["lm_head.weight"] = new_state[Layout(state, config).embeddings[0]]
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
