"""Writes the seeds of fuzz_quantized_checkpoint (tests/fuzz/corpus/quantized_checkpoint/): tiny
quantized checkpoints in each format postsvd dequantizes, as one input each: a 2-byte little-endian
length, config.json, then model.safetensors. Run from the repository root; numpy only."""
import json
import os
import struct

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "quantized_checkpoint")
RNG = np.random.default_rng(24)
LLAMA = dict(model_type="llama", hidden_size=4, num_attention_heads=2, num_key_value_heads=1, intermediate_size=6,
             num_hidden_layers=1)
LLAMA_SHAPES = {"self_attn.q_proj": (4, 4), "self_attn.k_proj": (2, 4), "self_attn.v_proj": (2, 4),
                "self_attn.o_proj": (4, 4), "mlp.gate_proj": (6, 4), "mlp.up_proj": (6, 4), "mlp.down_proj": (4, 6)}


def e4m3(shape):
    """Random float8_e4m3fn codes, NaN (S.1111.111) left out."""
    codes = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    return np.where((codes & 0x7F) == 0x7F, codes ^ 0x01, codes).astype(np.uint8)


def safetensors(tensors):
    """{name: (dtype, shape, bytes)} -> the file's bytes."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(shape, scale=0.5):
    return ("F32", shape, (RNG.standard_normal(shape) * scale).astype(np.float32).tobytes())


def seed(name, config, tensors):
    text = json.dumps(config).encode()
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(struct.pack("<H", len(text)) + text + safetensors(tensors))


def block_fp8():
    tensors = {}
    for module, (out, inp) in LLAMA_SHAPES.items():
        name = f"model.layers.0.{module}"
        tensors[name + ".weight"] = ("F8_E4M3", (out, inp), e4m3((out, inp)).tobytes())
        tensors[name + ".weight_scale_inv"] = f32(((out + 1) // 2, (inp + 1) // 2), 0.01)
    seed("block_fp8_llama.bin", dict(LLAMA, quantization_config={
        "quant_method": "fp8", "weight_block_size": [2, 2], "activation_scheme": "dynamic"}), tensors)


def compressed_tensors():
    tensors = {}
    for module, (out, inp) in LLAMA_SHAPES.items():
        name = f"model.layers.0.{module}"
        if module == "mlp.gate_proj":  # ignored by the pattern below: stored unquantized
            tensors[name + ".weight"] = f32((out, inp))
            continue
        tensors[name + ".weight"] = ("F8_E4M3", (out, inp), e4m3((out, inp)).tobytes())
        tensors[name + ".weight_scale"] = f32((out, 1), 0.01) if module != "self_attn.o_proj" else f32((1,), 0.01)
    seed("compressed_tensors_llama.bin", dict(LLAMA, quantization_config={
        "quant_method": "compressed-tensors", "format": "float-quantized",
        "ignore": ["lm_head", "re:.*mlp\\.gate_proj$"],
        "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}}),
        tensors)


def fbgemm_llama4():
    config = dict(model_type="llama4_text", hidden_size=4, num_attention_heads=2, num_key_value_heads=1, head_dim=2,
                  intermediate_size=6, intermediate_size_mlp=6, num_local_experts=2, num_hidden_layers=1,
                  interleave_moe_layer_step=1,
                  quantization_config={"quant_method": "fbgemm_fp8", "modules_to_not_convert": ["self_attn"]})
    p = "model.layers.0."
    tensors = {p + f"self_attn.{m}.weight": f32(shape) for m, shape in
               (("q_proj", (4, 4)), ("k_proj", (2, 4)), ("v_proj", (2, 4)), ("o_proj", (4, 4)))}
    for name, shape in (("gate_up_proj", (2, 4, 12)), ("down_proj", (2, 6, 4))):
        tensors[p + "feed_forward.experts." + name] = ("F8_E4M3", shape, e4m3(shape).tobytes())
        tensors[p + "feed_forward.experts." + name + "_scale"] = f32((shape[0], 1, shape[2]), 0.01)
    for name, shape in (("gate_proj", (6, 4)), ("up_proj", (6, 4)), ("down_proj", (4, 6))):
        tensors[p + "feed_forward.shared_expert." + name + ".weight"] = ("F8_E4M3", shape, e4m3(shape).tobytes())
        tensors[p + "feed_forward.shared_expert." + name + ".weight_scale"] = f32((shape[0], 1), 0.01)
    seed("fbgemm_llama4.bin", config, tensors)


def mxfp4_gpt_oss():
    config = dict(model_type="gpt_oss", hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                  intermediate_size=32, num_local_experts=2, num_hidden_layers=1,
                  quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": ["self_attn"]})
    p = "model.layers.0."
    tensors = {p + f"self_attn.{m}.weight": ("BF16", shape, (RNG.standard_normal(shape).astype(np.float32)
                                                             .view(np.uint32) >> 16).astype(np.uint16).tobytes())
               for m, shape in (("q_proj", (32, 32)), ("k_proj", (16, 32)), ("v_proj", (16, 32)),
                                ("o_proj", (32, 32)))}
    for name, rows in (("gate_up_proj", 64), ("down_proj", 32)):  # [E, out, in / 32, 16] and [E, out, in / 32]
        tensors[p + "mlp.experts." + name + "_blocks"] = ("U8", (2, rows, 1, 16),
                                                          RNG.integers(0, 256, (2, rows, 1, 16), np.uint8).tobytes())
        tensors[p + "mlp.experts." + name + "_scales"] = ("U8", (2, rows, 1),
                                                          RNG.integers(118, 130, (2, rows, 1), np.uint8).tobytes())
    seed("mxfp4_gpt_oss.bin", config, tensors)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    block_fp8()
    compressed_tensors()
    fbgemm_llama4()
    mxfp4_gpt_oss()
