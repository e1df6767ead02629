"""Shared fixtures of the Python suite: synthetic pairs with a known answer, tiny Hugging Face models
built offline with transformers, a tiny chat model for the functional experiments, and a Hub stand-in
on 127.0.0.1 (hub_server.py) with huggingface_hub pointed at it. Helpers that tests import live in
helpers.py (hub_server.py for the Hub's)."""
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
# huggingface_hub gives its logger a StreamHandler on the sys.stderr of the moment it is first imported: import it
# now, with the session's stderr, not inside a test whose capsys stream is closed after it (a later test's log
# line would then print "--- Logging error ---" and a traceback into that test's captured stderr).
import huggingface_hub.utils.logging  # noqa: E402,F401  (after the environment above, which it reads)

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


# ---------------------------------------------------------------- a Hub on 127.0.0.1 (hub_server.py)

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server, with org/base (branch main, a tag v1 on its first commit, a branch dev), org/instruct,
    org/reasoning, org/run (branches step-100: instruct, step-200: reasoning), org/gated (needs TOKEN),
    org/bin-only and org/nested; and the local sharded folders (base, instruct, reasoning)."""
    from hub_server import MODELS, FakeHub, shard_model

    root = tmp_path_factory.mktemp("hub-models")
    base_files = shard_model(os.path.join(MODELS, "base"), str(root / "base"))
    instruct_files = shard_model(os.path.join(MODELS, "instruct"), str(root / "instruct"))
    reasoning_files = shard_model(os.path.join(MODELS, "reasoning"), str(root / "reasoning"))
    server = FakeHub().start()
    first = server.add_repo("org/base", base_files)
    server.tag("org/base", "v1", first)
    readme = {**base_files, "README.md": b"second commit\n"}
    server.add_commit("org/base", readme)
    server.add_commit("org/base", base_files, branch="dev")
    server.add_repo("org/instruct", instruct_files)
    server.add_repo("org/reasoning", reasoning_files)
    server.add_repo("org/run", instruct_files, branch="step-100")  # a training run kept as branches
    server.add_commit("org/run", reasoning_files, branch="step-200")
    server.add_repo("org/gated", base_files, gated=True)
    server.add_repo("org/bin-only", {"config.json": base_files["config.json"], "pytorch_model.bin": b"\0" * 64})
    server.add_repo("org/nested", {"config.json": base_files["config.json"],
                                   "sub/model.safetensors": base_files["model-00001-of-00006.safetensors"]})
    try:
        yield {"server": server, "base": str(root / "base"), "instruct": str(root / "instruct"),
               "reasoning": str(root / "reasoning"), "first_commit": first, "files": base_files}
    finally:
        server.stop()


@pytest.fixture
def hub_env(served, tmp_path, monkeypatch):
    """huggingface_hub pointed at the server (HF_ENDPOINT) and at empty caches (HF_HOME, HF_HUB_CACHE), no
    token, online; connections to anything but 127.0.0.1 fail."""
    import socket

    from huggingface_hub import constants
    from postsvd import hub

    server = served["server"]
    server.reset()
    home = tmp_path / "hf-home"
    values = {"HF_ENDPOINT": server.endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
              "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("POSTSVD_HUB_CACHE", raising=False)
    monkeypatch.delenv("POSTSVD_HUB_CACHE_LIMIT", raising=False)
    # huggingface_hub reads its environment once, at import: set what it read
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hub, "CHUNK_BYTES", 64 << 10)  # several chunks per layer: resumes are testable

    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    return served
