"""Constructions 9-16 as checkpoints: every construction against a float64
numpy implementation, the files (bit-identical untouched tensors, bf16,
sharded, the record), the atomic output folder and invalid arguments."""
import json
import os

import numpy as np
import pytest
from safetensors import safe_open

import postsvd
import postsvd.constructions as construct_module
from postsvd.constructions import construct
from postsvd.synthetic import make_pair
from helpers import load_all, stored_tensors
from reference import construction_weight

SIZES = dict(model_type="llama", layers=3, hidden=32, intermediate=48, heads=4, kv_heads=2, vocab=64)
KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def hf_name(layer, kind):
    part = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}[kind]
    return f"model.layers.{layer}.{part}.weight"


def raw_bytes(folder):
    """name -> (dtype, raw bytes) of every tensor, read with the official library."""
    import torch

    return {key: (str(t.dtype), t.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
            for key, t in stored_tensors(folder)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """float32 llama pair, post = (U Q)(0.9 S)(V Q)^T, and a second post model (ref) of the same base."""
    root = tmp_path_factory.mktemp("construct")
    p = make_pair(root / "base", root / "post", alpha={"q": 0.9, "k": 0.9, "v": 0.9, "o": 1.4, "gate": 0.9,
                                                       "up": 0.9, "down": 0.9},
                  rotation_angle=0.3, dtype="float32", seed=3, **SIZES)
    r = make_pair(root / "base_again", root / "ref", alpha=1.1, rotation_angle=0.6, dtype="float32", seed=3,
                  **SIZES)
    return p.base, p.post, r.post, root


@pytest.mark.parametrize("number", [9, 10, 11, 12, 14, 15, 16])
def test_every_construction_matches_numpy_float64(pair, tmp_path, number):
    base, post, ref, _ = pair
    alpha = {"q": 0.8, "k": 0.9, "v": 1.0, "o": 1.4, "gate": 0.7, "up": 1.1, "down": 1.2} if number == 9 else None
    result = construct(number, base, post, tmp_path / "out", ref=ref if number == 12 else None, alpha=alpha,
                       dtype="float64", progress=False)
    got, wb, wp = load_all(tmp_path / "out"), load_all(base), load_all(post)
    wr = load_all(ref) if number == 12 else None
    for layer in range(SIZES["layers"]):
        for kind in KINDS:
            name = hf_name(layer, kind)
            expected = construction_weight(number, wb[name].T, wp[name].T, None if wr is None else wr[name].T,
                                        alpha[kind] if alpha else 1.0).T
            np.testing.assert_allclose(got[name], expected, rtol=0, atol=2e-6 * np.abs(expected).max(),
                                       err_msg=f"construction {number} {name}")
    table = result.table
    assert len(table) == SIZES["layers"] * len(KINDS)
    assert set(table["construction"]) == {number}
    change = table.set_index(["layer", "kind"])["relative_change"]
    w = wp[hf_name(1, "q")]
    new = got[hf_name(1, "q")]  # as stored (float32 rounding: 1e-7 relative)
    assert change[(1, "q")] == pytest.approx(np.linalg.norm(new - w) / np.linalg.norm(w), rel=1e-3, abs=1e-6)
    # Untouched tensors are bit-identical.
    before, after = raw_bytes(post), raw_bytes(tmp_path / "out")
    assert set(before) == set(after)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                 "model.layers.0.input_layernorm.weight"):
        assert before[name] == after[name], name


def test_float32_working_precision_and_identities(pair, tmp_path):
    base, post, _, _ = pair
    nine = construct(9, base, post, tmp_path / "nine", alpha=1.0, progress=False)
    fourteen = construct(14, base, post, tmp_path / "fourteen", progress=False)
    assert raw_bytes(tmp_path / "nine") == raw_bytes(tmp_path / "fourteen")  # 9 with alpha' = 1 is 14
    assert nine.alpha == {k: 1.0 for k in KINDS} and fourteen.alpha == {}
    # post = (U Q)(alpha S)(V Q)^T: the restorations give post back (float32: rounding only).
    wp = load_all(post)
    for number in (11, 16):
        construct(number, base, post, tmp_path / f"r{number}", progress=False)
        got = load_all(tmp_path / f"r{number}")
        for layer in range(SIZES["layers"]):
            for kind in KINDS:
                name = hf_name(layer, kind)
                np.testing.assert_allclose(got[name], wp[name], atol=2e-5 * np.abs(wp[name]).max(), err_msg=name)


@pytest.mark.parametrize("number", [10, 11, 14, 15, 16])
def test_a_model_constructed_with_itself_is_itself_within_bf16_rounding(tmp_path_factory, number):
    root = tmp_path_factory.mktemp(f"self{number}")
    p = make_pair(root / "m", root / "unused", dtype="bfloat16", seed=5, **SIZES)
    result = construct(number, p.base, p.base, root / "out", progress=False)
    original, rebuilt = load_all(p.base), load_all(root / "out")
    for name, w in original.items():
        # Within bf16 rounding: one unit in the last place of the entry, or of the
        # reconstruction's float32 error (relative to the largest entry) for tiny entries.
        np.testing.assert_allclose(rebuilt[name], w, rtol=2.0 ** -7, atol=1e-5 * np.abs(w).max(), err_msg=name)
        assert np.mean(rebuilt[name] == w) > 0.9, name  # most entries round back to the same bf16
    assert (result.table["dq1_max_deg"] < 0.1).all()


def test_bf16_sharded_input_gives_sharded_output(tmp_path):
    p = make_pair(tmp_path / "base", tmp_path / "post", dtype="bfloat16", sharded=True, seed=7, **SIZES)
    result = construct(11, p.base, p.post, tmp_path / "out", kinds="q,down", layers=[0, 2], progress=False)
    post_files = sorted(os.listdir(p.post))
    assert sorted(f for f in os.listdir(tmp_path / "out") if f != construct_module.RECORD_NAME) == post_files
    with open(os.path.join(p.post, "model.safetensors.index.json")) as f:
        index_in = json.load(f)
    with open(tmp_path / "out" / "model.safetensors.index.json") as f:
        index_out = json.load(f)
    assert index_out["weight_map"] == index_in["weight_map"]
    assert index_out["metadata"]["total_size"] == index_in["metadata"]["total_size"]
    before, after = raw_bytes(p.post), raw_bytes(tmp_path / "out")
    changed = {hf_name(layer, kind) for layer in (0, 2) for kind in ("q", "down")}
    for name in before:
        assert after[name][0] == "torch.bfloat16"
        if name in changed:
            assert before[name] != after[name], name
        else:
            assert before[name] == after[name], name
    wb, wp, got = load_all(p.base), load_all(p.post), load_all(tmp_path / "out")
    for name in changed:
        expected = construction_weight(11, wb[name].T, wp[name].T).T
        np.testing.assert_allclose(got[name], expected, rtol=2.0 ** -7, atol=1e-3 * np.abs(expected).max())
    assert set(zip(result.table["layer"], result.table["kind"])) == {(0, "q"), (0, "down"), (2, "q"), (2, "down")}
    shard = [f for f in post_files if f.endswith(".safetensors")][0]
    with safe_open(str(tmp_path / "out" / shard), framework="pt") as f:
        assert f.metadata()["format"] == "pt"


def test_record_and_copied_files(pair, tmp_path):
    base, post, _, _ = pair
    with open(os.path.join(post, "generation_config.json"), "w") as f:
        f.write('{"do_sample": true}\n')
    os.makedirs(os.path.join(post, "extra"), exist_ok=True)
    with open(os.path.join(post, "extra", "tokenizer.model"), "wb") as f:
        f.write(bytes(range(256)))
    try:
        result = construct(9, base, post, tmp_path / "out", group="attention", layers="0-1", progress=False)
        out = tmp_path / "out"
        for name in ("config.json", "generation_config.json", os.path.join("extra", "tokenizer.model")):
            with open(os.path.join(post, name), "rb") as a, open(out / name, "rb") as b:
                assert a.read() == b.read(), name
        with open(out / construct_module.RECORD_NAME) as f:
            record = json.load(f)
        assert record["construction"] == 9 and record["layers"] == [0, 1] and record["kinds"] == ["q", "k", "v", "o"]
        # Table 4 rule: the pooled mean rounded to one decimal; the pair was made with 0.9 and o = 1.4.
        assert record["alpha"] == {"q": 0.9, "k": 0.9, "v": 0.9, "o": 1.4} == result.alpha
        assert record["alpha_source"] == "Table 4 rule"
        import hashlib

        with open(os.path.join(post, "model.safetensors"), "rb") as f:
            assert record["sources"]["post"]["safetensors_sha256"]["model.safetensors"] == \
                hashlib.sha256(f.read()).hexdigest()
        assert record["dtype"] == "float32" and record["backend"]
        assert len(record["table"]) == 8
        assert not [e for e in os.listdir(tmp_path) if e.startswith(".")]
    finally:
        os.remove(os.path.join(post, "generation_config.json"))
        import shutil

        shutil.rmtree(os.path.join(post, "extra"))


def test_default_alpha_agrees_with_the_comparison(pair, tmp_path):
    base, post, _, _ = pair
    comparison = postsvd.compare(base, post, progress=False)
    from_comparison = construct(9, base, post, tmp_path / "a", comparison=comparison, progress=False)
    decomposed = construct(9, base, post, tmp_path / "b", progress=False)
    assert from_comparison.alpha == decomposed.alpha
    for kind, mean in decomposed.pooled_mean.items():
        assert from_comparison.pooled_mean[kind] == pytest.approx(mean, rel=1e-5)


def test_default_alpha_rounds_a_tie_up_as_the_kind_table_does(pair, tmp_path):
    """Construction 9's Table 4 alpha' follows the one C++ rule: a pooled mean of exactly 0.25 gives 0.3
    (Python's round would give 0.2), the same alpha' the comparison's kind table shows."""
    base, post, _, _ = pair
    comparison = postsvd.compare(base, post, kinds="q", progress=False)
    tied = comparison.kind_table().assign(scaling_mean=0.25, alpha=postsvd._core.table4_alpha(0.25))
    comparison.kind_table = lambda: tied
    result = construct(9, base, post, tmp_path / "out", kinds="q", comparison=comparison, progress=False,
                       rotations=False)
    assert result.pooled_mean == {"q": 0.25}
    assert result.alpha == {"q": pytest.approx(0.3, abs=1e-12)} and result.alpha["q"] == tied["alpha"].iloc[0]


def test_factor_cache_reuses_decompositions(pair, tmp_path):
    base, post, _, _ = pair
    first = construct(10, base, post, tmp_path / "a", cache=tmp_path / "cache", progress=False)
    assert first.decompositions_loaded == 0 and first.decompositions_computed == 2 * 21
    second = construct(10, base, post, tmp_path / "b", cache=tmp_path / "cache", progress=False)
    assert second.decompositions_computed == 0 and second.decompositions_loaded == 2 * 21
    assert raw_bytes(tmp_path / "a") == raw_bytes(tmp_path / "b")
    # Construction 9 with the Table 4 rule: one decomposition per matrix in all, through the cache.
    nine = construct(9, base, post, tmp_path / "c", cache=tmp_path / "cache", progress=False)
    assert nine.decompositions_computed == 0


def test_existing_output_needs_force_and_is_replaced_atomically(pair, tmp_path):
    base, post, _, _ = pair
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(postsvd.InvalidArgumentError, match="already exists"):
        construct(10, base, post, out, progress=False)
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "old"
    construct(10, base, post, out, force=True, progress=False)
    assert "keep.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary or old folder left


def test_an_error_in_the_middle_leaves_nothing(tmp_path):
    p = make_pair(tmp_path / "base", tmp_path / "post", dtype="float32", seed=9, **SIZES)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(os.path.join(p.post, "model.safetensors"))
    tensors[hf_name(2, "down")][3, 5] = np.nan  # a later layer
    save_file(tensors, os.path.join(p.post, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(postsvd.PostsvdError, match="NaN|nan|non-finite|Inf"):
        construct(11, p.base, p.post, tmp_path / "out", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["base", "post"]


def test_keyboard_interrupt_leaves_nothing(pair, tmp_path, monkeypatch):
    import tqdm.auto

    class Interrupting(tqdm.auto.tqdm):
        calls = 0

        def set_postfix_str(self, *args, **kwargs):
            Interrupting.calls += 1
            if Interrupting.calls == 5:  # inside the C++ loop, between matrices
                raise KeyboardInterrupt
            return super().set_postfix_str(*args, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Interrupting)
    base, post, _, _ = pair
    with pytest.raises(KeyboardInterrupt):
        construct(11, base, post, tmp_path / "out", progress=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(number=12), "needs ref"),
    (dict(number=13), "unknown construction"),
    (dict(number=11, kinds="q,x"), "unknown kind"),
    (dict(number=11, group="attn_only"), "unknown group"),
    (dict(number=11, kinds="q", group="mlp"), "not both"),
    (dict(number=9, alpha=0.0), "positive finite"),
    (dict(number=9, alpha=-1.0), "positive finite"),
    (dict(number=9, alpha=float("nan")), "positive finite"),
    (dict(number=9, alpha={"q": float("inf")}), "positive finite"),
    (dict(number=9, alpha={"query": 0.9}), "unknown kind"),
    (dict(number=11, alpha=0.9), "only construction 9"),
    (dict(number=11, layers=[7]), "out of range"),
    (dict(number=11, dtype="float16"), "dtype"),
])
def test_invalid_arguments_leave_nothing(pair, tmp_path, kwargs, match):
    base, post, ref, _ = pair
    number = kwargs.pop("number")
    with pytest.raises(postsvd.InvalidArgumentError, match=match):
        construct(number, base, post, tmp_path / "out", progress=False, **kwargs)
    assert os.listdir(tmp_path) == []
    with pytest.raises(postsvd.InvalidArgumentError, match="only construction 12"):
        construct(11, base, post, tmp_path / "out", ref=ref, progress=False)


def test_cli(pair, tmp_path, capsys):
    from postsvd.cli import main

    base, post, _, _ = pair
    code = main(["construct", "9", "--base", base, "--post", post, "--alpha", "q=0.9,o=1.4", "--kinds", "q,o",
                 "--layers", "0,2", "--out", str(tmp_path / "out"), "--no-progress", "--table",
                 str(tmp_path / "t.csv")])
    captured = capsys.readouterr()
    assert code == 0
    assert "q=0.9, o=1.4" in captured.out and str(tmp_path / "out") in captured.out
    assert (tmp_path / "t.csv").exists()
    code = main(["construct", "9", "--base", base, "--post", post, "--out", str(tmp_path / "out"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "already exists" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert main(["construct", "12", "--base", base, "--post", post, "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 1
    assert "needs ref" in capsys.readouterr().err


def test_plot_rotations(pair, tmp_path):
    base, post, _, _ = pair
    result = construct(11, base, post, tmp_path / "out", progress=False)
    fig = result.plot_rotations()
    assert len(fig.axes) == len(KINDS)
    assert "construction 11" in result.summary()
