"""Shared fixtures of the Python suite: synthetic pairs with a known answer, tiny Hugging Face models
built offline with transformers, and a tiny chat model for the functional experiments. Helpers that
tests import live in helpers.py."""
import os

import numpy as np
import pytest

import postsvd
from helpers import ALPHA, SYNTHETIC, build_tiny_model, save_model, save_tiny_model
from postsvd.synthetic import make_pair

os.environ.setdefault("HF_HUB_OFFLINE", "1")


#: Marks that make a test slow as well (pyproject.toml's markers): `pytest -m "not slow"` leaves them out.
SLOW_KINDS = ("ray", "notebook", "browser")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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


# ---------------------------------------------------------------- a tiny chat model (functional experiments)

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with a character-level tokenizer and a chat template, saved offline."""
    for module in ("torch", "transformers", "tokenizers"):
        pytest.importorskip(module)
    return save_tiny_model(tmp_path_factory.mktemp("tiny_llama") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir_b(tmp_path_factory):
    """A second tiny model: same architecture, other random weights, 3 layers."""
    for module in ("torch", "transformers", "tokenizers"):
        pytest.importorskip(module)
    return save_tiny_model(tmp_path_factory.mktemp("tiny_llama_b") / "model", seed=1, layers=3)
