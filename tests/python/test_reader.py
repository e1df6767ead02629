"""Files written by the official safetensors library and by transformers read back exactly;
malformed and mismatched checkpoints give clear errors."""
import json
import os
import shutil
import struct

import numpy as np
import pytest

import postsvd
from helpers import SYNTHETIC
from postsvd.synthetic import make_pair

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402


def write_folder(folder, tensors, config=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config or {"model_type": "llama"}, f)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return str(folder)


@pytest.mark.parametrize("dtype, name", [(torch.bfloat16, "BF16"), (torch.float16, "F16"),
                                         (torch.float32, "F32"), (torch.float64, "F64")])
def test_safetensors_files_read_exactly(tmp_path, dtype, name):
    torch.manual_seed(0)
    tensors = {"a.weight": torch.randn(7, 5).to(dtype), "b.bias": torch.randn(11).to(dtype),
               "c.stack": torch.randn(2, 3, 4).to(dtype), "d.big": (torch.randn(3, 3) * 1e4).to(dtype)}
    checkpoint = postsvd.open_checkpoint(write_folder(tmp_path / "m", tensors))
    assert checkpoint.tensor_names() == sorted(tensors)
    assert not checkpoint.sharded
    for key, tensor in tensors.items():
        info = checkpoint.info(key)
        assert info["dtype"] == name and info["shape"] == list(tensor.shape)
        assert os.path.basename(info["file"]) == "model.safetensors"
        got = checkpoint.read(key)
        assert got.dtype == np.float32 and got.shape == tuple(tensor.shape)
        expected = tensor.to(torch.float64).numpy().astype(np.float32)
        assert np.array_equal(got, expected), key
    assert "a.weight" in checkpoint and "zzz" not in checkpoint


def test_sharded_save_pretrained_reads_exactly(tiny_models):
    folder, model = tiny_models("llama", "bfloat16", sharded=True)
    checkpoint = postsvd.open_checkpoint(folder)
    assert checkpoint.sharded and len(checkpoint.files()) > 1
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    state = model.state_dict()
    assert set(checkpoint.tensor_names()) == set(weight_map)
    for name in weight_map:
        assert os.path.basename(checkpoint.info(name)["file"]) == weight_map[name]
        assert np.array_equal(checkpoint.read(name), state[name].float().numpy()), name
    # Same measures as the single-file save of the same weights.
    single, _ = tiny_models("llama", "bfloat16", sharded=False)
    a = postsvd.compare(folder, single, progress=False).table
    assert np.allclose(a["scaling_mean"], 1.0, atol=1e-6) and (a["nf"] < 1e-5).all()


def test_synthetic_sharded_bf16_pair(tmp_path):
    pair = make_pair(tmp_path / "base", tmp_path / "post", dtype="bfloat16", sharded=True, alpha=1.1, seed=3,
                     **SYNTHETIC)
    assert os.path.exists(os.path.join(pair.base, "model.safetensors.index.json"))
    result = postsvd.compare(pair.base, pair.post, progress=False)
    # bf16 storage rounds each weight (~2^-9 relative): scaling and NF carry that noise only.
    np.testing.assert_allclose(result.table["scaling_mean"], 1.1, atol=5e-3)
    assert (result.table["nf"] < 0.1 * np.sqrt(2.0 / result.table["k"])).all()


def corrupt(folder, edit):
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    with open(path, "wb") as f:
        f.write(edit(data))
    return path


def header_with(data, change):
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    header = json.loads(bytes(data[8:8 + n]))
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return bytearray(struct.pack("<Q", len(text)) + text + bytes(data[8 + n:]))


def _shift_offsets(header):
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"][1] += 4


