"""Synthetic base/post checkpoint pairs with a known answer.

:func:`make_pair` writes two Hugging Face model folders (config.json plus
safetensors written by the official ``safetensors`` library, optionally sharded
with an index). With ``related=True`` every projection of the post model is

    W_post = (U Q) (alpha S) (V Q)^T     where  W_base = U S V^T,  W = W_hf^T,

with one random rotation Q of angle ``rotation_angle`` per matrix: the paper's
model of post-training. postsvd must then report scaling = alpha and NF ~ 0.
With ``related=False`` the post model is an unrelated random model (NF far from
0, like two separately pre-trained models). The folders load with
``transformers.AutoModelForCausalLM.from_pretrained``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Mapping, Tuple, Union

import numpy as np

from ._extras import require
from ._validate import KIND_GROUPS, KINDS
from .errors import InvalidArgumentError

#: Model types make_pair can write (the llama family: same tensor names).
SYNTHETIC_MODEL_TYPES = ("llama", "qwen2", "mistral")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
_STORAGE_DTYPES = ("bfloat16", "float16", "float32")


@dataclasses.dataclass
class SyntheticPair:
    """What :func:`make_pair` wrote and the answer postsvd should find."""

    base: str
    post: str
    model_type: str
    layers: int
    alpha: Dict[str, float]
    rotation_angle: float
    related: bool
    dtype: str


def random_rotation(k: int, angle: float, rng: np.random.Generator) -> np.ndarray:
    """A random rotation ``expm(A)`` of size k whose largest rotation angle is `angle` radians."""
    generator = rng.standard_normal((k, k))
    skew = generator - generator.T
    # i * skew is Hermitian: skew = W diag(-i lam) W^H, so expm(skew) = W diag(exp(-i lam)) W^H.
    lam, w = np.linalg.eigh(1j * skew)
    largest = np.max(np.abs(lam))
    if largest == 0:
        return np.eye(k)
    lam = lam * (angle / largest)
    rotation = (w * np.exp(-1j * lam)) @ w.conj().T
    return np.ascontiguousarray(rotation.real)


def _random_matrix(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A random [rows, cols] matrix with a decaying, well-separated spectrum (LLM-like scale)."""
    k = min(rows, cols)
    u, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    index = np.arange(k) / max(k - 1, 1)
    # Smooth, well separated, and different per matrix (scale and decay), so unrelated models differ in sigma too.
    scale, decay = rng.uniform(0.8, 1.25), rng.uniform(2.0, 3.0)
    spectrum = scale * (0.15 + 1.35 * np.exp(-decay * index) + 0.2 * (1 - index))
    return (u * spectrum) @ v.T


def _projection_shapes(hidden: int, intermediate: int, heads: int, kv_heads: int) -> Dict[str, Tuple[int, int]]:
    """HF [out, in] shape of each projection kind."""
    head_dim = hidden // heads
    return {"q": (heads * head_dim, hidden), "k": (kv_heads * head_dim, hidden), "v": (kv_heads * head_dim, hidden),
            "o": (hidden, heads * head_dim), "gate": (intermediate, hidden), "up": (intermediate, hidden),
            "down": (hidden, intermediate)}


def _tensor_name(layer: int, kind: str) -> str:
    module = "mlp" if kind in KIND_GROUPS["mlp"] else "self_attn"
    return f"model.layers.{layer}.{module}.{kind}_proj.weight"


