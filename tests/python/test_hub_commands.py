"""Every command and API function run by Hub repo id against the Hub stand-in on 127.0.0.1 (hub_server.py,
fixtures `served` / `hub_env` in conftest.py): the same results as on the local folders, bit for bit, and
only the bytes the work reads sent (counted by the server)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time

import numpy as np
import pandas as pd
import pytest

import postsvd
from postsvd import _engine, hub
from postsvd.cli import main
from postsvd.errors import HubError

from hub_server import TOKEN, set_offline


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tensor_bytes(folder: str, layers, kinds=None) -> int:
    """Bytes of the stored tensors the sources of `layers` (and `kinds`) read in a local folder."""
    sources = [s for s in postsvd.architecture(folder)["matrices"]
               if s["layer"] in layers and (kinds is None or s["kind"] in kinds)]
    checkpoint = postsvd._core.Checkpoint(folder)
    return sum(checkpoint.info(n)["end"] - checkpoint.info(n)["begin"] for n in hub.source_tensors(folder, sources))


def header_ends(files) -> dict:
    """The end of the safetensors header of each served shard."""
    return {name: 8 + int.from_bytes(data[:8], "little") for name, data in files.items()
            if name.endswith(".safetensors")}


def shard_bytes(server, repo: str = "") -> int:
    """Body bytes the server sent of shards (of `repo`)."""
    return sum(r["sent"] for r in server.requests(contains=f"/{repo}" if repo else "")
               if r["path"].endswith(".safetensors"))


def tensor_requests(server, files) -> list:
    """The requests of the server's log that read bytes of a shard past its header."""
    ends = header_ends(files)
    reads = []
    for r in server.requests("GET", ".safetensors"):
        if not r["path"].endswith(".safetensors"):
            continue
        name = r["path"].rsplit("/", 1)[-1]
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", r["range"] or "")
        if m is None or int(m.group(2) or 1 << 62) >= ends.get(name, 0):
            reads.append(r)
    return reads


def assert_same_construction(hub_folder, local_folder) -> None:
    """The folder construct wrote from Hub models holds the files of the one it wrote from local folders, byte for
    byte, but the record (which names the models as they were given)."""
    names = sorted(os.listdir(hub_folder))
    assert names == sorted(os.listdir(local_folder))
    for name in names:
        if name != "postsvd_construction.json":
            assert (hub_folder / name).read_bytes() == (local_folder / name).read_bytes(), name


def prepared(*names):
    """The models resolved (config, index, headers in the caches), so that a later count sees tensor bytes only."""
    return [hub.resolve(n) for n in names]


# ---------------------------------------------------------------- compare