MALFORMED = {
    "truncated": lambda d: d[: len(d) - 10],
    "trailing bytes": lambda d: d + b"\0" * 16,
    "bad json": lambda d: d[:8] + b"{" * (struct.unpack("<Q", bytes(d[:8]))[0]) + d[8 + struct.unpack(
        "<Q", bytes(d[:8]))[0]:],
    "header too large": lambda d: bytearray(struct.pack("<Q", 1 << 40)) + d[8:],
    "unknown dtype": lambda d: header_with(d, lambda h: h["model.layers.0.mlp.up_proj.weight"].update(dtype="Q7")),
    "size mismatch": lambda d: header_with(d, _shift_offsets),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_names_the_file(tmp_path, related_pair, case):
    folder = tmp_path / "broken"
    shutil.copytree(related_pair.base, folder)
    path = corrupt(folder, MALFORMED[case])
    with pytest.raises(postsvd.BadCheckpointError) as info:
        postsvd.open_checkpoint(folder)
    assert "model.safetensors" in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(postsvd.BadCheckpointError, match="model.safetensors"):
        postsvd.compare(folder, related_pair.post, progress=False)
    assert os.path.exists(path)


def test_folder_arguments_as_bytes_and_empty(related_pair):
    """A folder given as bytes reads as its decoded text; an empty string is an argument error naming
    the argument, not a missing folder ''."""
    by_text = postsvd.compare(related_pair.base, related_pair.post, kinds="q", layers="0", progress=False)
    by_bytes = postsvd.compare(os.fsencode(str(related_pair.base)), os.fsencode(str(related_pair.post)),
                               kinds="q", layers="0", progress=False)
    assert by_bytes.table["nf"].tolist() == by_text.table["nf"].tolist()
    with pytest.raises(postsvd.InvalidArgumentError, match="expected a folder path, got an empty string"):
        postsvd.compare("", related_pair.post, progress=False)
    with pytest.raises(postsvd.InvalidArgumentError, match="expected a folder path, got int"):
        postsvd.compare(related_pair.base, 3, progress=False)


def test_missing_folder_and_files(tmp_path, related_pair):
    with pytest.raises(postsvd.BadCheckpointError, match="does not exist"):
        postsvd.compare(tmp_path / "nowhere", related_pair.post, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(postsvd.BadCheckpointError, match=str(empty)):
        postsvd.open_checkpoint(empty)
    missing_shard = tmp_path / "missing_shard"
    make_pair(missing_shard / "base", missing_shard / "post", sharded=True, dtype="float32", **SYNTHETIC)
    os.remove(missing_shard / "base" / "model-00002-of-00003.safetensors")
    with pytest.raises(postsvd.BadCheckpointError, match="model-00002-of-00003.safetensors"):
        postsvd.open_checkpoint(missing_shard / "base")


def test_unknown_model_type_lists_supported(tmp_path):
    folder = write_folder(tmp_path / "m", {"w": torch.zeros(2, 2)}, {"model_type": "bert"})
    with pytest.raises(postsvd.BadCheckpointError) as info:
        postsvd.architecture(folder)
    for model_type in ("llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2"):
        assert model_type in str(info.value)
    assert set(postsvd.supported_model_types()) >= {"llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2"}


def test_config_is_parsed_once_into_python_data(tmp_path):
    folder = make_pair(tmp_path / "base", tmp_path / "post", dtype="float32", **SYNTHETIC).base
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config.update({"torch_dtype": "bfloat16", "rope_scaling": {"factor": 8.0, "type": None},
                   "layer_types": ["full", "sliding"], "tie_word_embeddings": False, "vocab_size": 2 ** 40,
                   "name": "caf\u00e9 \u2603"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    checkpoint = postsvd.open_checkpoint(folder)
    assert checkpoint.config == config
    assert list(checkpoint.config) == list(config)  # the file's key order
    checkpoint.config["model_type"] = "changed"  # a copy: the checkpoint's config stays as read
    assert checkpoint.config["model_type"] == "llama"
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "qwen2"}, f)
    assert checkpoint.config == config  # read when the folder opened, not again
    assert postsvd.describe(checkpoint)["torch_dtype"] == "bfloat16"


def test_mismatched_models_name_the_tensors(tmp_path):
    a = make_pair(tmp_path / "a", tmp_path / "a_post", dtype="float32", **SYNTHETIC)
    sizes = dict(SYNTHETIC, hidden=32, heads=4)
    b = make_pair(tmp_path / "b", tmp_path / "b_post", dtype="float32", **sizes)
    with pytest.raises(postsvd.BadCheckpointError) as info:
        postsvd.compare(a.base, b.base, progress=False)
    message = str(info.value)
    assert "model.layers." in message and "proj" in message, message
    fewer = make_pair(tmp_path / "c", tmp_path / "c_post", dtype="float32", **dict(SYNTHETIC, layers=1))
    with pytest.raises(postsvd.BadCheckpointError):
        postsvd.compare(a.base, fewer.base, progress=False)


def test_nan_weight_is_a_value_error_naming_the_tensor(tmp_path, related_pair):
    from safetensors.numpy import load_file
    from safetensors.numpy import save_file as save_numpy

    folder = tmp_path / "nan"
    shutil.copytree(related_pair.post, folder)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name][3, 5] = np.nan
    save_numpy(tensors, os.path.join(folder, "model.safetensors"))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        postsvd.compare(related_pair.base, folder, progress=False)
    # Layers without the NaN still compare.
    ok = postsvd.compare(related_pair.base, folder, layers=[0], progress=False)
    assert len(ok.table) == 7


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_synthetic_folders_load_in_transformers(tmp_path, model_type):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    pair = make_pair(tmp_path / "base", tmp_path / "post", model_type=model_type, layers=1, hidden=32,
                     intermediate=48, heads=4, kv_heads=2, vocab=64, dtype="bfloat16", sharded=True)
    model, loading = transformers.AutoModelForCausalLM.from_pretrained(pair.post, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
    expected = postsvd.read_matrix(pair.post, 0, "up")
    assert np.array_equal(model.model.layers[0].mlp.up_proj.weight.float().detach().numpy().T, expected)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 64) and torch.isfinite(logits.float()).all()
