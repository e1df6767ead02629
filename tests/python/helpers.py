"""Helpers shared by the Python tests (imported by the test modules and conftest.py; pytest collects
nothing here): sizes of the synthetic pairs, the GPU skip marker, tiny transformers models built offline,
a tiny chat model with a character-level tokenizer, and a safetensors folder reader."""
import os
import string

import pytest

import postsvd
from frontier_models import FRONTIER_MULTIMODAL_TYPES, FRONTIER_TEXT_TYPES, build_frontier_model, frontier_config

#: Sizes of the synthetic pairs: small enough for a fast suite, big enough for distinct spectra.
SYNTHETIC = dict(model_type="llama", layers=2, hidden=64, intermediate=96, heads=4, kv_heads=2)
ALPHA = 0.9

#: Skips a test without a CUDA build and a visible GPU; select GPU tests with `pytest -m gpu`.
requires_cuda = pytest.mark.skipif(not postsvd.has_cuda() or postsvd.cuda_device_count() == 0,
                                   reason="needs a CUDA build of postsvd (POSTSVD_ENABLE_CUDA=ON) and a GPU")


def stored_tensors(folder):
    """(name, torch tensor) of every tensor of a folder (single or sharded), read with the official library."""
    from safetensors import safe_open

    for file_name in sorted(os.listdir(folder)):
        if file_name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, file_name), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)


def load_all(folder):
    """Every tensor of a folder (single or sharded) as float64 numpy."""
    return {key: tensor.double().numpy() for key, tensor in stored_tensors(folder)}


# ---------------------------------------------------------------- tiny transformers models

TINY_MODEL_TYPES = ("llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2")


def tiny_config(model_type):
    """A tiny random config of `model_type`, built offline."""
    import transformers

    common = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0)
    if model_type == "llama":
        return transformers.LlamaConfig(**common)
    if model_type == "qwen2":
        return transformers.Qwen2Config(**common)
    if model_type == "mistral":
        return transformers.MistralConfig(**common)
    if model_type == "gemma2":
        return transformers.Gemma2Config(**common, head_dim=8)
    if model_type == "phi3":
        return transformers.Phi3Config(**common)
    if model_type == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=64,
                                       bos_token_id=1, eos_token_id=2)
    raise ValueError(model_type)


def build_tiny_model(model_type, seed=0):
    """A tiny random transformers model of `model_type` (float32, eval mode)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(model_type))
    return model.eval()


#: The test fixture of every supported model_type: model_type -> builder(model_type, seed=0) of its tiny random
#: transformers model. test_architectures.py fails when a type of postsvd.supported_model_types() has none.
MODEL_FIXTURES = {**{model_type: build_tiny_model for model_type in TINY_MODEL_TYPES},
                  **{model_type: build_frontier_model
                     for model_type in FRONTIER_TEXT_TYPES + FRONTIER_MULTIMODAL_TYPES}}


def fixture_config(model_type):
    """The config of MODEL_FIXTURES[model_type]'s tiny model."""
    return tiny_config(model_type) if model_type in TINY_MODEL_TYPES else frontier_config(model_type)


def save_model(model, folder, dtype="bfloat16", max_shard_size=None):
    """save_pretrained in `dtype` (torch dtype name), sharded when max_shard_size is given."""
    import torch

    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return model


# ---------------------------------------------------------------- a tiny chat model (functional experiments)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def build_tokenizer():
    """Character-level fast tokenizer: every printable ASCII char is a token."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(vocab_size, *, seed=0, layers=2, hidden=32, heads=4, kv_heads=2):
    """A tiny random float32 Llama for the character-level tokenizer (untied embeddings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(torch.float32).eval()


def save_tiny_model(folder, *, seed=0, **kwargs):
    """build_model with build_tokenizer, saved together in `folder` (created)."""
    tok = build_tokenizer()
    model = build_model(len(tok), seed=seed, **kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
