"""Test helper: quantizes a model folder's weights the way real releases do, and
numpy references that decode them without postsvd.

- block-scaled FP8 (DeepSeek-V3/R1, Qwen3-*-FP8): ``X.weight`` as torch.float8_e4m3fn,
  ``X.weight_scale_inv`` [ceil(out/B0), ceil(in/B1)] = amax of the block / 448;
- compressed-tensors FP8 (llm-compressor "FP8-dynamic"): ``X.weight_scale`` per tensor [1]
  or per output channel [out, 1];
- fbgemm FP8 (Llama-4 FP8 releases, ``quant_method: fbgemm_fp8``): ``X.weight_scale`` [out, 1] of
  each nn.Linear, and for the fused experts ``gate_up_proj_scale`` [E, 1, 2 inter] and
  ``down_proj_scale`` [E, hidden, 1]: one scale per expert and output channel (write_fbgemm_fp8);
- MXFP4 (gpt-oss experts): ``*_blocks`` [..., G, 16] uint8 (two E2M1 values per byte, low
  nibble first) and ``*_scales`` [..., G] uint8 E8M0 exponents, 32 values per exponent; a whole
  gpt_oss folder as the release stores it (write_mxfp4_gpt_oss), and back to float32 by numpy
  (write_dequantized_mxfp4).

Files are written with the official safetensors library.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

E4M3_MAX = 448.0
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------- numpy references

def e4m3_table() -> np.ndarray:
    """float32 value of each float8_e4m3fn code, from the bit layout (S.EEEE.MMM, bias 7; S.1111.111 is NaN)."""
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent = (codes >> 3) & 0xF
    mantissa = (codes & 0x7).astype(np.float64)
    value = np.where(exponent == 0, np.ldexp(mantissa / 8.0, -6), np.ldexp(1.0 + mantissa / 8.0, exponent - 7))
    value = sign * value
    value[(codes & 0x7F) == 0x7F] = np.nan
    return value.astype(np.float32)


def dequantize_fp8_reference(codes: np.ndarray, scale: np.ndarray, block: Optional[Tuple[int, int]],
                             dtype=np.float32) -> np.ndarray:
    """W_hf [out, in] = float(q) * float(scale) computed in `dtype` (float32: one rounding, as the
    releases' reference kernels). `scale` is the stored grid as float32; `block` None = per tensor
    or per channel (broadcast)."""
    q = e4m3_table()[codes.astype(np.int64)].astype(dtype)
    s = scale.astype(np.float32).astype(dtype)
    if block is not None:
        out, inp = codes.shape
        s = np.repeat(np.repeat(s, block[0], axis=0), block[1], axis=1)[:out, :inp]
    return q * s


def dequantize_mxfp4_reference(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[..., G, 16] uint8 blocks and [..., G] E8M0 scales -> float32 [..., G * 32] (row-major)."""
    lut = np.array(FP4_VALUES, dtype=np.float32)
    values = np.empty(blocks.shape[:-1] + (32,), dtype=np.float32)
    values[..., 0::2] = lut[blocks & 0x0F]
    values[..., 1::2] = lut[blocks >> 4]
    values = np.ldexp(values, scales.astype(np.int32)[..., None] - 127).astype(np.float32)
    return values.reshape(blocks.shape[:-2] + (blocks.shape[-2] * 32,))


# ---------------------------------------------------------------- quantizers

def _e4m3(torch, w):
    return w.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_block_fp8(weight, block: Tuple[int, int], scale_dtype: str = "float32"):
    """(q float8_e4m3fn [out, in], scale_inv [ceil(out/B0), ceil(in/B1)]): scale = amax(block) / 448."""
    import torch

    out, inp = weight.shape
    b0, b1 = block
    g0, g1 = -(-out // b0), -(-inp // b1)
    w = weight.float()
    padded = torch.zeros(g0 * b0, g1 * b1)
    padded[:out, :inp] = w
    amax = padded.reshape(g0, b0, g1, b1).abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax)).to(getattr(torch, scale_dtype))
    expanded = scale.float().repeat_interleave(b0, 0).repeat_interleave(b1, 1)[:out, :inp]
    return _e4m3(torch, w / expanded), scale


def quantize_channel_fp8(weight, strategy: str):
    """compressed-tensors: (q, weight_scale) with scale [1] ("tensor") or [out, 1] ("channel")."""
    import torch

    w = weight.float()
    amax = w.abs().amax().reshape(1) if strategy == "tensor" else w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax)).to(weight.dtype)
    return _e4m3(torch, w / scale.float()), scale


