"""Shared fixtures of the Python suite: synthetic pairs with a known answer,
tiny Hugging Face models built offline with transformers, and the GPU marker."""
import os

import numpy as np
import pytest

import postsvd
from postsvd.synthetic import make_pair

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: Sizes of the synthetic pairs: small enough for a fast suite, big enough for distinct spectra.
SYNTHETIC = dict(model_type="llama", layers=2, hidden=64, intermediate=96, heads=4, kv_heads=2)
ALPHA = 0.9

#: Skips a test without a CUDA build and a visible GPU; select GPU tests with `pytest -m gpu`.
requires_cuda = pytest.mark.skipif(not postsvd.has_cuda() or postsvd.cuda_device_count() == 0,
                                   reason="needs a CUDA build of postsvd (POSTSVD_ENABLE_CUDA=ON) and a GPU")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def related_pair(tmp_path_factory):
    """float32 llama pair: post = (U Q)(0.9 S)(V Q)^T per matrix; expect scaling 0.9, NF ~ 0."""
    root = tmp_path_factory.mktemp("related")
    return make_pair(root / "base", root / "post", alpha=ALPHA, dtype="float32", seed=1, **SYNTHETIC)


@pytest.fixture(scope="session")
def unrelated_pair(tmp_path_factory):
    """float32 llama pair of two unrelated random models; expect NF far from 0."""
    root = tmp_path_factory.mktemp("unrelated")
    return make_pair(root / "base", root / "post", dtype="float32", seed=2, related=False, **SYNTHETIC)


@pytest.fixture(scope="session")
def related_comparison(related_pair):
    return postsvd.compare(related_pair.base, related_pair.post, progress=False)


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


def save_model(model, folder, dtype="bfloat16", max_shard_size=None):
    """save_pretrained in `dtype` (torch dtype name), sharded when max_shard_size is given."""
    import torch

    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    return model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Factory: tiny_models(model_type, dtype="bfloat16", sharded=False) -> (folder, model);
    built once per argument set."""
    cache = {}

    def get(model_type, dtype="bfloat16", sharded=False):
        key = (model_type, dtype, sharded)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"{model_type}-{dtype}{'-sharded' if sharded else ''}")
            model = save_model(build_tiny_model(model_type), folder, dtype, "8KB" if sharded else None)
            cache[key] = (str(folder), model)
        return cache[key]

    return get
