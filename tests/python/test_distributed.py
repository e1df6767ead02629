"""compare(executor='ray') on a local Ray cluster of 2 CPUs (one per module): equal to a local run,
a worker killed mid-run, bad input, the cache, Ctrl-C, and the messages without Ray."""
import os
import sys

import numpy as np
import pandas as pd
import pytest
import ray  # a test requirement (requirements.txt): these tests run, never skip

import postsvd
from postsvd import distributed
from postsvd.synthetic import make_pair
from distributed_helpers import BASE, INSTRUCT, assert_same_results

pytestmark = pytest.mark.ray  # starts local Ray clusters: slow (conftest.py)


SIZES = dict(model_type="llama", layers=3, hidden=48, intermediate=80, heads=4, kv_heads=2)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_float64():
    return postsvd.compare(BASE, INSTRUCT, dtype="float64", progress=False)


def test_tables_equal_a_local_run_to_the_last_digit(local_float64, tmp_path):
    remote = postsvd.compare(BASE, INSTRUCT, dtype="float64", progress=False, executor="ray")
    assert_same_results(local_float64, remote)
    assert remote.device == "cpu" and remote.dtype == "float64"
    # matrices() recomputes one pair in this process, as locally
    np.testing.assert_array_equal(local_float64.matrices(1, "o")["iorth"], remote.matrices(1, "o")["iorth"])
    written = remote.save(tmp_path / "out", plots=False)
    assert pd.read_csv(tmp_path / "out" / "table.csv").shape[0] == 28 and len(written) == 7


def test_units_are_layers_split_by_size():
    matrices = [{"in_features": 10, "out_features": 10}] * 4
    assert distributed.plan_units([[0, 1], [2, 3]], matrices) == [[0, 1], [2, 3]]
    assert distributed.plan_units([[0, 1, 2], [3]], matrices, max_elements=400) == [[0, 1], [2], [3]]
    assert distributed.plan_units([[0, 1]], matrices, max_elements=10) == [[0], [1]]  # a large pair alone
    assert distributed.plan_units([[0, 1, 2]], matrices, max_pairs=2) == [[0, 1], [2]]