def test_compare_by_repo_id_equals_local_and_sends_one_layer(hub_env):
    server = hub_env["server"]
    prepared("org/base", "org/instruct")
    server.reset()
    remote = postsvd.compare("org/base", "org/instruct", layers=1, progress=False)
    sent = shard_bytes(server)
    local = postsvd.compare(hub_env["base"], hub_env["instruct"], layers=1, progress=False)
    pd.testing.assert_frame_equal(remote.table, local.table, check_exact=True)
    pd.testing.assert_frame_equal(remote.kind_table(), local.kind_table(), check_exact=True)
    needed = tensor_bytes(hub_env["base"], [1]) + tensor_bytes(hub_env["instruct"], [1])
    assert needed <= sent <= 1.05 * needed, (sent, needed)
    # names as written, and what was read
    assert (remote.base_name, remote.post_name) == ("org/base", "org/instruct")
    assert "base 'org/base' -> post 'org/instruct'" in remote.summary()
    info = remote.run_info()
    assert info["schema_version"] == 3
    assert info["base_model"] == {"name": "org/base", "repo_id": "org/base", "revision": "main",
                                  "commit": server.repos["org/base"].refs["main"]}
    assert info["post_model"]["commit"] == server.repos["org/instruct"].refs["main"]
    assert local.run_info()["base_model"] == {"name": hub_env["base"], "folder": os.path.abspath(hub_env["base"])}
    # a second run by repo id sends no tensor bytes
    server.reset()
    postsvd.compare("org/base", "org/instruct", layers=1, progress=False)
    assert shard_bytes(server) == 0


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_compare_cli_by_repo_id_writes_the_local_results(hub_env, tmp_path, capsys):
    out_hub, out_local = tmp_path / "hub", tmp_path / "local"
    code, stdout, err = run_cli(["compare", "hf://org/base", "org/instruct@main", "--out", out_hub, "--layers",
                                 "0,2", "--no-progress", "--no-plots"], capsys)
    assert code == 0, err
    assert "base 'hf://org/base' -> post 'org/instruct@main'" in stdout
    assert run_cli(["compare", hub_env["base"], hub_env["instruct"], "--out", out_local, "--layers", "0,2",
                    "--no-progress", "--no-plots"], capsys)[0] == 0
    for name in ("table.csv", "table.json", "kinds.csv", "kinds.json"):
        assert (out_hub / name).read_bytes() == (out_local / name).read_bytes(), name
    with np.load(out_hub / "spectra.npz") as a, np.load(out_local / "spectra.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(a[k].tobytes() == b[k].tobytes() for k in a.files)
    code, _, err = run_cli(["compare", "org/base", "org/instruct", "hf://org/reasoning@main", "--out",
                            tmp_path / "two", "--layers", "0", "--kinds", "q", "--no-progress", "--no-plots"], capsys)
    assert code == 0 and sorted(os.listdir(tmp_path / "two")) == ["instruct", "reasoning@main"], err
    run = json.loads((out_hub / "run.json").read_text())
    server = hub_env["server"]
    assert run["base_model"] == {"name": "hf://org/base", "repo_id": "org/base", "revision": "main",
                                 "commit": server.repos["org/base"].refs["main"]}
    assert run["post_model"]["revision"] == "main" and run["schema_version"] == 3


def test_dry_run_sends_no_tensor_bytes(hub_env, tmp_path, capsys):
    server = hub_env["server"]
    code, out, err = run_cli(["compare", "org/base", "org/instruct", "--out", tmp_path / "o", "--layers", "1",
                              "--kinds", "attention", "--dry-run"], capsys)
    assert code == 0, err
    assert tensor_requests(server, hub_env["files"]) == []
    assert not (tmp_path / "o").exists()
    assert "org/base (org/base at commit" in out and "org/instruct (org/instruct at commit" in out
    assert "model-00003-of-00006.safetensors" in out and "free in" in out
    needed = tensor_bytes(hub_env["base"], [1], ("q", "k", "v", "o")) * 2
    total = int(re.search(r"dry run: .* \(([0-9,]+) bytes\) to fetch in all", out).group(1).replace(",", ""))
    assert needed <= total <= 1.05 * needed
    # the plan is what the run then fetches
    server.reset()
    assert run_cli(["compare", "org/base", "org/instruct", "--out", tmp_path / "o", "--layers", "1", "--kinds",
                    "attention", "--no-progress", "--no-plots"], capsys)[0] == 0
    assert shard_bytes(server) == total
    code, out, _ = run_cli(["compare", "org/base", "org/instruct", "--out", tmp_path / "p", "--layers", "1",
                            "--kinds", "attention", "--dry-run"], capsys)
    assert code == 0 and "nothing to fetch" in out and "dry run: 0 B" in out


def test_whole_files_option(hub_env, tmp_path, capsys):
    server = hub_env["server"]
    prepared("org/base", "org/instruct")
    server.reset()
    code, _, err = run_cli(["compare", "org/base", "org/instruct", "--out", tmp_path / "o", "--layers", "1",
                            "--whole-files", "--no-progress", "--no-plots"], capsys)
    assert code == 0, err
    shard = "model-00003-of-00006.safetensors"  # layer 1's shard in both repos
    assert shard_bytes(server) == len(hub_env["files"][shard]) + os.path.getsize(
        os.path.join(hub_env["instruct"], shard))


def test_offline_after_a_first_run(hub_env, monkeypatch, tmp_path, capsys):
    first = postsvd.compare("org/base@dev", "org/instruct", layers="2,3", kinds="mlp", progress=False)
    server = hub_env["server"]
    server.reset()
    set_offline(monkeypatch, True)
    again = postsvd.compare("org/base@dev", "org/instruct", layers="2,3", kinds="mlp", progress=False)
    pd.testing.assert_frame_equal(first.table, again.table, check_exact=True)
    code, _, err = run_cli(["compare", "org/base@dev", "org/instruct", "--out", tmp_path / "o", "--layers", "3",
                            "--kinds", "mlp", "--no-progress", "--no-plots"], capsys)
    assert code == 0, err
    assert server.log == []
    code, _, err = run_cli(["compare", "org/base@dev", "org/instruct", "--out", tmp_path / "p", "--layers", "1",
                            "--no-progress"], capsys)
    assert code == 1 and "HF_HUB_OFFLINE is set" in err and err.count("\n") == 1, err
    assert server.log == []


@pytest.mark.parametrize("argv, words", [
    (["compare", "org/gated", "org/instruct", "--out", "{tmp}/o"], "log in with `hf auth login` or set HF_TOKEN"),
    (["info", "org/gated"], "log in with `hf auth login` or set HF_TOKEN"),
    (["compare", "org/base", "org/bin-only", "--out", "{tmp}/o"], "holds only PyTorch weights"),
    (["lineage", "org/nested", "org/base"], "keeps its safetensors weights in a subfolder"),
    (["construct", "11", "--base", "org/base", "--post", "org/missing", "--out", "{tmp}/o"],
     "repo 'org/missing' not found"),
    (["track", "org/base", "org/run", "--revisions", "step-100,nope", "--out", "{tmp}/o"],
     "revision 'nope' not found in repo 'org/run'"),
])
def test_hub_errors_are_one_line_with_exit_code_1(hub_env, tmp_path, capsys, argv, words):
    code, out, err = run_cli([a.format(tmp=tmp_path) for a in argv] + ["--no-progress"] * (argv[0] != "info"),
                             capsys)
    assert code == 1 and words in err, err
    assert err.startswith("postsvd: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert not os.path.exists(tmp_path / "o")


def test_gated_repo_with_a_token(hub_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    remote = postsvd.compare("org/gated", "org/instruct", layers=0, kinds="q", progress=False)
    local = postsvd.compare(hub_env["base"], hub_env["instruct"], layers=0, kinds="q", progress=False)
    pd.testing.assert_frame_equal(remote.table, local.table, check_exact=True)
    assert TOKEN not in json.dumps(remote.run_info())


# ---------------------------------------------------------------- info and reading


def _with_inf(files, tensor: str):
    """`files` (a sharded model's, by name) with one BF16 element of `tensor` set to +inf."""
    for name, blob in files.items():
        if not name.endswith(".safetensors"):
            continue
        n = int.from_bytes(blob[:8], "little")
        entry = json.loads(blob[8:8 + n]).get(tensor)
        if entry is not None:
            assert entry["dtype"] == "BF16"
            at = 8 + n + entry["data_offsets"][0] + (3 * entry["shape"][1] + 4) * 2
            return {**files, name: blob[:at] + b"\x80\x7f" + blob[at + 2:]}, name
    raise AssertionError(tensor)


def test_bad_data_of_a_hub_model_names_it_as_written(hub_env):
    """One rule with local folders (errors.naming_models): the model as the caller wrote it, here its Hub id,
    then the file in postsvd's cache and the tensor."""
    tensor = "model.layers.1.self_attn.o_proj.weight"
    files, shard = _with_inf(hub_env["files"], tensor)
    hub_env["server"].add_repo("org/broken", files)
    with pytest.raises(postsvd.InvalidArgumentError) as raised:
        postsvd.compare("org/base", "org/broken@main", layers=1, kinds="o", progress=False)
    message = str(raised.value)
    assert message.startswith(f"post 'org/broken@main': tensor '{tensor}' in "), message
    assert f"{shard}: non-finite value inf" in message, message
    info = postsvd.describe("hf://org/broken")  # fetched now: info reads its values and lists the problem
    assert len(info["problems"]) == 1 and tensor in info["problems"][0] and info["not_fetched"] > 0


def test_info_and_read_matrix_by_repo_id(hub_env, capsys):
    server = hub_env["server"]
    code, out, err = run_cli(["info", "org/base@v1"], capsys)
    assert code == 0, err
    commit = hub_env["first_commit"]
    assert f"model:        org/base@v1 (repo org/base, revision v1, commit {commit})" in out
    code, local_out, _ = run_cli(["info", hub_env["base"]], capsys)
    strip = lambda text: [line for line in text.splitlines() if not line.startswith(("model:", "folder:", "checks:"))]
    assert strip(out) == strip(local_out)
    # The checks: what the headers show; the projections not fetched are counted, not problems.
    projections = len(postsvd.architecture(hub_env["base"])["matrices"])
    assert (f"checks:       0 problems (headers and values; {projections} projections not fetched (a Hub model)"
            in out)
    assert "checks:       0 problems (headers and values); the folder compares" in local_out
    info = json.loads(run_cli(["info", "org/base@v1", "--json"], capsys)[1])
    assert info["model"] == {"name": "org/base@v1", "repo_id": "org/base", "revision": "v1", "commit": commit}
    assert info["problems"] == [] and info["not_fetched"] == projections
    assert tensor_requests(server, hub_env["files"]) == []  # headers describe it
    assert postsvd.describe("org/base@v1")["model"]["commit"] == commit
    assert postsvd.describe(hub_env["base"])["not_fetched"] == 0
    postsvd.read_matrix("org/base@v1", 1, "q")  # fetches that one projection: now its values are read too
    fetched = postsvd.describe("org/base@v1")
    assert fetched["not_fetched"] == projections - 1 and fetched["problems"] == []
    server.reset()
    w = postsvd.read_matrix("org/base", 2, "down")
    assert w.tobytes() == postsvd.read_matrix(hub_env["base"], 2, "down").tobytes()
    needed = tensor_bytes(hub_env["base"], [2], ("down",))
    assert needed <= shard_bytes(server) <= needed + hub.MERGE_GAP
    assert postsvd.architecture("org/base")["num_layers"] == 4


# ---------------------------------------------------------------- report, track, lineage, construct


def _page_without_run_details(path: str, names) -> str:
    """The report page without what differs between two runs of the same comparison: the names, the figures
    (their titles name the models), times, the command a click names (the models as written) and the run's
    metadata."""
    text = open(path, encoding="utf-8").read()
    text = text.split('<section id="metadata">')[0]
    text = re.sub(r'"postsvd compare [^"]* --out DIR --matrices PAIR"', '"postsvd compare MODELS"', text)
    text = text.replace("\\u002f", "/")  # the interactive figures' JSON writes '/' so
    text = re.sub(r"<img [^>]*>", "<img>", text)
    text = re.sub(r"\d+\.\d s", "T s", text)
    for name in names:
        text = text.replace(name, "NAME")
    return text


@pytest.mark.slow  # figures and pages of two runs each
def test_report_by_repo_id(hub_env, tmp_path):
    server = hub_env["server"]
    prepared("org/base", "org/instruct", "org/reasoning")
    server.reset()
    remote = postsvd.report("org/base", ["org/instruct", "org/reasoning"], tmp_path / "hub", layers="1,2",
                            kinds="attention", progress=False)
    needed = sum(tensor_bytes(hub_env[m], [1, 2], ("q", "k", "v", "o")) for m in ("base", "instruct", "reasoning"))
    assert needed <= shard_bytes(server) <= 1.05 * needed
    local = postsvd.report(hub_env["base"], [hub_env["instruct"], hub_env["reasoning"]], tmp_path / "local",
                           layers="1,2", kinds="attention", progress=False)
    names = ["org/base", "org/instruct", "org/reasoning", "base", "instruct", "reasoning"]
    assert _page_without_run_details(remote, names) == _page_without_run_details(local, names)
    page = open(remote, encoding="utf-8").read()
    commit = server.repos["org/instruct"].refs["main"]
    assert f"org/instruct (repo org/instruct, revision main, commit {commit})" in page
    if "postsvd.pick(" in page:  # interactive: a click on a matrix the page does not hold names the command
        assert '"postsvd compare org/base org/instruct --out DIR --matrices PAIR"' in page


@pytest.mark.slow  # figures and pages of two runs each
def test_track_by_revisions(hub_env, tmp_path, capsys):
    server = hub_env["server"]
    code, _, err = run_cli(["track", "org/base", "org/run", "--revisions", "step-100,step-200", "--out",
                            tmp_path / "hub", "--layers", "0,3", "--no-progress"], capsys)
    assert code == 0, err
    local = postsvd.track(hub_env["base"], [hub_env["reasoning"], hub_env["instruct"]], steps=[200, 100],
                          out=tmp_path / "local", layers="0,3", progress=False)
    for name in ("trajectory.csv", "trajectory.json", "table.csv", "step-100/table.csv", "step-200/kinds.csv"):
        assert (tmp_path / "hub" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    run = json.loads((tmp_path / "hub" / "run.json").read_text())
    assert run["steps"] == [100, 200] == local.steps
    assert [c["revision"] for c in run["checkpoint_models"]] == ["step-100", "step-200"]
    assert [c["commit"] for c in run["checkpoint_models"]] == [server.repos["org/run"].refs["step-100"],
                                                              server.repos["org/run"].refs["step-200"]]
    assert run["base_model"]["repo_id"] == "org/base" and run["schema_version"] == 3
    # the Python API, with the run's checkpoints named one by one
    again = postsvd.track("org/base", ["org/run@step-200", "org/run@step-100"], layers="0,3", progress=False)
    pd.testing.assert_frame_equal(again.kind_table(), local.kind_table(), check_exact=True)
    with pytest.raises(postsvd.InvalidArgumentError, match="no step in the revision name"):
        postsvd.track("org/base", "org/run", revisions=[server.repos["org/run"].refs["step-100"]], progress=False)


@pytest.mark.slow  # figures and pages of two runs each
def test_lineage_by_repo_id(hub_env, tmp_path, capsys):
    server = hub_env["server"]
    prepared("org/base", "org/instruct")
    server.reset()
    remote = postsvd.lineage("org/base", "org/instruct", layers="1", paper_nf=True)
    local = postsvd.lineage(hub_env["base"], hub_env["instruct"], layers="1", paper_nf=True)
    assert remote.verdict == local.verdict and remote.p_value == local.p_value
    pd.testing.assert_frame_equal(remote.table, local.table, check_exact=True)
    pd.testing.assert_frame_equal(remote.nf_table, local.nf_table, check_exact=True)
    assert remote.alignments == local.alignments
    # layers 0-2 shards (layer 1 of A; layers 1 and 2 of B), the embeddings and the final shard, nothing else
    read = {r["path"].rsplit("/", 1)[-1] for r in tensor_requests(server, hub_env["files"])}
    assert read == {"model-00001-of-00006.safetensors", "model-00003-of-00006.safetensors",
                    "model-00004-of-00006.safetensors", "model-00006-of-00006.safetensors"}
    assert remote.to_dict()["b_model"]["repo_id"] == "org/instruct"
    code, out, err = run_cli(["lineage", "org/base", "org/instruct", "--layers", "1", "--no-paper-nf",
                              "--no-progress"], capsys)
    assert code == 0 and "is 'org/instruct' derived from 'org/base'? DERIVED" in out, err
    code, out, _ = run_cli(["lineage", "org/base", "org/reasoning", "--layers", "2", "--dry-run"], capsys)
    assert code == 0 and "org/reasoning (org/reasoning at commit" in out and "nothing was fetched" in out


def test_construct_by_repo_id_writes_the_local_folder(hub_env, tmp_path, capsys):
    server = hub_env["server"]
    code, out, err = run_cli(["construct", "11", "--base", "org/base", "--post", "org/instruct", "--out",
                              tmp_path / "plan", "--layers", "1", "--kinds", "q,k", "--dry-run"], capsys)
    assert code == 0 and not (tmp_path / "plan").exists(), err
    post_files = {f: open(os.path.join(hub_env["instruct"], f), "rb").read() for f in os.listdir(hub_env["instruct"])}
    post_data = sum(len(data) - end for data, end in ((post_files[f], e) for f, e in header_ends(post_files).items()))
    assert "org/instruct (org/instruct at commit" in out and "model-00006-of-00006.safetensors" in out
    assert tensor_requests(server, hub_env["files"]) == []
    server.reset()
    code, _, err = run_cli(["construct", "11", "--base", "org/base", "--post", "org/instruct", "--out",
                            tmp_path / "hub", "--layers", "1", "--kinds", "q,k", "--no-progress"], capsys)
    assert code == 0, err
    assert shard_bytes(server, "org/instruct/") == post_data  # every tensor of post (the headers came before)
    needed_base = tensor_bytes(hub_env["base"], [1], ("q", "k"))
    assert needed_base <= shard_bytes(server, "org/base/") <= 1.05 * needed_base
    postsvd.construct(11, hub_env["base"], hub_env["instruct"], tmp_path / "local", layers="1", kinds="q,k",
                      progress=False)
    assert_same_construction(tmp_path / "hub", tmp_path / "local")
    record = json.loads((tmp_path / "hub" / "postsvd_construction.json").read_text())
    local_record = json.loads((tmp_path / "local" / "postsvd_construction.json").read_text())
    assert record["table"] == local_record["table"]
    post = record["sources"]["post"]
    assert post["model"]["repo_id"] == "org/instruct" and post["model"]["commit"] == \
        server.repos["org/instruct"].refs["main"]
    assert post["safetensors_sha256"] == local_record["sources"]["post"]["safetensors_sha256"]


def _tensor_spans(folder: str, names) -> dict:
    """shard name -> the [begin, end) file offsets of the tensors `names` in a local sharded folder."""
    checkpoint = postsvd._core.Checkpoint(folder)
    spans: dict = {}
    for name in names:
        info = checkpoint.info(name)
        with open(info["file"], "rb") as f:
            start = 8 + int.from_bytes(f.read(8), "little")
        spans.setdefault(os.path.basename(info["file"]), []).append((start + info["begin"], start + info["end"]))
    return spans


def _request_span(r) -> tuple:
    m = re.fullmatch(r"bytes=(\d+)-(\d+)", r["range"] or "")
    return (int(m.group(1)), int(m.group(2)) + 1) if m else (0, 1 << 62)


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_construct_fetches_the_rest_of_post_while_it_decomposes(hub_env, monkeypatch, tmp_path):
    """The selected matrices' tensors are fetched first; the rest of post (which the new folder copies) is fetched
    on a throttled link while they decompose: requests for tensors outside the selection are in flight between the
    first matrix and the moment the copy waits for them (before_copy), and all of them end before the copy."""
    server = hub_env["server"]
    prepared("org/base", "org/instruct")
    server.reset()
    monkeypatch.setattr(server, "rate", 4e5)  # bytes per second per response: a layer's shard takes 2 s
    events = []
    real = postsvd._core.construct_checkpoint

    def construct_checkpoint(*args, progress, before_copy=None, **kwargs):
        def timed(done, total, what):
            events.append(("matrix", done, time.monotonic()))
            time.sleep(0.5)  # a decomposition slower than this small model's
            progress(done, total, what)

        def waited():
            events.append(("before_copy", None, time.monotonic()))
            before_copy()
            events.append(("fetched", None, time.monotonic()))

        return real(*args, progress=timed, before_copy=None if before_copy is None else waited, **kwargs)

    monkeypatch.setattr(postsvd._core, "construct_checkpoint", construct_checkpoint)
    postsvd.construct(11, "org/base", "org/instruct", tmp_path / "hub", layers="0", kinds="q,k", progress=False)
    first = next(t for kind, _, t in events if kind == "matrix")
    waits = next((t for kind, _, t in events if kind == "before_copy"), math.inf)  # none: nothing to wait for
    fetched = next((t for kind, _, t in events if kind == "fetched"), math.inf)
    sources = [s for s in postsvd.architecture(hub_env["instruct"])["matrices"]
               if s["layer"] == 0 and s["kind"] in ("q", "k")]
    selected = _tensor_spans(hub_env["instruct"], hub.source_tensors(hub_env["instruct"], sources))
    inside, outside = [], []
    for r in tensor_requests(server, hub_env["files"]):
        if "/org/instruct/" not in r["path"]:
            continue
        begin, end = _request_span(r)
        spans = selected.get(r["path"].rsplit("/", 1)[-1], [])
        (inside if any(b < end and begin < e for b, e in spans) else outside).append(r)
    assert inside and outside
    assert all(r["ended"] < first for r in inside)  # what the pairs read came first
    assert any(r["started"] < waits and r["ended"] > first for r in outside)  # the rest while they decomposed
    # (the server stamps "ended" after its last write returns, which can trail the client's receipt a little)
    assert all(r["ended"] <= fetched + 0.25 for r in outside)
    postsvd.construct(11, hub_env["base"], hub_env["instruct"], tmp_path / "local", layers="0", kinds="q,k",
                      progress=False)
    assert_same_construction(tmp_path / "hub", tmp_path / "local")


def test_construct_9_with_the_table_4_alpha_by_repo_id(hub_env, tmp_path):
    """Construction 9 without alpha decomposes the selected kinds first (the rest of post fetched meanwhile): the
    alpha' and the folder are the local folders'."""
    hub_result = postsvd.construct(9, "org/base", "org/instruct", tmp_path / "hub", layers="1,2", kinds="q,o",
                                   progress=False)
    local = postsvd.construct(9, hub_env["base"], hub_env["instruct"], tmp_path / "local", layers="1,2",
                              kinds="q,o", progress=False)
    assert hub_result.alpha == local.alpha and hub_result.alpha_source == "Table 4 rule"
    assert_same_construction(tmp_path / "hub", tmp_path / "local")


def test_a_failing_background_fetch_stops_construct_with_one_line_and_no_folder(hub_env, monkeypatch, tmp_path,
                                                                               capsys):
    """A server failing for good on a shard outside the selection (layer 3's, fetched while layer 1 decomposes):
    construct ends with the HubError line, no output folder and no fetch thread left."""
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http.time, "sleep", lambda s: None)
    prepared("org/base", "org/instruct")
    server = hub_env["server"]
    server.faults.append({"kind": "status", "code": 500, "contains": "00005-of",
                          "ranged": True, "times": 1000})
    out = tmp_path / "out"
    code, _, err = run_cli(["construct", "11", "--base", "org/base", "--post", "org/instruct", "--out", out,
                            "--layers", "1", "--kinds", "q,k", "--no-progress"], capsys)
    assert code == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(r"model-00005-of-00006.safetensors: .* kept failing with HTTP 500",
                                         lines[0]), err
    assert sorted(os.listdir(tmp_path)) == ["hf-home"]  # neither out nor its temporary folder
    assert not any(t.name == "postsvd-fetch" for t in threading.enumerate())
    reads = [r for r in tensor_requests(server, hub_env["files"]) if "/org/instruct/" in r["path"]]
    assert any("model-00003-of" in r["path"] and r["status"] == 206 for r in reads)  # layer 1's came first


def test_construct_refuses_a_post_over_the_cache_limit_before_fetching(hub_env, monkeypatch, tmp_path, capsys):
    """The rest of post is fetched in the background, but a fetch of the whole that cannot be is refused first."""
    prepared("org/base", "org/instruct")
    server = hub_env["server"]
    server.reset()
    monkeypatch.setenv("POSTSVD_HUB_CACHE_LIMIT", "1000000")
    code, _, err = run_cli(["construct", "11", "--base", "org/base", "--post", "org/instruct", "--out",
                            tmp_path / "out", "--layers", "1", "--kinds", "q,k", "--no-progress"], capsys)
    assert code == 1 and "over its limit" in err and "org/instruct" in err, err
    assert tensor_requests(server, hub_env["files"]) == [] and not (tmp_path / "out").exists()


def test_functional_loads_a_hub_model_through_transformers(hub_env, monkeypatch):
    pytest.importorskip("transformers")
    from postsvd.functional._models import load_model_and_tokenizer

    from huggingface_hub import constants

    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    model, tokenizer = load_model_and_tokenizer("org/instruct")
    local, local_tokenizer = load_model_and_tokenizer(hub_env["instruct"])
    for (name, a), (_, b) in zip(model.state_dict().items(), local.state_dict().items()):
        assert a.detach().numpy().tobytes() == b.detach().numpy().tobytes(), name
    # transformers read complete files from the Hugging Face cache, never postsvd's partial copies
    snapshot = os.path.join(constants.HF_HUB_CACHE, "models--org--instruct", "snapshots",
                            hub_env["server"].repos["org/instruct"].refs["main"])
    assert os.path.isfile(os.path.join(snapshot, "model-00003-of-00006.safetensors"))
    assert tokenizer("a b c")["input_ids"] == local_tokenizer("a b c")["input_ids"]


# ---------------------------------------------------------------- overlap


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_fetching_overlaps_decomposing_and_stays_bounded(hub_env, monkeypatch):
    events = []
    lock = threading.Lock()

    def log(*event):
        with lock:
            events.append(event)

    real_fetch, real_pairs = _engine.Fetcher.fetch, _engine.pair_records

    def fetch(self, indices, on_bytes=None):
        log("fetch", tuple(indices), "start")
        try:
            return real_fetch(self, indices, on_bytes)
        finally:
            log("fetch", tuple(indices), "end")

    def pairs(comparator, indices):
        log("compute", tuple(indices), "start")
        time.sleep(0.15)  # slower than a loopback fetch: the next units are fetched meanwhile
        out = real_pairs(comparator, indices)
        log("compute", tuple(indices), "end")
        return out

    monkeypatch.setattr(_engine.Fetcher, "fetch", fetch)
    monkeypatch.setattr(_engine, "pair_records", pairs)
    monkeypatch.setattr(_engine, "FETCH_AHEAD", 2)
    prepared("org/base", "org/instruct")
    remote = postsvd.compare("org/base", "org/instruct", layers="0,1", progress=False)
    units = [e[1] for e in events if e[0] == "compute" and e[2] == "start"]
    assert len(units) == 14 and all(len(u) == 1 for u in units)  # on the CPU a unit is one pair
    at = {e: i for i, e in enumerate(events)}
    for j, unit in enumerate(units):
        assert at[("fetch", unit, "end")] < at[("compute", unit, "start")]  # never a tensor not fetched
        if j >= 2:  # at most FETCH_AHEAD units ahead of the one decomposing
            assert at[("fetch", unit, "start")] > at[("compute", units[j - 2], "start")]
    assert at[("fetch", units[1], "end")] < at[("compute", units[0], "end")]  # fetched while unit 0 decomposed
    local = postsvd.compare(hub_env["base"], hub_env["instruct"], layers="0,1", progress=False)
    pd.testing.assert_frame_equal(remote.table, local.table, check_exact=True)


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_a_failing_fetch_stops_the_run_with_its_error(hub_env, monkeypatch):
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http.time, "sleep", lambda s: None)
    prepared("org/base", "org/instruct")
    server = hub_env["server"]
    server.faults.append({"kind": "status", "code": 502, "contains": "00005-of", "ranged": True, "times": 1000})
    with pytest.raises(HubError, match="model-00005-of-00006.safetensors: .* kept failing with HTTP 502"):
        postsvd.compare("org/base", "org/instruct", progress=False)
    assert not any(t.name == "postsvd-fetch" for t in threading.enumerate())


def test_progress_shows_bytes_fetched(hub_env, capsys):
    prepared("org/base", "org/instruct")
    postsvd.compare("org/base", "org/instruct", layers="0,1", progress=True)
    err = capsys.readouterr().err
    assert "org/base vs org/instruct" in err and re.search(r"fetched \d+(\.\d)? [KM]B", err), err


# ---------------------------------------------------------------- Ray


@pytest.mark.ray
def test_compare_by_repo_id_on_ray(hub_env, monkeypatch):
    ray = pytest.importorskip("ray")
    import pickle

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    intruders = dict(intruder_k=3, intruder_epsilon=0.4, intruder_side="input")
    env = {k: os.environ[k] for k in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
                                      "HF_HUB_DISABLE_XET", "HF_TOKEN")}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env={"env_vars": env})
    try:
        prepared("org/gated", "org/instruct")
        server = hub_env["server"]
        server.reset()
        remote = postsvd.compare("org/gated", "org/instruct", layers="1,2", executor="ray", device="cpu",
                                 progress=False, **intruders)  # the tasks take the Hub models and the options
        assert all(r["authorized"] for r in server.requests(contains="/resolve/"))
        needed = sum(tensor_bytes(hub_env[m], [1, 2]) for m in ("base", "instruct"))
        assert needed <= shard_bytes(server) <= 1.05 * needed  # each task fetched its own unit
    finally:
        ray.shutdown()
    local = postsvd.compare(hub_env["base"], hub_env["instruct"], layers="1,2", progress=False, **intruders)
    pd.testing.assert_frame_equal(remote.table, local.table, check_exact=True)
    assert [len(r["intruder_cosines"]) for r in remote.records] == [3] * len(remote.table)
    assert TOKEN.encode() not in pickle.dumps(hub.resolve("org/gated"))


