"""Tiny PEFT LoRA adapters built offline with transformers + peft, for the adapter tests and the adapter
benchmark: a base folder, the adapter folder peft saves, and the float32 model peft's merge_and_unload
gives (the reference every matrix postsvd forms is checked against)."""
import json
import os

from frontier_models import build_frontier_model
from helpers import TINY_MODEL_TYPES, build_tiny_model

#: The variants checked against peft: name -> (model_type, LoraConfig keywords). Every variant sets
#: init_lora_weights=False (random non-zero B, so that ΔW != 0).
VARIANTS = {
    "llama-lora": ("llama", dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])),
    "llama-rslora-patterns": ("llama", dict(target_modules=["q_proj", "k_proj", "o_proj", "gate_proj"],
                                            use_rslora=True, rank_pattern={"o_proj": 2, "layers.1.self_attn.q_proj": 6},
                                            alpha_pattern={"k_proj": 3, "gate_proj": 20})),
    "llama-layers-modules-to-save": ("llama", dict(target_modules=["q_proj", "up_proj"], layers_to_transform=[1],
                                                   modules_to_save=["down_proj"])),
    "qwen3-dora": ("qwen3", dict(target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], use_dora=True)),
    "gpt2-fan-in-fan-out": ("gpt2", dict(target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    "gpt2-dora": ("gpt2", dict(target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_dora=True)),
    "phi3-fused-dora": ("phi3", dict(target_modules=["qkv_proj", "gate_up_proj"], use_dora=True)),
    "qwen3_moe-target-parameters": ("qwen3_moe", dict(target_modules=["q_proj"],
                                                      target_parameters=["mlp.experts.gate_up_proj",
                                                                         "mlp.experts.down_proj"],
                                                      rank_pattern={"down_proj": 2})),
    "mixtral-target-parameters": ("mixtral", dict(target_modules=["o_proj"],
                                                  target_parameters=["mlp.experts.gate_up_proj"])),
    "llama4-target-parameters": ("llama4_text", dict(target_modules=["q_proj"],
                                                     target_parameters=["feed_forward.experts.gate_up_proj",
                                                                        "feed_forward.experts.down_proj"])),
    "gpt_oss-target-parameters": ("gpt_oss", dict(target_modules=["k_proj"],
                                                  target_parameters=["mlp.experts.gate_up_proj",
                                                                     "mlp.experts.down_proj"])),
}


def build_model(model_type, seed=0):
    """A tiny random float32 transformers model of `model_type` (helpers or frontier_models)."""
    if model_type in TINY_MODEL_TYPES:
        return build_tiny_model(model_type, seed=seed)
    return build_frontier_model(model_type, seed=seed)


def build_adapter(folder, model_type, *, r=4, lora_alpha=8, seed=0, adapter_seed=1, base_name=None,
                  save_base=True, perturb_saved_modules=True, **lora):
    """Saves `folder/base` (float32), `folder/adapter` (peft's save_pretrained) and `folder/merged` (peft's
    merge_and_unload, float32). modules_to_save copies are perturbed (as training would) so that replacing
    them matters. `base_name`: the adapter's base_model_name_or_path (default: the base folder).
    Returns (base, adapter, merged) folders."""
    import torch
    from peft import LoraConfig, get_peft_model

    os.makedirs(folder, exist_ok=True)
    base, adapter, merged = (os.path.join(folder, name) for name in ("base", "adapter", "merged"))
    if save_base:
        build_model(model_type, seed=seed).save_pretrained(base)
    model = build_model(model_type, seed=seed)
    model.name_or_path = base_name if base_name is not None else base  # peft records it as base_model_name_or_path
    torch.manual_seed(adapter_seed)
    config = LoraConfig(r=r, lora_alpha=lora_alpha, init_lora_weights=False, **lora)
    peft_model = get_peft_model(model, config)
    if perturb_saved_modules and lora.get("modules_to_save"):
        generator = torch.Generator().manual_seed(adapter_seed + 1)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if ".modules_to_save." in name:
                    parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    peft_model.save_pretrained(adapter)
    peft_model.merge_and_unload().save_pretrained(merged)
    return base, adapter, merged


def edit_config(adapter, **changes):
    """Rewrites keys of adapter_config.json (None removes a key)."""
    path = os.path.join(adapter, "adapter_config.json")
    with open(path) as f:
        config = json.load(f)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def edit_tensors(adapter, edit):
    """Rewrites adapter_model.safetensors with edit(dict of name -> torch tensor) applied in place."""
    from safetensors.torch import load_file, save_file

    path = os.path.join(adapter, "adapter_model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})
