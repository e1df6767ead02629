"""Bad arguments give clear errors that say what was expected and what came."""
import os

import numpy as np
import pytest

import postsvd
from helpers import SYNTHETIC
from postsvd._validate import normalize_kinds, normalize_layers, parse_layers_text


def test_layer_text_parsing():
    assert parse_layers_text("0,1,5-9") == [0, 1, 5, 6, 7, 8, 9]
    assert normalize_layers("3, 1-2", 4) == [1, 2, 3]
    assert normalize_layers(-1, 4) == [3]
    assert normalize_layers(None, 3) == [0, 1, 2]
    for bad in ("a", "1-", "", "5-2"):
        with pytest.raises(postsvd.InvalidArgumentError, match="layers"):
            parse_layers_text(bad)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(kinds="qkv"), postsvd.InvalidArgumentError,
     "valid kinds are q, k, v, o, q_a, q_b, kv_a, kv_b_k, kv_b_v, gate, up, down"),
    (dict(kinds=[]), postsvd.InvalidArgumentError, "at least one"),
    (dict(layers=SYNTHETIC["layers"]), postsvd.InvalidArgumentError, "has layers 0..1"),
    (dict(layers=[0, -3]), postsvd.InvalidArgumentError, "out of range"),
    (dict(layers=[0.5]), postsvd.InvalidArgumentError, "expected integers"),
    (dict(dtype="bfloat16"), postsvd.InvalidArgumentError, "float32, float64"),
    (dict(device="gpu"), postsvd.InvalidArgumentError, "'cpu', 'cuda'"),
    (dict(num_threads=0), postsvd.InvalidArgumentError, "num_threads"),
    (dict(memory_budget_bytes=-1), postsvd.InvalidArgumentError, "memory_budget_bytes"),
])
def test_compare_argument_errors(related_pair, kwargs, error, message):
    with pytest.raises(error, match=message):
        postsvd.compare(related_pair.base, related_pair.post, progress=False, **kwargs)


@pytest.mark.skipif(postsvd.built_with_cuda(), reason="checks the CPU build's message")
def test_compare_cuda_in_cpu_build(related_pair):
    with pytest.raises(postsvd.NotBuiltWithCudaError, match="POSTSVD_ENABLE_CUDA=ON pip install"):
        postsvd.compare(related_pair.base, related_pair.post, device="cuda", progress=False)


def test_comparison_argument_errors(related_pair):
    result = postsvd.compare(related_pair.base, related_pair.post, kinds="q,o", layers=[0], progress=False)
    with pytest.raises(postsvd.InvalidArgumentError, match="compared kinds: q, o"):
        result.svsm("down")
    with pytest.raises(postsvd.InvalidArgumentError, match="unknown kind 'x'"):
        result.sigma("x")
    with pytest.raises(postsvd.InvalidArgumentError, match="'base' or 'post'"):
        result.sigma("q", model="instruct")
    with pytest.raises(postsvd.InvalidArgumentError, match="layer 1 was not compared; compared layers: 0"):
        result.matrices(1, "q")
    with pytest.raises(postsvd.InvalidArgumentError, match="has layers 0..1"):
        result.matrices(7, "q")
    with pytest.raises(postsvd.InvalidArgumentError, match="one kind"):
        result.matrices(0, "attn")
    with pytest.raises(postsvd.InvalidArgumentError, match="leading_k"):
        result.matrices(0, "q", leading_k=0)


def test_read_matrix_errors(related_pair):
    with pytest.raises(postsvd.InvalidArgumentError, match="has layers 0..1"):
        postsvd.read_matrix(related_pair.base, 2, "q")
    with pytest.raises(postsvd.InvalidArgumentError, match="valid kinds"):
        postsvd.read_matrix(related_pair.base, 0, "query")
    w = postsvd.read_matrix(related_pair.base, 0, "gate", dtype="float64")
    assert w.dtype == np.float64 and w.shape == (SYNTHETIC["hidden"], SYNTHETIC["intermediate"])


def test_synthetic_argument_errors(tmp_path):
    from postsvd.synthetic import make_pair

    with pytest.raises(postsvd.InvalidArgumentError, match="llama, qwen2, mistral"):
        make_pair(tmp_path / "a", tmp_path / "b", model_type="bert")
    with pytest.raises(postsvd.InvalidArgumentError, match="multiple of heads"):
        make_pair(tmp_path / "a", tmp_path / "b", hidden=30, heads=4)
    with pytest.raises(postsvd.InvalidArgumentError, match="alpha"):
        make_pair(tmp_path / "a", tmp_path / "b", alpha={"qq": 1.0})
    # A kind of the core's table that a synthetic llama model does not have: not silently ignored.
    with pytest.raises(postsvd.InvalidArgumentError, match=r"alpha: a synthetic llama model has no q_a, kv_b_v "
                                                           r"matrices; its kinds are q, k, v, o, gate, up, down"):
        make_pair(tmp_path / "a", tmp_path / "b", alpha={"q": 0.9, "q_a": 0.5, "kv_b_v": 1.1})
    assert not (tmp_path / "a").exists()
    pair = make_pair(tmp_path / "a", tmp_path / "b", alpha={"q": 0.5}, layers=1, hidden=16, intermediate=32)
    assert pair.alpha == {"q": 0.5, "k": 1.0, "v": 1.0, "o": 1.0, "gate": 1.0, "up": 1.0, "down": 1.0}


def test_every_public_name_has_a_docstring():
    import inspect

    missing = []
    for name in postsvd.__all__:
        if name == "__version__" or name == "KINDS":
            continue
        obj = getattr(postsvd, name)
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if not (getattr(member, "__doc__", None) or "").strip():
                    missing.append(f"{name}.{attr}")
    assert not missing, missing


def test_a_source_tree_without_the_compiled_core_says_how_to_build(tmp_path):
    import shutil
    import subprocess
    import sys

    source = os.path.dirname(postsvd.__file__)
    shutil.copytree(source, tmp_path / "postsvd", ignore=shutil.ignore_patterns("_core*", "__pycache__"))
    done = subprocess.run([sys.executable, "-c", "import postsvd"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert done.returncode != 0
    assert "postsvd._core" in done.stderr and "pip install ." in done.stderr, done.stderr[-2000:]


def test_kind_list_and_groups_come_from_the_core_in_paper_order():
    mla = ("q_a", "q_b", "kv_a", "kv_b_k", "kv_b_v")
    assert postsvd.KINDS == ("q", "k", "v", "o") + mla + ("gate", "up", "down")
    assert postsvd.KIND_GROUPS == {"attention": ("q", "k", "v", "o") + mla, "mlp": ("gate", "up", "down"),
                                   "all": postsvd.KINDS}
    # A group stands for those of its kinds that the model has.
    paper = ["q", "k", "v", "o", "gate", "up", "down"]
    assert normalize_kinds("attn", paper) == normalize_kinds("Attention", paper) == ["q", "k", "v", "o"]
    assert normalize_kinds("attention", ["o", "q_a", "kv_b_k", "up"]) == ["o", "q_a", "kv_b_k"]
    assert normalize_kinds("down,mlp,q", paper) == ["q", "gate", "up", "down"]
    with pytest.raises(postsvd.InvalidArgumentError, match="or the groups attention, mlp, all"):
        normalize_kinds("ffn")