def test_sha256_of_the_manifest_is_the_files(hub_env):
    r = hub.resolve("org/instruct")
    for name, digest in hub.weight_sha256(r).items():
        assert digest == hashlib.sha256(open(os.path.join(hub_env["instruct"], name), "rb").read()).hexdigest()


# ---------------------------------------------------------------- PEFT adapters (docs/adapters.md)


def _serve_adapter(server, repo: str, **config_changes) -> str:
    """The bundled adapter examples/models/instruct_lora served as `repo`, its base_model_name_or_path 'org/base'
    (and `config_changes`); returns the local folder."""
    from hub_server import MODELS

    folder = os.path.join(MODELS, "instruct_lora")
    with open(os.path.join(folder, "adapter_config.json")) as f:
        config = {**json.load(f), "base_model_name_or_path": "org/base", **config_changes}
    files = {"adapter_config.json": json.dumps(config).encode(), "README.md": b"a LoRA adapter\n"}
    for name in ("adapter_model.safetensors", "tokenizer.json"):
        with open(os.path.join(folder, name), "rb") as f:
            files[name] = f.read()
    if repo not in server.repos:
        server.add_repo(repo, files)
    return folder


def test_an_adapter_by_repo_id_on_the_hub_base_it_names(hub_env, tmp_path, capsys):
    """`postsvd compare org/lora`: the adapter resolved like any model (its two files whole), its base from
    base_model_name_or_path resolved and fetched selectively; the local results, the names as written."""
    server = hub_env["server"]
    adapter = _serve_adapter(server, "org/lora")
    weights = os.path.getsize(os.path.join(adapter, "adapter_model.safetensors"))
    prepared("org/base")
    server.reset()
    code, out, err = run_cli(["compare", "org/lora", "--out", tmp_path / "plan", "--layers", "2", "--dry-run"],
                             capsys)
    assert code == 0 and not (tmp_path / "plan").exists(), err
    assert [r for r in tensor_requests(server, hub_env["files"]) if "/org/base/" in r["path"]] == []
    assert "org/lora (org/lora at commit" in out and "nothing to fetch" in out  # came whole when resolved
    assert shard_bytes(server, "org/lora/") == weights
    total = int(re.search(r"dry run: .* \(([0-9,]+) bytes\) to fetch in all", out).group(1).replace(",", ""))
    needed = tensor_bytes(hub_env["base"], [2])
    assert needed <= total <= 1.05 * needed
    server.reset()
    code, out, err = run_cli(["compare", "org/lora", "--out", tmp_path / "hub", "--layers", "2", "--no-progress",
                              "--no-plots"], capsys)
    assert code == 0, err
    assert "base 'org/base' -> post 'org/lora'" in out
    assert "Adapter: PEFT LoRA 'org/lora' (r 8, alpha 16) applied to the base 'org/base'" in out
    assert shard_bytes(server, "org/lora/") == 0  # resolved by the dry run, in the Hugging Face cache
    # What the dry run said, less at most the small gaps between the run's units (a layer's attention, then its
    # MLP: the norm weights between them), which the plan of the whole run merges (docs/hub.md).
    assert needed <= shard_bytes(server, "org/base/") <= total
    assert run_cli(["compare", hub_env["base"], adapter, "--out", tmp_path / "local", "--layers", "2",
                    "--no-progress", "--no-plots"], capsys)[0] == 0
    for name in ("table.csv", "kinds.csv"):
        assert (tmp_path / "hub" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    run = json.loads((tmp_path / "hub" / "run.json").read_text())
    assert run["schema_version"] == 3
    assert run["post_model"] == {"name": "org/lora", "repo_id": "org/lora", "revision": "main",
                                 "commit": server.repos["org/lora"].refs["main"]}
    assert run["base_model"]["name"] == "org/base" and run["base_model"]["repo_id"] == "org/base"
    assert run["adapter"]["adapted"] == 28 and run["adapter"]["r"] == 8
    # A fresh cache: resolving the adapter fetches its weights whole, once.
    server.reset()
    code, out, err = run_cli(["info", "org/lora", "--headers-only"], capsys)
    assert code == 0, err
    assert "adapter:      PEFT LoRA r 8, alpha 16 on base org/base: 28 projections adapted" in out


def test_an_adapter_by_repo_id_resolves_its_weights_whole(hub_env):
    server = hub_env["server"]
    adapter = _serve_adapter(server, "org/lora")
    server.reset()
    resolved = hub.resolve("org/lora", "post")
    assert shard_bytes(server, "org/lora/") == os.path.getsize(os.path.join(adapter, "adapter_model.safetensors"))
    assert sorted(f for f in os.listdir(resolved.folder) if not f.startswith(".")) == [
        "adapter_config.json", "adapter_model.safetensors"]
    # Given a base, the adapter applies to it (a folder here); Python takes the adapter's ResolvedModel too.
    remote = postsvd.compare(hub_env["base"], resolved, layers=1, kinds="q,down", progress=False)
    local = postsvd.compare(hub_env["base"], adapter, layers=1, kinds="q,down", progress=False)
    pd.testing.assert_frame_equal(remote.table, local.table, check_exact=True)
    assert remote.post_name == "org/lora" and remote.adapter["adapted"] == local.adapter["adapted"]
    w = postsvd.read_matrix(postsvd.open_checkpoint("org/lora", hub_env["base"]), 1, "q")
    assert w.tobytes() == postsvd.read_matrix(postsvd.open_checkpoint(adapter, hub_env["base"]), 1, "q").tobytes()


def test_a_bad_adapter_by_repo_id_is_named_as_written(hub_env):
    _serve_adapter(hub_env["server"], "org/lora-r0", r=0)
    with pytest.raises(postsvd.InvalidArgumentError) as info:
        postsvd.compare(None, "org/lora-r0", layers=1, progress=False)
    message = str(info.value)
    assert message.startswith("post 'org/lora-r0': ") and '"r" is 0' in message and "\n" not in message
    hub_env["server"].add_repo("org/lora-pickle", {"adapter_config.json": b"{}", "adapter_model.bin": b"\0" * 8})
    with pytest.raises(HubError, match="a PEFT adapter repo without adapter_model.safetensors .adapter_model.bin"):
        postsvd.compare(None, "org/lora-pickle", progress=False)


def test_construct_from_an_adapter_by_repo_id(hub_env, tmp_path, capsys):
    """construct with a Hub adapter as post writes the base's tensors (every one fetched) with the adapter merged:
    the folder construct writes from the local base and adapter."""
    server = hub_env["server"]
    adapter = _serve_adapter(server, "org/lora")
    prepared("org/base@v1", "org/lora")
    server.reset()
    code, _, err = run_cli(["construct", "11", "--base", "org/base@v1", "--post", "org/lora", "--out",
                            tmp_path / "hub", "--layers", "1", "--kinds", "q,k", "--no-progress"], capsys)
    assert code == 0, err
    base_data = sum(len(data) - end for data, end in ((hub_env["files"][f], e)
                                                       for f, e in header_ends(hub_env["files"]).items()))
    assert shard_bytes(server, "org/base/") == base_data  # every tensor of the base (the headers came before)
    postsvd.construct(11, hub_env["base"], adapter, tmp_path / "local", layers="1", kinds="q,k", progress=False)
    assert_same_construction(tmp_path / "hub", tmp_path / "local")
    record = json.loads((tmp_path / "hub" / "postsvd_construction.json").read_text())
    assert record["sources"]["post"]["model"]["repo_id"] == "org/lora"
    assert list(record["sources"]["post"]["safetensors_sha256"]) == ["adapter_model.safetensors"]


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
@pytest.mark.parametrize("model_type", ["gemma3", "deepseek_v3", "gpt2", "qwen2_moe"])
def test_lineage_by_repo_id_fetches_what_each_architecture_reads(hub_env, model_type, monkeypatch):
    """Lineage of other architectures by Hub name: the fetch covers every tensor the test reads (the reader
    refuses the others): a multimodal folder's text tower with tied embeddings, sandwich and query/key
    norms; MLA latents and their norms, routers, shared and routed experts; gpt2's LayerNorm under
    transformer.h. The answer is the local one, bit for bit."""
    import torch

    monkeypatch.setattr(hub, "MERGE_GAP", -1)  # each tensor's own range: no neighbour comes along

    from helpers import MODEL_FIXTURES

    server, root = hub_env["server"], os.path.dirname(hub_env["base"])
    folders = {}
    for side in ("a", "b"):
        model = MODEL_FIXTURES[model_type](model_type, seed=0)
        if side == "b":  # a fine-tune stand-in
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.05 * parameter.std() * torch.randn(parameter.shape, generator=generator))
        folders[side] = os.path.join(root, f"lineage-{model_type}-{side}")
        model.save_pretrained(folders[side])
        files = {}
        for name in os.listdir(folders[side]):
            with open(os.path.join(folders[side], name), "rb") as f:
                files[name] = f.read()
        server.add_repo(f"org/lineage-{model_type}-{side}", files)
    remote = postsvd.lineage(f"org/lineage-{model_type}-a", f"org/lineage-{model_type}-b", layers="1",
                             paper_nf=False, num_threads=1)
    local = postsvd.lineage(folders["a"], folders["b"], layers="1", paper_nf=False, num_threads=1)
    assert remote.verdict == local.verdict and remote.p_value == local.p_value and not remote.reasons
    pd.testing.assert_frame_equal(remote.table, local.table, check_exact=True)
    assert remote.to_dict()["a_model"]["repo_id"] == f"org/lineage-{model_type}-a"
