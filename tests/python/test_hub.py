"""postsvd.hub against a real HTTP server on 127.0.0.1 (hub_server.py) that serves the bundled models,
sharded, the way the Hub serves huggingface_hub. Every test points huggingface_hub at that server and at
temporary caches; a guard refuses any connection to another address (the fixtures `served` and `hub_env`
live in conftest.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings

import pytest

import postsvd
from postsvd import hub
from postsvd.errors import BadCheckpointError, HubError, InvalidArgumentError

from hub_server import MODELS, TOKEN, set_offline, shard_model

KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def layer_tensors(folder: str, layers, kinds=KINDS):
    arch = postsvd.architecture(folder)
    sources = [s for s in arch["matrices"] if s["layer"] in layers and s["kind"] in kinds]
    return sources, hub.source_tensors(folder, sources)


def tensor_bytes(folder: str, names) -> int:
    cp = postsvd._core.Checkpoint(folder)
    return sum(cp.info(n)["end"] - cp.info(n)["begin"] for n in names)


def assert_same_matrices(local: str, resolved: str, sources) -> None:
    for s in sources:
        a = postsvd.read_matrix(local, s["layer"], s["kind"])
        b = postsvd.read_matrix(resolved, s["layer"], s["kind"])
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), (s["layer"], s["kind"])


# ---------------------------------------------------------------- names


def test_parse_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "local").mkdir(parents=True)
    assert hub.parse_name("org/local").local == "org/local"  # an existing folder wins
    assert hub.parse_name("org/name") == hub.ModelName("org/name", repo_id="org/name")
    assert hub.parse_name("org/name@dev").revision == "dev"
    sha = "a" * 40
    assert hub.parse_name(f"hf://org/name@{sha}") == hub.ModelName(f"hf://org/name@{sha}", repo_id="org/name",
                                                                     revision=sha)
    assert hub.parse_name("hf://org/name").repo_id == "org/name"
    for bad, words in [("justaname", "neither an existing folder nor a Hub repo id"),
                       ("./missing/folder", "neither an existing folder"),
                       ("a/b/c", "neither an existing folder"),
                       ("hf://datasets/org/data", "dataset repo"),
                       ("hf://org/name/sub/dir", "inside repo 'org/name'"),
                       ("org/name@", "Hub repo id")]:
        with pytest.raises(InvalidArgumentError) as info:
            hub.parse_name(bad, "base")
        assert str(info.value).startswith("base: ") and words in str(info.value), str(info.value)


def test_local_folder_passes_through(hub_env):
    resolved = hub.resolve(hub_env["base"], "base")
    assert resolved.is_local and resolved.folder == hub_env["base"] and resolved.commit is None
    assert hub.plan(resolved, ["x"]).files == ()
    assert hub.fetch(resolved, ["x"]).bytes_fetched == 0
    assert hub_env["server"].log == []


# ---------------------------------------------------------------- resolving and fetching


def test_resolve_by_id_branch_tag_commit_and_uri(hub_env):
    server = hub_env["server"]
    main = server.repos["org/base"].refs["main"]
    dev = server.repos["org/base"].refs["dev"]
    first = hub_env["first_commit"]
    for name, commit, revision in [("org/base", main, None), ("org/base@dev", dev, "dev"),
                                   ("org/base@v1", first, "v1"), (f"org/base@{first}", first, first),
                                   ("hf://org/base@dev", dev, "dev")]:
        r = hub.resolve(name, "base")
        assert (r.repo_id, r.revision, r.commit, r.name) == ("org/base", revision, commit, name)
        assert r.record() == {"name": name, "repo_id": "org/base", "revision": revision or "main", "commit": commit}
        assert os.path.basename(r.folder) == commit
        cp = postsvd._core.Checkpoint(r.folder)  # headers only: the core opens it
        assert cp.tensor_names() == postsvd._core.Checkpoint(hub_env["base"]).tensor_names()
    # resolving read config, index and headers; no tensor data
    assert server.sent(".safetensors") < 6 * 4096


def test_one_layer_fetches_that_layer_only_and_reads_bit_for_bit(hub_env):
    server = hub_env["server"]
    r = hub.resolve("org/base", "base")
    sources, names = layer_tensors(r.folder, [2])
    needed = tensor_bytes(r.folder, names)
    plan = hub.plan(r, names)
    # ranges closer than MERGE_GAP are read as one (here the layer norms between the projections come along)
    assert needed <= plan.bytes <= needed * 1.05
    assert len(plan.files) == 1 and "00004-of-00006" in plan.files[0].filename
    assert "fetch" in str(plan) and "free" in str(plan)
    headers = server.sent(".safetensors")
    server.reset()
    seen = []
    report = hub.fetch(r, names, progress=lambda done, total: seen.append((done, total)))
    assert report.bytes_fetched == plan.bytes and seen[-1] == (plan.bytes, plan.bytes)
    sent = server.sent(".safetensors")
    assert needed <= sent <= needed * 1.05
    total_data = sum(len(v) for k, v in hub_env["files"].items() if k.endswith(".safetensors"))
    assert sent + headers < total_data / 4  # other shards unread
    assert_same_matrices(hub_env["base"], r.folder, sources)
    # layer 1 was not fetched: the C++ reader refuses it
    with pytest.raises(BadCheckpointError, match=r"model-00003-of-00006.safetensors: tensor 'model.layers.1.*was not fetched"):
        postsvd.read_matrix(r.folder, 1, "q")
    # a second run sends nothing; by commit it makes no request at all
    server.reset()
    again = hub.resolve("org/base", "base")
    assert hub.fetch(again, names).bytes_fetched == 0
    assert server.sent() < 2000 and server.requests(contains="/resolve/") == []
    server.reset()
    pinned = hub.resolve(f"org/base@{r.commit}", "base")
    hub.fetch(pinned, names)
    assert server.log == []


def test_offline_runs_from_the_cache(hub_env, monkeypatch):
    r = hub.resolve("org/base@dev", "base")
    sources, names = layer_tensors(r.folder, [0], ("q", "k"))
    hub.fetch(r, names)
    server = hub_env["server"]
    server.reset()
    set_offline(monkeypatch, True)
    offline = hub.resolve("org/base@dev", "base")
    assert offline.commit == r.commit
    hub.fetch(offline, names)
    assert_same_matrices(hub_env["base"], offline.folder, sources)
    _, more = layer_tensors(r.folder, [1], ("q",))
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set and .* are not in the cache"):
        hub.fetch(offline, more)
    with pytest.raises(HubError, match=r"HF_HUB_OFFLINE is set and revision 'main' of 'org/instruct' was never "
                                       r"resolved"):
        hub.resolve("org/instruct", "post")
    assert server.log == []


def test_complete_files_in_the_hf_cache_are_used_without_a_request(hub_env, monkeypatch):
    from huggingface_hub import snapshot_download

    server = hub_env["server"]
    snapshot_download("org/instruct")  # what transformers would have left in the cache
    server.reset()
    set_offline(monkeypatch, True)  # even the first resolve needs nothing from the server
    r = hub.resolve("org/instruct", "post")
    sources, names = layer_tensors(r.folder, [0, 3])
    assert hub.plan(r, names).files == ()
    hub.fetch(r, names)
    assert server.log == []
    assert all(os.path.islink(os.path.join(r.folder, n)) for n in os.listdir(r.folder) if n.endswith(".safetensors"))
    assert_same_matrices(hub_env["instruct"], r.folder, sources)


def test_a_shard_downloaded_later_replaces_the_partial_copy(hub_env):
    from huggingface_hub import hf_hub_download

    r = hub.resolve("org/base", "base")
    _, names = layer_tensors(r.folder, [0])
    hub.fetch(r, names)
    hf_hub_download("org/base", "model-00002-of-00006.safetensors")
    r = hub.resolve("org/base", "base")
    assert os.path.islink(os.path.join(r.folder, "model-00002-of-00006.safetensors"))
    sources, _ = layer_tensors(r.folder, [0])
    assert_same_matrices(hub_env["base"], r.folder, sources)


def test_whole_files_option(hub_env):
    server = hub_env["server"]
    r = hub.resolve("org/base", "base")
    sources, names = layer_tensors(r.folder, [1], ("q",))
    plan = hub.plan(r, names, whole_files=True)
    assert [f.whole for f in plan.files] == [True] and "the whole file" in str(plan)
    server.reset()
    report = hub.fetch(r, names, whole_files=True)
    assert report.whole_files == ["model-00003-of-00006.safetensors"]
    size = len(hub_env["files"]["model-00003-of-00006.safetensors"])
    assert server.sent(".safetensors") == size
    from huggingface_hub import try_to_load_from_cache

    assert isinstance(try_to_load_from_cache("org/base", "model-00003-of-00006.safetensors", revision=r.commit), str)
    sources, _ = layer_tensors(r.folder, [1])  # the whole shard: every kind of layer 1
    assert_same_matrices(hub_env["base"], r.folder, sources)


# ---------------------------------------------------------------- errors


def test_error_lines(hub_env, monkeypatch):
    cases = [("org/missing", "base: org/missing: repo 'org/missing' not found on http://127.0.0.1"),
             ("org/base@nope", "revision 'nope' not found in repo 'org/base'"),
             ("org/gated", "the repo is gated; no token is set: log in with `hf auth login` or set HF_TOKEN"),
             ("org/bin-only", "holds only PyTorch weights (pytorch_model.bin); postsvd reads safetensors"),
             ("org/nested", "keeps its safetensors weights in a subfolder (sub/model.safetensors)")]
    for name, words in cases:
        with pytest.raises(HubError) as info:
            hub.resolve(name, "base")
        message = str(info.value)
        assert words in message and "\n" not in message, message


def test_gated_repo_with_a_token_and_the_token_never_shown(hub_env, monkeypatch):
    server = hub_env["server"]
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_secret_value")
    with pytest.raises(HubError) as info:
        hub.resolve("org/gated", "base")
    assert "the token in use" in str(info.value) and "hf_wrong_secret_value" not in str(info.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # through huggingface_hub's own lookup
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = hub.resolve("org/gated", "base")
        sources, names = layer_tensors(r.folder, [3])
        hub.fetch(r, names)
    assert_same_matrices(hub_env["base"], r.folder, sources)
    assert all(rec["authorized"] for rec in server.requests(contains="/resolve/"))
    texts = [repr(r), json.dumps(r.record()), str(hub.plan(r, names))] + [str(w.message) for w in caught]
    for folder, _, files in os.walk(hub.cache_root()):
        texts += [open(os.path.join(folder, f), "rb").read().decode("latin-1") for f in files
                  if not f.endswith(".safetensors")]
    assert not any(TOKEN in t for t in texts)


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_server_errors_are_retried(hub_env):
    server = hub_env["server"]
    r = hub.resolve("org/base", "base")
    sources, names = layer_tensors(r.folder, [1])
    server.reset()
    server.faults += [{"kind": "status", "code": 500, "contains": ".safetensors", "ranged": True, "times": 2},
                      {"kind": "status", "code": 429, "retry_after": 0, "contains": ".safetensors", "ranged": True}]
    hub.fetch(r, names)
    statuses = [q["status"] for q in server.requests("GET", "-of-")]
    assert statuses[:3] == [500, 500, 429] and set(statuses[3:]) == {206}
    assert_same_matrices(hub_env["base"], r.folder, sources)
    # model info failing with 503, then answering
    server.faults.append({"kind": "status", "code": 503, "contains": "/api/models/org/instruct"})
    assert hub.resolve("org/instruct", "post").commit == server.repos["org/instruct"].refs["main"]


def test_server_failing_for_good_is_one_line(hub_env, monkeypatch):
    from huggingface_hub.utils import _http

    server = hub_env["server"]
    r = hub.resolve("org/base", "base")
    _, names = layer_tensors(r.folder, [1], ("q",))
    sleeps = []
    monkeypatch.setattr(_http.time, "sleep", sleeps.append)  # huggingface_hub's backoff, without the wait
    server.faults.append({"kind": "status", "code": 502, "contains": ".safetensors", "times": 100})
    with pytest.raises(HubError, match=r"kept failing with HTTP 502 after the retries") as info:
        hub.fetch(r, names)
    assert "\n" not in str(info.value) and len(sleeps) == 5
    with pytest.raises(BadCheckpointError, match="was not fetched"):
        postsvd.read_matrix(r.folder, 1, "q")


def test_dropped_and_slow_bodies_are_resumed_never_short(hub_env):
    server = hub_env["server"]
    r = hub.resolve("org/base", "base")
    sources, names = layer_tensors(r.folder, [2, 3])
    needed = tensor_bytes(r.folder, names)
    server.faults += [{"kind": "drop", "after": 1000, "contains": ".safetensors", "ranged": True, "times": 2},
                      {"kind": "slow", "delay": 0.05, "contains": ".safetensors", "ranged": True, "times": 2}]
    report = hub.fetch(r, names)
    assert needed <= report.bytes_fetched <= needed * 1.05
    drops = [q for q in server.requests("GET", ".safetensors") if q["sent"] == 1000]
    assert len(drops) == 2
    assert needed <= server.sent(".safetensors") <= needed * 1.05 + 2 * 1000
    assert_same_matrices(hub_env["base"], r.folder, sources)


def test_server_ignoring_ranges_gets_the_whole_shard(hub_env):
    server = hub_env["server"]
    r = hub.resolve("org/base", "base")
    sources, names = layer_tensors(r.folder, [0])
    server.faults.append({"kind": "no_range", "contains": "00002-of", "ranged": True})
    with pytest.warns(UserWarning, match="the server ignored the range request; fetching the whole file"):
        report = hub.fetch(r, names)
    assert report.whole_files == ["model-00002-of-00006.safetensors"]
    assert os.path.islink(os.path.join(r.folder, "model-00002-of-00006.safetensors"))
    assert_same_matrices(hub_env["base"], r.folder, sources)


def test_xet_stored_files_are_read_by_range_through_the_bridge(hub_env, monkeypatch):
    """A repo whose LFS files are stored with Xet: every range goes to the resolve URL, whose redirect is signed
    for that range only (a redirect reused for another range is refused), so only the needed bytes come; where the
    bridge ignores the range, the whole shard comes instead, said in a warning, and the result is the same."""
    server = hub_env["server"]
    if "org/base-xet" not in server.repos:
        server.add_repo("org/base-xet", hub_env["files"], xet=True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # a logged-in user: the token goes to the Hub, never to the bridge
    r = hub.resolve("org/base-xet", "base")
    sources, names = layer_tensors(r.folder, [2])
    needed = tensor_bytes(r.folder, names)
    server.reset()
    report = hub.fetch(r, names)
    bridge = server.requests("GET", "/xet-bridge/")
    assert bridge and all(q["status"] == 206 for q in bridge)  # none refused: each range resolved anew
    resolves = [q for q in server.requests("GET", "/resolve/") if q["range"]]
    assert [q["status"] for q in resolves] == [302] * len(bridge)
    assert needed <= report.bytes_fetched == server.sent("/xet-bridge/") <= needed * 1.05
    assert all(q["authorized"] for q in resolves) and not any(q["authorized"] for q in bridge)
    assert_same_matrices(hub_env["base"], r.folder, sources)
    # A bridge that answers a range with the whole file: that shard whole, with a warning.
    sources, names = layer_tensors(r.folder, [0])
    server.faults.append({"kind": "no_range", "contains": "/xet-bridge/", "ranged": True})
    with pytest.warns(UserWarning, match="the server ignored the range request; fetching the whole file"):
        report = hub.fetch(r, names)
    assert report.whole_files == ["model-00002-of-00006.safetensors"]
    assert_same_matrices(hub_env["base"], r.folder, sources)


def test_a_file_changed_on_the_server_is_refused(hub_env):
    server = hub_env["server"]
    r = hub.resolve("org/base", "base")
    _, names = layer_tensors(r.folder, [1])
    server.faults.append({"kind": "etag", "contains": "00003-of", "ranged": True})
    with pytest.raises(HubError, match=r"model-00003-of-00006.safetensors changed on the server between its header "
                                       r"and its data .*discarded"):
        hub.fetch(r, names)
    with pytest.raises(BadCheckpointError):
        postsvd.read_matrix(r.folder, 1, "q")
    sources, names = layer_tensors(hub.resolve("org/base", "base").folder, [1])  # the next run starts again
    hub.fetch(r, names)
    assert_same_matrices(hub_env["base"], r.folder, sources)


def test_a_corrupt_cached_range_is_fetched_again(hub_env):
    r = hub.resolve("org/base", "base")
    sources, names = layer_tensors(r.folder, [1], ("q", "k"))
    hub.fetch(r, names)
    info = postsvd._core.Checkpoint(r.folder).info(names[0])
    path = os.path.join(r.folder, "model-00003-of-00006.safetensors")
    start = hub._header(path)[0]
    with open(path, "r+b") as f:
        f.seek(start + info["begin"] + 10)
        byte = f.read(1)
        f.seek(start + info["begin"] + 10)
        f.write(bytes([byte[0] ^ 0xFF]))
    server = hub_env["server"]
    server.reset()
    with pytest.warns(UserWarning, match="failed their checksum"):
        report = hub.fetch(r, names)
    assert report.refetched >= 1 and 0 < report.bytes_fetched <= hub.CHUNK_BYTES
    assert_same_matrices(hub_env["base"], r.folder, sources)


def test_interrupted_fetch_resumes(hub_env):
    server = hub_env["server"]
    r = hub.resolve("org/base", "base")
    sources, names = layer_tensors(r.folder, [1, 2])
    needed = tensor_bytes(r.folder, names)

    def stop(done, total):
        if done > hub.CHUNK_BYTES + 1000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hub.fetch(r, names, progress=stop)
    first = server.sent(".safetensors")
    server.reset()
    second = hub.fetch(r, names).bytes_fetched
    assert second < needed and first + second <= needed + 2 * hub.CHUNK_BYTES + 8192
    assert_same_matrices(hub_env["base"], r.folder, sources)


def test_disk_and_cache_limit_stop_before_fetching(hub_env, monkeypatch):
    server = hub_env["server"]
    r = hub.resolve("org/base", "base")
    _, names = layer_tensors(r.folder, [3])
    server.reset()
    monkeypatch.setattr(hub, "_free_bytes", lambda path: 1000)
    assert not hub.plan(r, names).fits and "NOT ENOUGH" in str(hub.plan(r, names))
    with pytest.raises(HubError, match="of disk but .* has 1.0 KB free; nothing was fetched"):
        hub.fetch(r, names)
    assert server.log == []


def test_cache_limit(hub_env, monkeypatch):
    r = hub.resolve("org/base", "base")
    _, names = layer_tensors(r.folder, [3])
    monkeypatch.setenv("POSTSVD_HUB_CACHE_LIMIT", "10KB")
    with pytest.raises(HubError, match=r"over its limit of 10.0 KB \(POSTSVD_HUB_CACHE_LIMIT\)"):
        hub.fetch(r, names)
    monkeypatch.setenv("POSTSVD_HUB_CACHE_LIMIT", "1GB")
    hub.fetch(r, names)


def test_concurrent_fetches_share_the_cache(hub_env):
    server = hub_env["server"]
    r = hub.resolve("org/base", "base")
    sources, names = layer_tensors(r.folder, [0, 1, 2])
    needed = tensor_bytes(r.folder, names)
    errors = []

    def run():
        try:
            hub.fetch(hub.resolve("org/base", "base"), names)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert server.sent(".safetensors") <= needed * 1.05  # fetched once
    assert_same_matrices(hub_env["base"], r.folder, sources)


def test_cache_list_and_clear_commands(hub_env, capsys):
    from postsvd.cli import main

    a = hub.resolve("org/base", "base")
    b = hub.resolve("org/instruct", "post")
    hub.fetch(a, layer_tensors(a.folder, [0], ("q",))[1])
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "org/base" in out and "org/instruct" in out and a.commit[:12] in out and "main" in out
    assert main(["cache", "clear", "org/base"]) == 0
    assert "org/base" in capsys.readouterr().out
    assert not os.path.exists(a.folder) and os.path.exists(b.folder)
    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["repo_id"] for e in listed["entries"]] == ["org/instruct"]
    assert main(["cache", "clear"]) == 0
    assert hub.cache_entries() == []


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_environment_variables_reach_huggingface_hub(hub_env, tmp_path):
    """A fresh interpreter, configured only by the environment (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE)."""
    script = ("import sys, postsvd\nfrom postsvd import hub\nr = hub.resolve(sys.argv[1], 'base')\n"
              "s, n = [x for x in postsvd.architecture(r.folder)['matrices'] if x['layer'] == 0], None\n"
              "hub.fetch(r, hub.source_tensors(r.folder, s))\nprint(r.commit, hub.cache_root())\n")
    env = dict(os.environ)
    # The postsvd under test (a source tree with its core copied in, or an installed wheel), not the
    # repository's python/ folder, which holds no compiled core where the suite runs against a wheel.
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(postsvd.__file__)),
                                                    env.get("PYTHONPATH")] if p)
    out = subprocess.run([sys.executable, "-c", script, "org/base@dev"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    commit, root = out.stdout.split()
    assert commit == hub_env["server"].repos["org/base"].refs["dev"]
    assert root == os.path.join(env["HF_HOME"], "postsvd")
    hub_env["server"].reset()
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, "-c", script, "org/base@dev"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert hub_env["server"].log == []


def test_fp8_scales_are_named_and_fetched(hub_env, tmp_path, monkeypatch):
    """A block-FP8 copy of the base served as a repo: a layer's sources name their weight_scale_inv tensors,
    and fetching those names is enough to read the layer."""
    import quantize

    local = tmp_path / "fp8"
    quantize.write_block_fp8(os.path.join(MODELS, "base"), str(local), block=(16, 16))
    files = shard_model(str(local), str(tmp_path / "fp8-sharded"))
    hub_env["server"].add_repo("org/base-fp8", files)
    r = hub.resolve("org/base-fp8", "base")
    sources, names = layer_tensors(r.folder, [1])
    weights = [s["tensor"] for s in sources]
    assert sorted(set(names) - set(weights)) == sorted(w + "_scale_inv" for w in set(weights))
    monkeypatch.setattr(hub, "MERGE_GAP", 0)  # else the small scales between the weights come along
    hub.fetch(r, weights)
    with pytest.raises(BadCheckpointError, match="_scale_inv' was not fetched"):
        postsvd.read_matrix(r.folder, 1, "q")
    hub.fetch(r, names)
    assert_same_matrices(str(tmp_path / "fp8-sharded"), r.folder, sources)


def test_an_adapter_names_its_base_by_repo_id(hub_env, tmp_path):
    """A PEFT adapter whose base_model_name_or_path is a Hub repo id: compare(None, adapter) resolves the base,
    fetches the tensors of the layers compared, and compares as with the local base (docs/adapters.md)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    local = hub_env["base"]
    adapter = tmp_path / "lora"
    adapter.mkdir()
    q = next(s for s in postsvd.architecture(local)["matrices"] if s["layer"] == 1 and s["kind"] == "q")
    generator = torch.Generator().manual_seed(5)
    module = "base_model.model." + q["tensor"][:-len(".weight")]
    save_file({f"{module}.lora_A.weight": torch.randn(4, q["in_features"], generator=generator),
               f"{module}.lora_B.weight": 0.1 * torch.randn(q["out_features"], 4, generator=generator)},
              str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
         "base_model_name_or_path": "org/base", "revision": "v1"}))
    remote = postsvd.compare(None, adapter, layers=[1], kinds="q", progress=False)
    reference = postsvd.compare(local, adapter, layers=[1], kinds="q", progress=False)
    np.testing.assert_array_equal(remote.table["nf"], reference.table["nf"])
    assert remote.table["nf"].iloc[0] > 1e-3 and remote.adapter["adapted"] == 1
    assert "/models--org--base/" in remote.base  # postsvd's cache copy of the v1 commit
