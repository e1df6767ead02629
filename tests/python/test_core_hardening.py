"""Hardening of the compiled core (issue 16) seen from Python: a hostile
config.json ends in an error, not a crash; C++ warnings reach Python's warnings
module; the Comparator binding is safe to construct and use from several
threads at once (pybind11 issue 5473)."""
import json
import os
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