def quantize_mxfp4(weight) -> Tuple[np.ndarray, np.ndarray]:
    """OCP MX: per 32 values along the last dim, exponent floor(log2(amax)) - 2 (E2M1's largest
    exponent), values rounded to the nearest E2M1 (saturating at 6). Returns (blocks, scales)."""
    w = np.asarray(weight, dtype=np.float32)
    *prefix, n = w.shape
    assert n % 32 == 0, n
    groups = w.reshape(*prefix, n // 32, 32)
    amax = np.abs(groups).max(axis=-1)
    exponent = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - 2, -127)
    exponent = np.clip(exponent, -127, 127).astype(np.int32)
    scaled = groups / np.ldexp(np.float32(1.0), exponent)[..., None]
    lut = np.array(FP4_VALUES[:8], dtype=np.float32)
    magnitude = np.abs(np.clip(scaled, -6.0, 6.0))
    index = np.abs(magnitude[..., None] - lut).argmin(axis=-1).astype(np.uint8)
    index |= np.where(scaled < 0, 8, 0).astype(np.uint8)
    blocks = (index[..., 0::2] | (index[..., 1::2] << 4)).astype(np.uint8)
    return blocks, (exponent + 127).astype(np.uint8)


# ---------------------------------------------------------------- folders

def _load(folder: str) -> Dict[str, "object"]:
    from safetensors.torch import load_file

    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, name)))
    return tensors


def _is_projection(name: str, tensor) -> bool:
    return tensor.dim() == 2 and name.endswith(".weight") and name.split(".")[-2] in PROJECTIONS


def _module(name: str) -> str:
    return name[: -len(".weight")]


def _write(dst: str, src: str, tensors: Dict[str, "object"], quantization: Optional[dict],
           second_shard: Iterable[str] = ()) -> None:
    """Writes `tensors` (one file, or the names in `second_shard` in a second shard with an index)
    and config.json with `quantization_config` (None: without one); other files of `src` are copied."""
    from safetensors.torch import save_file

    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if not name.endswith(".safetensors") and name != "model.safetensors.index.json" and name != "config.json":
            path = os.path.join(src, name)
            if os.path.isfile(path):
                shutil.copy(path, os.path.join(dst, name))
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    if quantization is None:
        config.pop("quantization_config", None)
    else:
        config["quantization_config"] = quantization
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    second = set(second_shard)
    if not second:
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(dst, "model.safetensors"),
                  metadata={"format": "pt"})
        return
    shards = {"model-00001-of-00002.safetensors": {k: v for k, v in tensors.items() if k not in second},
              "model-00002-of-00002.safetensors": {k: v for k, v in tensors.items() if k in second}}
    weight_map = {}
    for file, part in shards.items():
        save_file({k: v.contiguous() for k, v in part.items()}, os.path.join(dst, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)


def write_block_fp8(src: str, dst: str, block: Tuple[int, int] = (128, 128), scale_dtype: str = "float32",
                    modules_to_not_convert: Sequence[str] = (), scales_in_other_shard: bool = False) -> None:
    """A copy of model folder `src` with every projection block-quantized (DeepSeek-V3 / Qwen3-FP8 layout)."""
    tensors = _load(src)
    out, scales = {}, []
    for name, t in tensors.items():
        if _is_projection(name, t) and not any(m in name for m in modules_to_not_convert):
            q, scale = quantize_block_fp8(t, block, scale_dtype)
            out[name] = q
            out[name + "_scale_inv"] = scale
            scales.append(name + "_scale_inv")
        else:
            out[name] = t
    quantization = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                    "weight_block_size": list(block)}
    if modules_to_not_convert:
        quantization["modules_to_not_convert"] = list(modules_to_not_convert)
    _write(dst, src, out, quantization, scales if scales_in_other_shard else ())


