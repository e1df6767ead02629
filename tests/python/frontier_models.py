"""Tiny random models of the frontier architectures (qwen3, gemma3, olmo2/3, glm4_moe, gpt_oss, llama4,
deepseek_v2/v3) and the Mixtral / Qwen MoE families (mixtral, qwen2_moe, qwen3_moe), built offline with the installed transformers, and the projection matrices their
modules compute with, taken from the modules themselves (an independent reading of each layout)."""
import numpy as np

#: Text-only model types with a tiny config here.
FRONTIER_TEXT_TYPES = ("qwen3", "gemma3_text", "olmo2", "olmo3", "glm4_moe", "gpt_oss", "llama4_text", "deepseek_v3",
                       "deepseek_v2", "mixtral", "qwen2_moe", "qwen3_moe")
#: Multimodal checkpoints whose text tower postsvd reads.
FRONTIER_MULTIMODAL_TYPES = ("gemma3", "llama4")
#: Model types whose expert tensors transformers keeps fused [E, in, out] on disk and in memory.
FUSED_IN_OUT_EXPERTS = {"llama4_text": "halves", "llama4": "halves", "gpt_oss": "interleaved"}

_COMMON = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
               pad_token_id=0)
# DeepSeek MLA sizes: q_b / kv_b outputs differ from every other width, so a swapped layout fails.
_MLA = dict(q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)
# MoE sizes: 2 * moe_intermediate_size != hidden_size, so [in, out] and [out, in] cannot be confused.
_MOE = dict(moe_intermediate_size=12, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
            first_k_dense_replace=1, n_group=1, topk_group=1)


def frontier_config(model_type):
    """A tiny random config of `model_type`, built offline."""
    import transformers

    if model_type == "qwen3":
        return transformers.Qwen3Config(**_COMMON, head_dim=8)
    if model_type == "gemma3_text":
        return transformers.Gemma3TextConfig(**_COMMON, head_dim=8, sliding_window=16)
    if model_type == "olmo2":
        return transformers.Olmo2Config(**_COMMON)
    if model_type == "olmo3":
        return transformers.Olmo3Config(**_COMMON, sliding_window=16)
    if model_type == "glm4_moe":
        return transformers.Glm4MoeConfig(**_COMMON, **_MOE, head_dim=8)
    if model_type == "gpt_oss":
        return transformers.GptOssConfig(**_COMMON, num_local_experts=3, num_experts_per_tok=2, head_dim=8)
    if model_type == "llama4_text":
        return transformers.Llama4TextConfig(**_COMMON, head_dim=8, intermediate_size_mlp=40, num_local_experts=3,
                                             interleave_moe_layer_step=2)
    if model_type == "deepseek_v3":
        return transformers.DeepseekV3Config(**{**_COMMON, "num_key_value_heads": 4}, **_MOE, **_MLA)
    if model_type == "deepseek_v2":
        # q_lora_rank None: a plain q_proj; every layer after the first MoE.
        mla = {**_MLA, "q_lora_rank": None}
        moe = {key: value for key, value in _MOE.items() if key not in ("n_group", "topk_group")}
        return transformers.DeepseekV2Config(**{**_COMMON, "num_key_value_heads": 4}, **moe, **mla)
    if model_type == "mixtral":
        return transformers.MixtralConfig(**_COMMON, num_local_experts=3, num_experts_per_tok=2)
    if model_type == "qwen2_moe":
        # Layer 0 dense (mlp_only_layers), layer 1 routed experts and the shared expert (a width of its own).
        return transformers.Qwen2MoeConfig(**_COMMON, num_experts=3, num_experts_per_tok=2, moe_intermediate_size=12,
                                           shared_expert_intermediate_size=20, mlp_only_layers=[0])
    if model_type == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**_COMMON, head_dim=8, num_experts=3, num_experts_per_tok=2,
                                           moe_intermediate_size=12)
    if model_type == "gemma3":
        text = {**_COMMON, "head_dim": 8, "sliding_window": 16}
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=28, patch_size=14)
        return transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                         image_token_index=63, boi_token_index=61, eoi_token_index=62)
    if model_type == "llama4":
        text = {**_COMMON, "head_dim": 8, "intermediate_size_mlp": 40, "num_local_experts": 3,
                "interleave_moe_layer_step": 2}
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=28, patch_size=14, vision_output_dim=16, projector_input_dim=16,
                      projector_output_dim=16)
        return transformers.Llama4Config(text_config=text, vision_config=vision, image_token_index=63)
    raise ValueError(model_type)


