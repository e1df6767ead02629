"""Hardening of the compiled core (issue 16) seen from Python: a hostile
config.json ends in an error, not a crash; C++ warnings reach Python's warnings
module; the Comparator binding is safe to construct and use from several
threads at once (pybind11 issue 5473)."""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import postsvd
from postsvd import _core
from postsvd.synthetic import make_pair

SIZES = dict(model_type="llama", layers=2, hidden=32, intermediate=48, heads=4, kv_heads=2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    return make_pair(root / "base", root / "post", alpha=0.8, dtype="float32", seed=5, **SIZES)


def test_deeply_nested_config_is_an_error_not_a_crash(pair, tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    os.symlink(os.path.join(pair.base, "model.safetensors"), folder / "model.safetensors")
    (folder / "config.json").write_text('{"model_type": "llama", "x": ' + "[" * 100000 + "]" * 100000 + "}")
    # In a child process: before the fix this segfaulted, which would take pytest down with it.
    code = ("import postsvd, sys\n"
            "try:\n"
            "    postsvd.describe(sys.argv[1])\n"
            "except postsvd.BadCheckpointError as e:\n"
            "    print('refused:', e)\n")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stdout and "config.json" in done.stdout and "nests deeper" in done.stdout


def test_uncounted_layers_are_warned_and_described(pair, tmp_path):
    folder = tmp_path / "fewer"
    folder.mkdir()
    os.symlink(os.path.join(pair.base, "model.safetensors"), folder / "model.safetensors")
    config = json.loads(open(os.path.join(pair.base, "config.json")).read())
    config["num_hidden_layers"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    arch = postsvd.architecture(str(folder))
    assert arch["num_layers"] == 1
    assert len(arch["warnings"]) == 1 and "layers up to 1" in arch["warnings"][0]
    with pytest.warns(UserWarning, match="num_hidden_layers"):
        _core.Comparator(str(folder), str(folder))
    assert postsvd.architecture(pair.base)["warnings"] == []
    assert postsvd.describe(str(folder))["warnings"] == arch["warnings"]
    shown = subprocess.run([sys.executable, "-m", "postsvd", "info", str(folder)], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert shown.returncode == 0, shown.stderr
    assert "layers up to 1" in shown.stdout


def test_corrupt_cache_entry_is_recomputed_with_a_python_warning(pair, tmp_path):
    cache = tmp_path / "cache"
    first = postsvd.compare(pair.base, pair.post, layers=[0], kinds="o", cache=str(cache), progress=False)
    entries = sorted(cache.glob("*.svd"))
    assert len(entries) == 2
    data = bytearray(entries[0].read_bytes())
    data[100] ^= 0xFF
    entries[0].write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="checksum mismatch"):
        again = postsvd.compare(pair.base, pair.post, layers=[0], kinds="o", cache=str(cache), progress=False)
    np.testing.assert_allclose(again.table["scaling_mean"], first.table["scaling_mean"], rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten whole: the third run loads it quietly
        postsvd.compare(pair.base, pair.post, layers=[0], kinds="o", cache=str(cache), progress=False)


def test_comparators_from_several_threads_match_one_thread(pair):
    def run():
        comparator = _core.Comparator(str(pair.base), str(pair.post), num_threads=1)
        indices = list(range(len(comparator.architecture["matrices"])))
        return [m["sigma_post"] for m in comparator.compare(indices)]

    expected = run()
    results, errors = [None] * 8, []
    start = threading.Barrier(8)

    def worker(i):
        try:
            start.wait()
            results[i] = run()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for got in results:
        assert got is not None and len(got) == len(expected)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- issue 24: constructions, experts, info, names


@pytest.mark.parametrize("stored, working, alpha", [("float16", "float32", 1e7), ("bfloat16", "float64", 1e39)])
def test_a_construction_past_the_stored_dtype_writes_no_folder(tmp_path, stored, working, alpha):
    p = make_pair(tmp_path / "base", tmp_path / "post", alpha=0.9, dtype=stored, seed=7, **SIZES)
    out = tmp_path / "out"
    with pytest.raises(postsvd.InvalidArgumentError) as raised:
        postsvd.construct(9, p.base, p.post, out, alpha={"q": alpha, "k": 1.0}, kinds="q,k", dtype=working,
                          progress=False)
    message = str(raised.value)
    dtype = {"float16": "F16", "bfloat16": "BF16"}[stored]
    for part in ("model.layers.0.self_attn.q_proj.weight", "model.safetensors", f"not finite as {dtype}",
                 "construction 9", f"alpha' = {alpha:g}", "kind 'q'", "argument alpha"):
        assert part in message, (part, message)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["base", "post"]
    # The same construction within the dtype's range writes a checkpoint that compares.
    postsvd.construct(9, p.base, p.post, out, alpha={"q": 1.5, "k": 1.0}, kinds="q,k", dtype=working, progress=False)
    postsvd.compare(p.base, str(out), kinds="q", progress=False)


def _with_bad_weight(source, folder, tensor="model.layers.1.self_attn.o_proj.weight", value=np.inf):
    """A copy of the model folder `source` whose `tensor` holds one `value`."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(source, folder)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    tensors[tensor] = tensors[tensor].copy()
    tensors[tensor][3, 4] = value
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return str(folder)


@pytest.mark.parametrize("role", ["base", "post"])
def test_bad_data_names_the_model_as_written_the_file_and_the_tensor(pair, tmp_path, monkeypatch, role):
    _with_bad_weight(pair.base if role == "base" else pair.post, tmp_path / "bad")
    monkeypatch.chdir(tmp_path)  # the model as the caller wrote it: a relative path
    models = {"base": pair.base, "post": pair.post, role: "bad"}
    with pytest.raises(postsvd.InvalidArgumentError) as raised:
        postsvd.compare(models["base"], models["post"], progress=False)
    message = str(raised.value)
    assert message.startswith(f"{role} 'bad': tensor 'model.layers.1.self_attn.o_proj.weight' in "
                              f"bad{os.sep}model.safetensors: non-finite value inf"), message


def test_a_bad_checkpoint_of_a_track_run_is_named(pair, tmp_path):
    good = tmp_path / "run" / "checkpoint-100"
    shutil.copytree(pair.post, good)
    bad = _with_bad_weight(pair.post, tmp_path / "run" / "checkpoint-200", value=np.nan)
    with pytest.raises(postsvd.InvalidArgumentError) as raised:
        postsvd.track(pair.base, [str(good), bad], progress=False)
    message = str(raised.value)
    assert message.startswith(f"checkpoint '{bad}': tensor 'model.layers.1.self_attn.o_proj.weight' in {bad}"), \
        message
    # A header error of one checkpoint (found before anything is computed) names it too.
    (tmp_path / "run" / "checkpoint-300").mkdir()
    third = tmp_path / "run" / "checkpoint-300"
    shutil.copy(os.path.join(pair.post, "config.json"), third / "config.json")
    (third / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(postsvd.BadCheckpointError, match=rf"^checkpoint '{re.escape(str(third))}': "):
        postsvd.track(pair.base, [str(good), str(third)], progress=False)


@pytest.mark.parametrize("experts, expected", [
    ("5-3", "experts: range '5-3' is empty"),
    ("0-2,5-3", "experts: range '5-3' in '0-2,5-3' is empty"),
    ("0,abc", "experts: expected expert indices like '0-7,shared', got '0,abc' (bad part 'abc')"),
])
def test_an_option_error_names_the_option_and_the_value_as_written(experts, expected):
    with pytest.raises(postsvd.InvalidArgumentError) as raised:
        postsvd._validate.normalize_experts(experts)
    assert str(raised.value).startswith(expected) and "layers" not in str(raised.value)


def test_cli_option_errors_name_the_option(pair, tmp_path):
    done = subprocess.run([sys.executable, "-m", "postsvd", "compare", pair.base, pair.post, "--out",
                           str(tmp_path / "out"), "--experts", "0-2,5-3"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 1
    assert "error: experts: range '5-3' in '0-2,5-3' is empty" in done.stderr, done.stderr


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "postsvd", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_info_lists_each_problem_that_compare_refuses(tiny_models, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from quantize import write_block_fp8

    src, _ = tiny_models("llama", "bfloat16")
    good = str(tmp_path / "fp8")
    write_block_fp8(src, good, block=(16, 16))
    assert postsvd.describe(good)["problems"] == []
    assert _run_cli("info", good).returncode == 0
    bad = str(tmp_path / "bad")
    shutil.copytree(good, bad)
    tensors = load_file(os.path.join(bad, "model.safetensors"))
    del tensors["model.layers.0.self_attn.q_proj.weight_scale_inv"]  # missing
    tensors["model.layers.1.mlp.down_proj.weight_scale_inv"] = torch.ones(3, 5)  # misshapen
    save_file(tensors, os.path.join(bad, "model.safetensors"), metadata={"format": "pt"})

    problems = postsvd.describe(bad)["problems"]
    assert len(problems) == 2, problems
    assert "model.layers.0.self_attn.q_proj.weight_scale_inv" in problems[0]
    assert "model.layers.1.mlp.down_proj.weight_scale_inv" in problems[1] and "[3, 5]" in problems[1]
    assert all("model.safetensors" in p for p in problems)
    shown = _run_cli("info", bad)
    assert shown.returncode == 1, shown.stderr
    listed = [line for line in shown.stdout.splitlines() if line.startswith("problem:")]
    assert len(listed) == 2 and "2 problems" in shown.stdout and "refuse" in shown.stdout
    with pytest.raises(postsvd.BadCheckpointError, match="weight_scale_inv"):  # what info said compare refuses
        postsvd.compare(good, bad, progress=False)


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_info_reads_the_values_unless_told_headers_only(pair, tmp_path):
    bad = _with_bad_weight(pair.post, tmp_path / "bad", value=np.nan)
    problems = postsvd.describe(bad)["problems"]
    assert len(problems) == 1 and "non-finite value nan" in problems[0] and "o_proj" in problems[0]
    assert postsvd.describe(bad, values=False)["problems"] == []
    assert _run_cli("info", bad).returncode == 1
    assert _run_cli("info", bad, "--headers-only").returncode == 0
    as_json = _run_cli("info", bad, "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["problems"] == problems


def _tiny_moe(folder, config_experts, file_experts, seed=0):
    """A 2-layer qwen3_moe folder whose config declares `config_experts` routed experts and whose
    weights hold `file_experts` in each layer."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    os.makedirs(folder)
    config = dict(model_type="qwen3_moe", hidden_size=8, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=12, moe_intermediate_size=4, num_hidden_layers=2, num_experts=config_experts)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    shapes = {"self_attn.q_proj": (8, 8), "self_attn.k_proj": (4, 8), "self_attn.v_proj": (4, 8),
              "self_attn.o_proj": (8, 8)}
    for e in range(file_experts):
        shapes.update({f"mlp.experts.{e}.gate_proj": (4, 8), f"mlp.experts.{e}.up_proj": (4, 8),
                       f"mlp.experts.{e}.down_proj": (8, 4)})
    save_file({f"model.layers.{i}.{name}.weight": rng.standard_normal(shape).astype(np.float32)
               for i in range(2) for name, shape in shapes.items()}, os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    return str(folder)


def test_experts_beyond_the_config_are_warned_in_compare_and_info(tmp_path):
    base = _tiny_moe(tmp_path / "base", 2, 4)
    post = _tiny_moe(tmp_path / "post", 2, 4, seed=1)
    with pytest.warns(UserWarning, match=r"\"num_experts\" is 2 but the weights hold routed experts up to 3 in "
                                         r"layers 0-1 \(12 tensors.*only experts 0 to 1 are read"):
        comparison = postsvd.compare(base, post, progress=False)
    assert sorted(set(comparison.table["expert"]) - {-1}) == [0, 1]
    info = postsvd.describe(base)
    assert len(info["warnings"]) == 1 and "up to 3" in info["warnings"][0] and info["problems"] == []
    shown = _run_cli("info", base)
    assert shown.returncode == 0 and "warning:      " in shown.stdout and "experts.3." in shown.stdout
    assert postsvd.describe(_tiny_moe(tmp_path / "exact", 4, 4))["warnings"] == []


def test_the_table4_alpha_of_a_zero_base_is_refused_by_name(pair, tmp_path):
    from safetensors.numpy import load_file, save_file

    base = tmp_path / "base"
    shutil.copytree(pair.base, base)

    tensors = load_file(os.path.join(base, "model.safetensors"))
    for layer in range(SIZES["layers"]):
        tensors[f"model.layers.{layer}.self_attn.q_proj.weight"] = np.zeros_like(
            tensors[f"model.layers.{layer}.self_attn.q_proj.weight"])
    save_file(tensors, os.path.join(base, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(postsvd.InvalidArgumentError, match=r"alpha: the Table 4 rule gives alpha' = inf for kind 'q'"):
        postsvd.construct(9, str(base), pair.post, tmp_path / "out", kinds="q", progress=False)
    assert not (tmp_path / "out").exists()
