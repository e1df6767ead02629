"""Every argument of compare, report and construct (API and CLI) is checked before anything is
computed or written: a bad one fails fast, no output folder appears."""
import os
import sys

import pytest

import postsvd
from postsvd import _core, cli
from postsvd.synthetic import make_pair

SIZES = dict(model_type="llama", layers=2, hidden=32, intermediate=48, heads=4, kv_heads=2, vocab=64)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    return make_pair(root / "base", root / "post", alpha=0.9, dtype="float32", seed=6, **SIZES)


@pytest.fixture
def no_computing(monkeypatch):
    """Any decomposition fails the test: the arguments must be refused before one starts."""
    def computing(*args, **kwargs):
        raise AssertionError("computed before the arguments were checked")

    monkeypatch.setattr(sys.modules["postsvd.compare"], "compare", computing)  # the module, not the function
    monkeypatch.setattr(_core, "construct_checkpoint", computing)
    monkeypatch.setattr(_core, "default_alpha", computing)


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("tail, message", [
    (["--matrices", "5:q"], "layer 5 is out of range"),
    (["--matrices", "1:up", "--kinds", "attn"], "kind 'up' was not compared"),
    (["--matrices", "0:q", "--layers", "1"], "layer 0 was not compared"),
    (["--matrices", "0:qq"], "unknown kind 'qq'"),
    (["--matrices", "q0"], "LAYER:KIND"),
    (["--leading-k", "0"], "leading_k"),
    (["--threads", "0"], "num_threads"),
    (["--kinds", "x"], "unknown kind"),
])
def test_compare_cli_refuses_bad_arguments_before_computing(pair, tmp_path, capsys, no_computing, tail, message):
    code, stdout, stderr = run(["compare", pair.base, pair.post, "--out", tmp_path / "out", "--no-progress"] + tail,
                               capsys)
    assert code == 1 and message in stderr and stderr.count("\n") == 1, stderr
    assert os.listdir(tmp_path) == []


def test_compare_cli_checks_every_post_and_the_output_first(pair, tmp_path, capsys, no_computing):
    code, _, stderr = run(["compare", pair.base, pair.post, tmp_path / "missing", "--out", tmp_path / "out",
                           "--no-progress"], capsys)
    assert code == 1 and "does not exist" in stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, message in ((a_file, "existing file"), (a_file / "below", "is a file, not a folder")):
        code, _, stderr = run(["compare", pair.base, pair.post, "--out", out, "--no-progress"], capsys)
        assert code == 1 and message in stderr, stderr
    other = make_pair(tmp_path / "b2", tmp_path / "other", dtype="float32", seed=7,
                      **{**SIZES, "hidden": 48, "heads": 6, "kv_heads": 3})
    code, _, stderr = run(["compare", pair.base, pair.post, other.post, "--out", tmp_path / "out", "--no-progress"],
                          capsys)
    assert code == 1 and "shape" in stderr.lower(), stderr
    assert sorted(os.listdir(tmp_path)) == ["b2", "file", "other"]


def test_save_checks_its_arguments_before_writing(pair, tmp_path):
    comparison = postsvd.compare(pair.base, pair.post, progress=False, kinds="q,k")
    for kwargs, message in ((dict(matrices_for=[(0, "down")]), "kind 'down' was not compared"),
                            (dict(matrices_for=[(7, "q")]), "out of range"),
                            (dict(matrices_for=[("0", "q")]), "integer layer"),
                            (dict(matrices_for=[0, "q"]), "pairs"),
                            (dict(leading_k=0), "leading_k"),
                            (dict(leading_k=2.5), "leading_k")):
        with pytest.raises(postsvd.InvalidArgumentError, match=message):
            comparison.save(tmp_path / "out", **kwargs)
        assert os.listdir(tmp_path) == []
    written = comparison.save(tmp_path / "out", matrices_for=[(-1, "k")], leading_k=None)
    assert os.path.basename(written[-1]) == "matrices_layer1_k.png"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_report_checks_its_arguments_before_computing(pair, tmp_path, capsys, no_computing):
    for kwargs, message in ((dict(matrices=(3, "q")), "out of range"),
                            (dict(matrices=(0, "up"), kinds="attn"), "kind 'up' was not compared"),
                            (dict(leading_k=0), "leading_k"),
                            (dict(layers="0-5"), "out of range")):
        with pytest.raises(postsvd.InvalidArgumentError, match=message):
            postsvd.report(pair.base, pair.post, tmp_path / "report", progress=False, **kwargs)
    code, _, stderr = run(["report", pair.base, pair.post, "--out", tmp_path / "report", "--no-progress",
                           "--matrices", "1:up", "--kinds", "q"], capsys)
    assert code == 1 and "kind 'up' was not compared" in stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("table, message", [
    ("missing/table.csv", "does not exist"),
    (".", "is a folder"),
])
def test_construct_checks_the_table_path_before_building(pair, tmp_path, capsys, monkeypatch, no_computing, table,
                                                         message):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run(["construct", "9", "--base", pair.base, "--post", pair.post, "--out", tmp_path / "model",
                           "--no-progress", "--table", table], capsys)
    assert code == 1 and message in stderr and "--table" in stderr, stderr
    assert os.listdir(tmp_path) == []


def test_construct_writes_the_table_after_the_model(pair, tmp_path, capsys):
    code, _, stderr = run(["construct", "10", "--base", pair.base, "--post", pair.post, "--out", tmp_path / "model",
                           "--no-progress", "--table", tmp_path / "table.csv", "--kinds", "q"], capsys)
    assert code == 0, stderr
    assert sorted(os.listdir(tmp_path)) == ["model", "table.csv"]
    assert len((tmp_path / "table.csv").read_text().splitlines()) == 1 + SIZES["layers"]


def test_links_that_lead_nowhere_are_named_as_such(pair, tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    dangling = tmp_path / "dangling"
    os.symlink(tmp_path / "gone", dangling)
    for path, message in ((loop, "is a symbolic link loop"), (dangling, "is a dangling symbolic link to")):
        with pytest.raises(postsvd.BadCheckpointError, match=message):
            postsvd.compare(path, pair.post, progress=False)
        with pytest.raises(postsvd.InvalidArgumentError, match=message):
            postsvd.report(pair.base, pair.post, path, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["dangling", "loop"]


def test_construct_checks_its_comparison_before_building(pair, tmp_path, no_computing):
    other = make_pair(tmp_path / "b2", tmp_path / "p2", dtype="float32", seed=8, **SIZES)
    comparison = postsvd.compare(other.base, other.post, progress=False, layers=0, kinds="q")
    for given, message in ((comparison, "it compared base"), ("table.csv", "expected a postsvd.Comparison")):
        with pytest.raises(postsvd.InvalidArgumentError, match=message):
            postsvd.construct(9, pair.base, pair.post, tmp_path / "model", comparison=given, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["b2", "p2"]