def build_frontier_model(model_type, seed=0, **sizes):
    """A tiny random transformers model of `model_type` (float32, eval mode); `sizes` override config
    fields (e.g. intermediate_size=64: MXFP4 packs 32 values per block along every input dim)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = frontier_config(model_type)
    for key, value in sizes.items():
        setattr(config, key, value)
    if model_type in FRONTIER_MULTIMODAL_TYPES:
        model = transformers.AutoModelForImageTextToText.from_config(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval()


def decoder_layers(model):
    """The text decoder layers of a causal LM or of a multimodal model's language tower."""
    if hasattr(model, "language_model"):  # Llama4ForConditionalGeneration: a whole causal LM inside
        return model.language_model.model.layers
    inner = model.model
    return inner.language_model.layers if hasattr(inner, "language_model") else inner.layers


def _linear(module):
    return module.weight.detach().float().numpy().T  # nn.Linear [out, in] -> W [in, out]


def _dense(out, layer, mlp, expert=-1):
    for kind in ("gate", "up", "down"):
        out[(layer, kind, expert)] = _linear(getattr(mlp, f"{kind}_proj"))


def _attention(out, layer, attn, config):
    if hasattr(attn, "kv_b_proj"):  # DeepSeek MLA
        if getattr(attn, "q_a_proj", None) is not None:
            out[(layer, "q_a", -1)] = _linear(attn.q_a_proj)
            out[(layer, "q_b", -1)] = _linear(attn.q_b_proj)
        else:
            out[(layer, "q", -1)] = _linear(attn.q_proj)
        out[(layer, "kv_a", -1)] = _linear(attn.kv_a_proj_with_mqa)
        # The module views kv_b's output as [heads, nope + v] and splits it into K and V.
        kv_b = attn.kv_b_proj.weight.detach().float().numpy()  # [heads * (nope + v), rank]
        nope, v_head = config.qk_nope_head_dim, config.v_head_dim
        per_head = kv_b.reshape(config.num_attention_heads, nope + v_head, -1)
        out[(layer, "kv_b_k", -1)] = per_head[:, :nope].reshape(-1, kv_b.shape[1]).T
        out[(layer, "kv_b_v", -1)] = per_head[:, nope:].reshape(-1, kv_b.shape[1]).T
        out[(layer, "o", -1)] = _linear(attn.o_proj)
        return
    for kind in ("q", "k", "v", "o"):
        out[(layer, kind, -1)] = _linear(getattr(attn, f"{kind}_proj"))


def _experts(out, layer, experts, model_type):
    gate_up = experts.gate_up_proj.detach().float().numpy()
    down = experts.down_proj.detach().float().numpy()
    layout = FUSED_IN_OUT_EXPERTS.get(model_type)
    for e in range(gate_up.shape[0]):
        if layout is None:  # transformers 5 in memory: [E, 2 * inter, hidden] and [E, hidden, inter] ([out, in])
            gate, up = np.split(gate_up[e].T, 2, axis=1)
            out[(layer, "down", e)] = down[e].T
        else:  # [E, hidden, 2 * inter] and [E, inter, hidden] ([in, out])
            if layout == "interleaved":
                gate, up = gate_up[e][:, ::2], gate_up[e][:, 1::2]
            else:
                gate, up = np.split(gate_up[e], 2, axis=1)
            out[(layer, "down", e)] = down[e]
        out[(layer, "gate", e)] = gate
        out[(layer, "up", e)] = up


def expected_matrices(model, model_type):
    """(layer, kind, expert) -> W [in, out] float32 (expert: index, 'shared', or -1) from the modules."""
    config = model.config.get_text_config()
    out = {}
    for i, layer in enumerate(decoder_layers(model)):
        _attention(out, i, layer.self_attn, config)
        mlp = layer.feed_forward if hasattr(layer, "feed_forward") else layer.mlp
        if hasattr(mlp, "experts"):
            _experts(out, i, mlp.experts, model_type)
            shared = getattr(mlp, "shared_experts", None) or getattr(mlp, "shared_expert", None)
            if shared is not None:
                _dense(out, i, shared, "shared")
        else:
            _dense(out, i, mlp)
    return out


def perturbed(model_type, seed=0, scale=1.05, noise=1e-3):
    """A copy of build_frontier_model(model_type, seed) with every parameter scaled and perturbed."""
    import torch

    model = build_frontier_model(model_type, seed)
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale).add_(noise * torch.randn(parameter.shape, generator=generator))
    return model
