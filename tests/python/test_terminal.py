"""What the CLI prints cannot spoof the terminal (names from files are escaped), and a closed
pipe (`postsvd info X | head -1`) ends quietly."""
import json
import os
import struct
import subprocess
import sys


import postsvd
from postsvd import cli
from postsvd._terminal import printable
from postsvd.synthetic import make_pair

SIZES = dict(model_type="llama", layers=2, hidden=32, intermediate=48, heads=4, kv_heads=2, vocab=64)
SPOOF = "\x1b[2J\x1b[H\npostsvd: all good\r\x9b31m\u202eevil\u2028"
PYTHONPATH = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(postsvd.__file__)),
                                         os.environ.get("PYTHONPATH")] if p)


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_safe(text):
    """No control, format or separator character other than the line ends between lines."""
    for line in text.splitlines():
        assert printable(line) == line, repr(line)


def test_printable_escapes_controls_and_keeps_text():
    assert printable("model.layers.0.self_attn.q_proj.weight") == "model.layers.0.self_attn.q_proj.weight"
    assert printable("Größe µ 模型") == "Größe µ 模型"
    assert printable("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert printable("\x1b[2J\x07\x00\x7f\x9b") == "\\x1b[2J\\x07\\x00\\x7f\\x9b"
    assert printable("\u202eevil\u2066\u200b\u2028") == "\\u202eevil\\u2066\\u200b\\u2028"
    assert printable("name\udcff") == "name\\udcff"  # an undecodable byte of a file name
    assert printable(OSError(2, "No such file", "x\ny")).count("\n") == 0
    assert_safe(printable(SPOOF)) and "\n" not in printable(SPOOF)


def write_safetensors(path, header, data):
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


def test_tensor_names_in_errors_are_escaped(tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    # The tensor's data runs past the end of the file: the error names the tensor.
    write_safetensors(folder / "model.safetensors",
                      {"model.layers.0.self_attn.q_proj.weight" + SPOOF: {
                          "dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 8)
    for argv in (["info", folder], ["compare", folder, folder, "--out", tmp_path / "o", "--no-progress"]):
        code, stdout, stderr = run(argv, capsys)
        assert code == 1 and stdout == ""
        assert stderr.startswith("postsvd: error:") and stderr.count("\n") == 1, stderr
        assert "\x1b" not in stderr and "\x9b" not in stderr and "\u202e" not in stderr
        assert "q_proj.weight\\x1b[2J\\x1b[H\\npostsvd: all good\\r\\x9b31m\\u202eevil\\u2028" in stderr
    assert not (tmp_path / "o").exists()


def test_model_type_in_errors_is_escaped(tmp_path, capsys):
    folder = tmp_path / "evil_type"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama" + SPOOF, "num_hidden_layers": 1}))
    write_safetensors(folder / "model.safetensors", {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                      b"\0" * 4)
    code, stdout, stderr = run(["info", folder], capsys)  # info lists the problem, one line, and exits 1
    problems = [line for line in stdout.splitlines() if line.startswith("problem:")]
    assert code == 1 and len(problems) == 1 and "\x1b" not in stdout + stderr, stdout
    assert "llama\\x1b[2J" in problems[0] and "\\npostsvd: all good" in problems[0]


def test_folder_names_in_summaries_are_escaped(tmp_path, capsys):
    pair = make_pair(tmp_path / ("base" + SPOOF), tmp_path / ("post" + SPOOF), alpha=0.9, dtype="float32", seed=4,
                     **SIZES)
    out = tmp_path / "out"
    code, stdout, stderr = run(["compare", pair.base, pair.post, "--out", out, "--no-plots", "--no-progress"],
                               capsys)
    assert code == 0, stderr
    assert_safe(stdout)
    assert "post\\x1b[2J\\x1b[H\\npostsvd: all good" in stdout
    assert not any(line.startswith("postsvd: all good") for line in stdout.splitlines())
    code, stdout, _ = run(["info", pair.base], capsys)
    assert code == 0 and stdout.count("\n") == 9 + 7 - 1  # seven header lines, one per kind, the checks
    assert_safe(stdout)
    code, stdout, _ = run(["info", pair.base, "--json"], capsys)
    assert_safe(stdout) and json.loads(stdout)["folder"].endswith(SPOOF)
    comparison = postsvd.compare(pair.base, pair.post, progress=False, layers=0)
    assert "\x1b" not in comparison.summary() and "\x1b" not in repr(comparison)
    result = postsvd.construct(10, pair.base, pair.post, tmp_path / ("model" + SPOOF), progress=False)
    assert_safe(result.summary()) and "\x1b" not in repr(result)


def test_a_closed_pipe_ends_quietly(tmp_path):
    pair = make_pair(tmp_path / "base", tmp_path / "post", dtype="float32", seed=4, **SIZES)
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before postsvd writes anything: every write fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "postsvd", "info", pair.base], stdout=write_end,
                              stderr=subprocess.PIPE, env=env, timeout=300)
    finally:
        os.close(write_end)
    assert done.stderr == b"" and done.returncode == cli.CLOSED_PIPE_EXIT == 141
    # As a user types it: the first line comes through, nothing else is said.
    done = subprocess.run(f"{sys.executable} -m postsvd info {pair.base} | head -1", shell=True,
                          capture_output=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith(b"folder:") and done.stdout.count(b"\n") == 1
    assert done.stderr == b""


def test_warnings_are_one_escaped_line(tmp_path):
    pair = make_pair(tmp_path / "base", tmp_path / "post", dtype="float32", seed=4, **SIZES)
    script = ("import collections, shutil, sys\n"
              "from postsvd import cli\n"
              "usage = collections.namedtuple('usage', 'total used free')\n"
              "shutil.disk_usage = lambda path: usage(10**6, 10**6 - 1000, 1000)  # a nearly full disk\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, "compare", pair.base, pair.post, "--out",
                           str(tmp_path / "out"), "--no-plots", "--no-progress", "--layers", "0", "--kinds", "q",
                           "--cache", str(tmp_path / ("cache" + SPOOF))],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": PYTHONPATH}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("postsvd: warning: cache: filling") and done.stderr.count("\n") == 1, done.stderr
    assert "cache\\x1b[2J\\x1b[H\\npostsvd: all good" in done.stderr and "\x1b" not in done.stderr
