"""The postsvd command line: outputs, exit codes, messages and help."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from postsvd import cli

BUILT_IN = [name for name, _ in cli.SUBCOMMANDS]


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_compare_writes_tables_plots_and_summary(related_pair, tmp_path, capsys):
    out = tmp_path / "results"
    code, stdout, stderr = run(["compare", related_pair.base, related_pair.post, "--out", out, "--no-progress",
                                "--matrices", "1:down,0:q", "--leading-k", "10"], capsys)
    assert code == 0, stderr
    for name in ("table.csv", "table.json", "kinds.csv", "kinds.json", "spectra.npz", "summary.txt", "run.json",
                 "svsm.png", "scaling_bands.png", "nf.png", "intruders.png", "matrices_layer1_down.png",
                 "matrices_layer0_q.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 14 and abs(table["scaling_mean"] - 0.9).max() < 1e-4
    rows = json.loads((out / "table.json").read_text())
    assert len(rows) == 14 and rows[0]["kind"] == "q"
    assert (out / "svsm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "consistent rotation" in stdout and "wrote 13 files" in stdout
    assert json.loads((out / "run.json").read_text())["layers"] == [0, 1]


def test_compare_several_posts_and_selection(related_pair, unrelated_pair, tmp_path, capsys):
    out = tmp_path / "multi"
    code, stdout, stderr = run(["compare", related_pair.base, related_pair.post, unrelated_pair.post, "--out", out,
                                "--no-progress", "--no-plots", "--layers", "1", "--kinds", "q,up",
                                "--dtype", "float64"], capsys)
    assert code == 0, stderr
    assert sorted(os.listdir(out)) == ["post", "post-2"]
    for sub in ("post", "post-2"):
        table = pd.read_csv(out / sub / "table.csv")
        assert list(zip(table["layer"], table["kind"])) == [(1, "q"), (1, "up")]
        assert not (out / sub / "svsm.png").exists()
    assert stdout.count("postsvd:") == 2


@pytest.mark.parametrize("argv_tail, message", [
    (["--kinds", "qq"], "unknown kind 'qq'"),
    (["--layers", "9"], "out of range"),
    (["--layers", "x"], "layers"),
    (["--device", "tpu"], "device"),
])
def test_compare_bad_arguments_exit_1(related_pair, tmp_path, capsys, argv_tail, message):
    code, _, stderr = run(["compare", related_pair.base, related_pair.post, "--out", tmp_path / "o",
                           "--no-progress"] + argv_tail, capsys)
    assert code == 1
    assert message in stderr and "Traceback" not in stderr
    assert stderr.startswith("postsvd: error:") and stderr.count("\n") == 1


def test_bad_folder_exit_1_one_line(tmp_path, related_pair, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    (broken / "model.safetensors").write_bytes(b"\x05\x00")
    code, _, stderr = run(["compare", broken, related_pair.post, "--out", tmp_path / "o", "--no-progress"], capsys)
    assert code == 1 and "Traceback" not in stderr
    assert stderr.count("\n") == 1 and "model.safetensors" in stderr
    code, _, stderr = run(["info", tmp_path / "missing"], capsys)
    assert code == 1 and "does not exist" in stderr


def test_usage_errors_exit_2(capsys):
    for argv in (["compare", "a"], ["compare", "a", "b"], ["nonsense"], []):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_info(related_pair, capsys):
    code, stdout, _ = run(["info", related_pair.base], capsys)
    assert code == 0
    assert "llama" in stdout and "layers:       2" in stdout and "F32" in stdout and "down" in stdout
    code, stdout, _ = run(["info", related_pair.base, "--json"], capsys)
    info = json.loads(stdout)
    assert info["num_layers"] == 2 and info["kinds"]["down"]["in_features"] == 96


def test_make_example_then_compare(tmp_path, capsys):
    code, stdout, _ = run(["make-example", tmp_path / "ex", "--layers", "2", "--hidden", "32", "--intermediate",
                           "64", "--heads", "4", "--kv-heads", "2", "--dtype", "float32", "--alpha", "1.2"], capsys)
    assert code == 0 and "postsvd compare" in stdout
    code, stdout, _ = run(["compare", tmp_path / "ex" / "base", tmp_path / "ex" / "post", "--out", tmp_path / "r",
                           "--no-progress", "--no-plots"], capsys)
    assert code == 0 and "x1.2" in stdout


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text
    for name in BUILT_IN:
        assert name in text
        with pytest.raises(SystemExit) as info:
            cli.main([name, "--help"])
        assert info.value.code == 0
        sub = capsys.readouterr().out
        assert "examples:" in sub and f"postsvd {name}" in sub


def test_entry_point_runs_as_module():
    done = subprocess.run([sys.executable, "-m", "postsvd", "compare", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--out" in done.stdout


@pytest.mark.parametrize("command, positional", [
    ("compare", ["B", "P"]),
    ("report", ["B", "P"]),
    ("construct", ["11", "--base", "B", "--post", "P"]),
])
def test_shared_options_mean_the_same_in_every_command(command, positional):
    args = cli.build_parser().parse_args([command, *positional, "--out", "o", "--device", "cuda:1", "--dtype",
                                          "float64", "--layers", "0,2-3", "--kinds", "attn", "--threads", "3",
                                          "--cache", "factors", "--no-progress"])
    assert (args.device, args.dtype, args.layers, args.kinds, args.threads, args.cache, args.no_progress) == (
        "cuda:1", "float64", "0,2-3", "attn", 3, "factors", True)
    defaults = cli.build_parser().parse_args([command, *positional, "--out", "o"])
    assert (defaults.device, defaults.dtype, defaults.layers, defaults.kinds, defaults.threads, defaults.cache,
            defaults.no_progress) == ("cpu", "float32", None, None, None, None, False)


def test_construct_group_takes_both_spellings_and_excludes_kinds(capsys):
    base = ["construct", "10", "--base", "B", "--post", "P", "--out", "o"]
    parser = cli.build_parser()
    assert parser.parse_args(base + ["--group", "attn"]).group == "attention"
    assert parser.parse_args(base + ["--group", "Attention"]).group == "attention"
    for tail in (["--group", "ffn"], ["--kinds", "q", "--group", "mlp"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(base + tail)
        assert info.value.code == 2
    assert "not allowed with argument --kinds" in capsys.readouterr().err


def test_help_spells_the_attention_group_one_way(capsys):
    for name in BUILT_IN:
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        assert "attn" not in capsys.readouterr().out


def test_the_library_never_imports_the_cli():
    code = ("import sys, postsvd, postsvd.constructions, postsvd.reports, postsvd.plots, postsvd.compare; "
            "print('postsvd.cli' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