def write_compressed_fp8(src: str, dst: str, strategy: str = "channel", ignore: Sequence[str] = ("lm_head",)) -> None:
    """A copy of `src` in llm-compressor's FP8-dynamic layout (weight_scale per tensor or per channel)."""
    tensors = _load(src)
    out = {}
    for name, t in tensors.items():
        if _is_projection(name, t) and _module(name) not in ignore:
            q, scale = quantize_channel_fp8(t, strategy)
            out[name] = q
            out[_module(name) + ".weight_scale"] = scale
        else:
            out[name] = t
    quantization = {
        "quant_method": "compressed-tensors", "format": "float-quantized", "ignore": list(ignore),
        "config_groups": {"group_0": {"targets": ["Linear"],
                                      "weights": {"num_bits": 8, "type": "float", "strategy": strategy,
                                                  "symmetric": True, "dynamic": False},
                                      "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                                            "symmetric": True, "dynamic": True}}}}
    _write(dst, src, out, quantization)


def quantize_fused_fp8(weight):
    """fbgemm_fp8 on a fused expert tensor stored [E, in, out]: (q float8_e4m3fn, scale float32 [E, 1, out])
    with scale = amax over `in` / 448 per expert and output channel (transformers' FbgemmFp8Llama4TextExperts)."""
    import torch

    w = weight.float()
    amax = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return _e4m3(torch, w / scale), scale


def write_fbgemm_fp8(src: str, dst: str, modules_to_not_convert: Sequence[str] = ("lm_head",)) -> None:
    """A copy of a llama4_text folder `src` as the Llama-4 FP8 releases store it (fbgemm_fp8): every
    projection nn.Linear FP8 with ``weight_scale`` [out, 1], the fused experts FP8 with
    ``gate_up_proj_scale`` [E, 1, 2 inter] and ``down_proj_scale`` [E, hidden, 1]."""
    out = {}
    for name, t in _load(src).items():
        if any(m in name for m in modules_to_not_convert):
            out[name] = t
        elif name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            q, scale = quantize_fused_fp8(t)
            out[name] = q
            # gate_up_proj_scale [E, 1, 2 inter]; down_proj_scale [E, hidden, 1] (fbgemm's shapes).
            out[name + "_scale"] = scale if name.endswith("gate_up_proj") else scale.transpose(1, 2).contiguous()
        elif t.dim() == 2 and name.endswith(".weight") and name.split(".")[-2] in PROJECTIONS:
            q, scale = quantize_channel_fp8(t.float(), "channel")
            out[name], out[_module(name) + ".weight_scale"] = q, scale.float()
        else:
            out[name] = t
    _write(dst, src, out, {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0,
                           "modules_to_not_convert": list(modules_to_not_convert)})


#: The release's quantization_config (openai/gpt-oss-20b, -120b).
GPT_OSS_MXFP4_CONFIG = {"quant_method": "mxfp4",
                        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                   "model.embed_tokens", "lm_head"]}


def write_mxfp4_gpt_oss(src: str, dst: str) -> None:
    """A copy of gpt_oss folder `src` (BF16/F32 experts ``mlp.experts.gate_up_proj`` [E, hidden, 2 inter]
    and ``down_proj`` [E, inter, hidden]) with the experts in MXFP4 as the gpt-oss release stores them:
    ``gate_up_proj_blocks`` [E, 2 inter, hidden / 32, 16] and ``_scales`` [E, 2 inter, hidden / 32]
    (rows = output columns, gate and up interleaved), ``down_proj_blocks`` [E, hidden, inter / 32, 16]
    and ``_scales``: the transpose of what transformers' convert_moe_packed_tensors gives back."""
    import torch

    out = {}
    for name, t in _load(src).items():
        if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            blocks, scales = quantize_mxfp4(t.float().transpose(1, 2).numpy())  # [E, out, in] per expert
            out[name + "_blocks"] = torch.from_numpy(blocks)
            out[name + "_scales"] = torch.from_numpy(scales)
        else:
            out[name] = t
    _write(dst, src, out, dict(GPT_OSS_MXFP4_CONFIG))


def write_dequantized_mxfp4(src: str, dst: str) -> None:
    """A copy of MXFP4 gpt_oss folder `src` with every ``X_blocks`` / ``X_scales`` pair dequantized by
    dequantize_mxfp4_reference into float32 ``X`` [E, G * 32, R] (the last two dims swapped: the
    unquantized gpt_oss layout) and config.json without quantization_config."""
    import torch

    tensors = _load(src)
    out = {}
    for name, t in tensors.items():
        if name.endswith("_blocks"):
            stem = name[: -len("_blocks")]
            values = dequantize_mxfp4_reference(t.numpy(), tensors[stem + "_scales"].numpy())  # [E, R, G * 32]
            out[stem] = torch.from_numpy(np.ascontiguousarray(values.transpose(0, 2, 1)))
        elif not name.endswith("_scales"):
            out[name] = t
    _write(dst, src, out, None)


def relative_bound_e4m3() -> float:
    """Largest relative rounding error of one value in float8_e4m3fn's normal range: 2^-4 (3 mantissa bits)."""
    return math.ldexp(1.0, -4)