def test_a_killed_worker_is_retried_and_the_results_are_equal(local_float64, tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(distributed.FAULT_VARIABLE, f"kill-once:{marker}")
    remote = postsvd.compare(BASE, INSTRUCT, dtype="float64", progress=False, executor="ray")
    assert marker.exists()  # a worker did die, by SIGKILL, before computing its unit
    killed_pid = int(marker.read_text())
    assert killed_pid != os.getpid()
    assert_same_results(local_float64, remote)


def test_a_bad_input_fails_the_run_naming_the_tensor_not_retried(tmp_path, monkeypatch):
    pair = make_pair(tmp_path / "base", tmp_path / "post", dtype="float32", seed=3, **SIZES)
    from safetensors.numpy import load_file, save_file

    name = "model.layers.2.mlp.down_proj.weight"
    tensors = load_file(os.path.join(pair.post, "model.safetensors"))
    tensors[name][3, 5] = np.nan
    save_file(tensors, os.path.join(pair.post, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(postsvd.InvalidArgumentError) as local_error:
        postsvd.compare(pair.base, pair.post, progress=False)
    with pytest.raises(postsvd.InvalidArgumentError) as remote_error:
        postsvd.compare(pair.base, pair.post, progress=False, executor="ray")
    assert name in str(remote_error.value) and str(remote_error.value) == str(local_error.value)


def test_a_truncated_shard_names_the_file(tmp_path):
    pair = make_pair(tmp_path / "base", tmp_path / "post", dtype="float32", seed=4, **SIZES)
    path = os.path.join(pair.post, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(postsvd.BadCheckpointError, match="model.safetensors"):
        postsvd.compare(pair.base, pair.post, progress=False, executor="ray")


def test_the_factor_cache_is_shared_by_the_tasks(tmp_path):
    pair = make_pair(tmp_path / "base", tmp_path / "post", dtype="float32", seed=5, **SIZES)
    cache = tmp_path / "factors"
    first = postsvd.compare(pair.base, pair.post, progress=False, executor="ray", cache=cache)
    assert first.decompositions == {"computed": 2 * 21, "loaded": 0}
    second = postsvd.compare(pair.base, pair.post, progress=False, executor="ray", cache=cache)
    assert second.decompositions == {"computed": 0, "loaded": 2 * 21}
    local = postsvd.compare(pair.base, pair.post, progress=False, cache=cache)
    pd.testing.assert_frame_equal(local.table, second.table, check_exact=True)
    assert not [name for name in os.listdir(cache) if ".tmp" in name]


def test_ctrl_c_cancels_the_outstanding_tasks(monkeypatch):
    cancelled = []
    real_cancel = ray.cancel

    def interrupted_wait(pending, num_returns=1):
        raise KeyboardInterrupt

    def recording_cancel(ref, force=False):
        cancelled.append(ref)
        real_cancel(ref, force=force)

    monkeypatch.setattr(ray, "wait", interrupted_wait)
    monkeypatch.setattr(ray, "cancel", recording_cancel)
    with pytest.raises(KeyboardInterrupt):
        postsvd.compare(BASE, INSTRUCT, layers=[0, 1, 2], progress=False, executor="ray")
    assert len(cancelled) == 3  # one unit per layer, none finished


def test_devices_on_ray():
    with pytest.raises(postsvd.InvalidArgumentError, match="Ray assigns"):
        postsvd.compare(BASE, INSTRUCT, progress=False, executor="ray", device="cuda:1")
    with pytest.raises(postsvd.InvalidArgumentError, match="no GPUs"):
        postsvd.compare(BASE, INSTRUCT, progress=False, executor="ray", device="cuda")
    auto = postsvd.compare(BASE, INSTRUCT, layers=0, kinds="o", progress=False, executor="ray", device="auto")
    assert auto.device == "cpu"  # this cluster has no GPUs
    with pytest.raises(postsvd.InvalidArgumentError, match="executor"):
        postsvd.compare(BASE, INSTRUCT, progress=False, executor="dask")


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as where it is not installed
    with pytest.raises(ImportError, match=r"pip install 'postsvd\[ray\]'"):
        postsvd.compare(BASE, INSTRUCT, progress=False, executor="ray")


def test_track_on_ray_equals_a_local_track(tmp_path):
    from track_helpers import interpolated_checkpoints

    folders = interpolated_checkpoints(tmp_path, [500, 1000], 1000)
    # one LAPACK thread on both sides: a single decomposition (the base loaded from the cache, the checkpoint
    # computed) may differ in the last bits between 1 and 2 threads; the tasks run with num_threads each
    options = dict(dtype="float64", layers="0-1", kinds="attn", progress=False, num_threads=1)
    local = postsvd.track(BASE, folders, **options)
    remote = postsvd.track(BASE, folders, executor="ray", cache=tmp_path / "factors", out=tmp_path / "out", **options)
    pd.testing.assert_frame_equal(local.table, remote.table, check_exact=True)
    assert remote.comparisons[1].decompositions == {"computed": 8, "loaded": 8}  # base factors from the shared cache
    assert (tmp_path / "out" / "track.html").exists()


def test_the_command_line_runs_on_ray(tmp_path, capsys, monkeypatch):
    from postsvd import cli

    out = tmp_path / "out"
    assert cli.main(["compare", BASE, INSTRUCT, "--out", str(out), "--layers", "0", "--no-plots", "--no-progress",
                     "--ray"]) == 0  # joins the test's cluster
    assert (out / "table.csv").exists() and "ray" not in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert cli.main(["compare", BASE, INSTRUCT, "--out", str(tmp_path / "x"), "--ray"]) == 1
    assert "pip install 'postsvd[ray]'" in capsys.readouterr().err and not (tmp_path / "x").exists()