def _check_args(model_type, layers, hidden, intermediate, heads, kv_heads, dtype, alpha):
    if model_type not in SYNTHETIC_MODEL_TYPES:
        raise InvalidArgumentError(
            f"model_type: expected one of {', '.join(SYNTHETIC_MODEL_TYPES)}, got {model_type!r}")
    if dtype not in _STORAGE_DTYPES:
        raise InvalidArgumentError(f"dtype: expected one of {', '.join(_STORAGE_DTYPES)}, got {dtype!r}")
    for name, value in (("layers", layers), ("hidden", hidden), ("intermediate", intermediate), ("heads", heads),
                        ("kv_heads", kv_heads)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidArgumentError(f"{name}: expected a positive integer, got {value!r}")
    if hidden % heads:
        raise InvalidArgumentError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    if heads % kv_heads:
        raise InvalidArgumentError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    # The kinds make_pair writes (the llama family's); other kinds of the core's table (DeepSeek's MLA
    # q_a, kv_b_k, ...) are not in these models, so an alpha for them would be silently ignored.
    written = list(_projection_shapes(1, 1, 1, 1))
    if isinstance(alpha, Mapping):
        unknown = [k for k in alpha if k not in KINDS]
        if unknown:
            raise InvalidArgumentError(f"alpha: unknown kinds {unknown}; valid kinds are {', '.join(KINDS)}")
        absent = [k for k in alpha if k not in written]
        if absent:
            raise InvalidArgumentError(f"alpha: a synthetic {model_type} model has no {', '.join(absent)} "
                                       f"matrices; its kinds are {', '.join(written)}")
        values = {k: float(alpha.get(k, 1.0)) for k in written}
    else:
        values = {k: float(alpha) for k in written}
    if any(not np.isfinite(v) or v <= 0 for v in values.values()):
        raise InvalidArgumentError(f"alpha: expected positive finite scaling factors, got {alpha!r}")
    return values


def _config(model_type: str, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int,
            dtype: str) -> dict:
    config = {
        "architectures": [_ARCHITECTURES[model_type]], "model_type": model_type, "hidden_size": hidden,
        "intermediate_size": intermediate, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers, "head_dim": hidden // heads, "vocab_size": vocab,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "torch_dtype": dtype, "bos_token_id": 1, "eos_token_id": 2,
        "initializer_range": 0.02,
    }
    if model_type == "mistral":
        config["sliding_window"] = None
    if model_type == "qwen2":
        config["use_sliding_window"] = False
    return config


def _save(tensors: Dict[str, np.ndarray], folder: str, config: dict, dtype: str, shards: int) -> None:
    """Writes config.json and the tensors with the official safetensors library."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    names = list(tensors)
    groups: List[List[str]] = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    groups = [sorted(g) for g in groups if g]
    files = (["model.safetensors"] if len(groups) == 1 else
             [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])
    weight_map, total_size = {}, 0
    for file_name, group in zip(files, groups):
        data = {name: tensors[name] for name in group}
        total_size += _write_safetensors(data, os.path.join(folder, file_name), dtype)
        weight_map.update({name: file_name for name in group})
    if len(groups) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)


def _write_safetensors(data: Dict[str, np.ndarray], path: str, dtype: str) -> int:
    if dtype == "bfloat16":
        try:
            torch = require("torch", "dtype='bfloat16' (numpy has no bfloat16)")
            from safetensors.torch import save_file
        except ImportError as error:
            raise InvalidArgumentError(f"{error}, or pass dtype='float16' / 'float32'") from error
        tensors = {n: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16)
                   for n, a in data.items()}
        save_file(tensors, path, metadata={"format": "pt"})
        return sum(t.numel() * 2 for t in tensors.values())
    from safetensors.numpy import save_file

    np_dtype = np.float16 if dtype == "float16" else np.float32
    arrays = {n: np.ascontiguousarray(a, dtype=np_dtype) for n, a in data.items()}
    save_file(arrays, path, metadata={"format": "pt"})
    return sum(a.nbytes for a in arrays.values())


def _random_model(rng: np.random.Generator, layers: int, shapes, hidden: int, vocab: int,
                  qkv_bias: bool) -> Dict[str, np.ndarray]:
    tensors: Dict[str, np.ndarray] = {
        "model.embed_tokens.weight": rng.standard_normal((vocab, hidden)) * 0.02,
        "model.norm.weight": 1.0 + 0.05 * rng.standard_normal(hidden),
        "lm_head.weight": rng.standard_normal((vocab, hidden)) * 0.02,
    }
    for layer in range(layers):
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = 1.0 + 0.05 * rng.standard_normal(hidden)
        tensors[f"model.layers.{layer}.post_attention_layernorm.weight"] = 1.0 + 0.05 * rng.standard_normal(hidden)
        for kind, (out_features, in_features) in shapes.items():
            # Generated in paper orientation [in, out]; stored as W_hf = W^T.
            tensors[_tensor_name(layer, kind)] = _random_matrix(in_features, out_features, rng).T
            if qkv_bias and kind in ("q", "k", "v"):
                tensors[_tensor_name(layer, kind).replace(".weight", ".bias")] = 0.02 * rng.standard_normal(
                    out_features)
    return tensors


def post_train(w_hf: np.ndarray, alpha: float, rotation: np.ndarray) -> np.ndarray:
    """The paper's model of post-training for one HF weight [out, in]:
    W = W_hf^T = U S V^T  ->  (U Q)(alpha S)(V Q)^T, returned as [out, in]."""
    u, s, vt = np.linalg.svd(np.asarray(w_hf, dtype=np.float64).T, full_matrices=False)
    v = vt.T
    return (((u @ rotation) * (alpha * s)) @ (v @ rotation).T).T


def make_pair(folder_base: Union[str, os.PathLike], folder_post: Union[str, os.PathLike], *,
              model_type: str = "llama", layers: int = 2, hidden: int = 64, intermediate: int = 128,
              heads: int = 4, kv_heads: int = 2, alpha: Union[float, Mapping[str, float]] = 0.9,
              rotation_angle: float = 0.3, dtype: str = "bfloat16", seed: int = 0, sharded: bool = False,
              related: bool = True, vocab: int = 256) -> SyntheticPair:
    """Writes a base model and a post model with a known relation (see the module docstring).

    Args:
        folder_base, folder_post: output folders (created; files overwritten).
        model_type: 'llama', 'qwen2' (adds q/k/v biases) or 'mistral'.
        layers, hidden, intermediate, heads, kv_heads, vocab: the model's sizes.
        alpha: the singular value scaling of every projection, or a dict kind -> alpha
            over the kinds these models have (q, k, v, o, gate, up, down; kinds not named
            keep 1.0). Other kinds (DeepSeek's MLA q_a, kv_b_k, ...) are an error.
        rotation_angle: the largest angle (radians) of each matrix's random rotation Q.
        dtype: storage dtype, 'bfloat16' (needs torch), 'float16' or 'float32'.
            Use 'float32' when testing exact answers: bf16 rounding perturbs
            the small singular values.
        seed: random seed; the same arguments give the same files.
        sharded: write three shards and model.safetensors.index.json.
        related: False writes an unrelated random post model instead.

    Returns:
        A :class:`SyntheticPair` with the folders and the expected answer.
    """
    alphas = _check_args(model_type, layers, hidden, intermediate, heads, kv_heads, dtype, alpha)
    if not np.isfinite(rotation_angle) or rotation_angle < 0:
        raise InvalidArgumentError(f"rotation_angle: expected a finite angle >= 0 (radians), got {rotation_angle!r}")
    rng = np.random.default_rng(seed)
    shapes = _projection_shapes(hidden, intermediate, heads, kv_heads)
    qkv_bias = model_type == "qwen2"
    base = _random_model(rng, layers, shapes, hidden, vocab, qkv_bias)
    if related:
        post = dict(base)
        for layer in range(layers):
            for kind in shapes:
                name = _tensor_name(layer, kind)
                rotation = random_rotation(min(base[name].shape), rotation_angle, rng)
                post[name] = post_train(base[name], alphas[kind], rotation)
    else:
        post = _random_model(np.random.default_rng([seed, 1]), layers, shapes, hidden, vocab, qkv_bias)
    config = _config(model_type, layers, hidden, intermediate, heads, kv_heads, vocab, dtype)
    shards = 3 if sharded else 1
    _save(base, os.fspath(folder_base), config, dtype, shards)
    _save(post, os.fspath(folder_post), config, dtype, shards)
    return SyntheticPair(base=os.fspath(folder_base), post=os.fspath(folder_post), model_type=model_type,
                         layers=layers, alpha=alphas, rotation_angle=float(rotation_angle), related=related,
                         dtype=dtype)
