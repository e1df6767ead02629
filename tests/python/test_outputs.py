"""Result folders (construct, Comparison.save, report): built beside the target and moved in when
complete, normal permissions, stale temporary folders of killed runs removed, and a kill at any
moment leaves the old or the new folder at the output path."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import postsvd
from postsvd import _outputs
from postsvd.synthetic import make_pair

SIZES = dict(model_type="llama", layers=2, hidden=32, intermediate=48, heads=4, kv_heads=2, vocab=64)
PYTHONPATH = os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(postsvd.__file__)),
                                         os.environ.get("PYTHONPATH")] if p)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    return make_pair(root / "base", root / "post", alpha=0.9, dtype="float32", seed=5, **SIZES)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(folder):
    """Permission bits of every folder and file under `folder` (the folder itself included)."""
    found = {"": os.stat(folder).st_mode & 0o777}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = os.stat(path).st_mode & 0o777
    return found


def hidden_entries(parent):
    return sorted(e for e in os.listdir(parent) if e.startswith("."))


# ---------------------------------------------------------------- permissions

def test_constructed_folder_has_normal_permissions(pair, tmp_path, umask_022):
    out = tmp_path / "model"
    postsvd.construct(10, pair.base, pair.post, out, progress=False)
    found = modes(out)
    assert found[""] == 0o755, oct(found[""])  # not mkdtemp's 0700
    assert {oct(m) for name, m in found.items() if name} == {oct(0o644)}, found


def test_permissions_follow_the_umask(pair, tmp_path):
    """Under umask 077 everything is private, the files copied from the post model too (as cp makes them)."""
    old = os.umask(0o077)
    try:
        postsvd.construct(10, pair.base, pair.post, tmp_path / "private", progress=False)
        postsvd.compare(pair.base, pair.post, progress=False).save(tmp_path / "results", plots=False)
    finally:
        os.umask(old)
    for folder in (tmp_path / "private", tmp_path / "results"):
        found = modes(folder)
        assert found[""] == 0o700 and all(m & 0o077 == 0 for m in found.values()), found


def test_saved_results_and_report_have_normal_permissions(pair, tmp_path, umask_022):
    comparison = postsvd.compare(pair.base, pair.post, progress=False, layers=0, kinds="q")
    comparison.save(tmp_path / "results", plots=False)
    postsvd.write_report(comparison, tmp_path / "report")
    for folder in (tmp_path / "results", tmp_path / "report"):
        found = modes(folder)
        assert found[""] == 0o755 and {m for n, m in found.items() if n} == {0o644}, found


# ---------------------------------------------------------------- publishing

def write(folder, files):
    os.makedirs(folder, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


def read(folder):
    return {name: open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_publish_replaces_an_owned_folder_and_merges_into_a_foreign_one(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(_outputs, "exchange", lambda a, b: False)
    owned = lambda name: name.startswith("r")  # noqa: E731
    target = tmp_path / "out"
    for content in ("one", "two"):  # missing target, then a previous result: replaced as a whole
        with _outputs.atomic_folder(str(target), owned=owned) as temp:
            write(temp, {"r1": content, **({"r2": content} if content == "one" else {})})
        assert read(target) == {"r1": content, **({"r2": content} if content == "one" else {})}
    write(target, {"notes.txt": "mine"})  # a folder with other files: they stay, ours are replaced
    with _outputs.atomic_folder(str(target), owned=owned) as temp:
        write(temp, {"r1": "three"})
    assert read(target) == {"notes.txt": "mine", "r1": "three"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with _outputs.atomic_folder(str(empty), owned=owned) as temp:
        write(temp, {"r1": "x"})
    assert read(empty) == {"r1": "x"}
    assert hidden_entries(tmp_path) == []


def read_only(monkeypatch, folder):
    """`folder` reads as not writable to postsvd (tests run as any user, root included)."""
    real_access = os.access
    monkeypatch.setattr(_outputs.os, "access",
                        lambda path, mode: False if os.fspath(path) == str(folder) else real_access(path, mode))


def test_an_existing_folder_in_a_read_only_parent_gets_the_files(pair, tmp_path, monkeypatch):
    """`--out .` where the folder above is not writable: the temporary folder goes inside the target."""
    target = tmp_path / "results"
    write(target, {"notes.txt": "mine"})
    read_only(monkeypatch, tmp_path)
    assert _outputs._build_inside(str(target))
    postsvd.compare(pair.base, pair.post, progress=False, layers=0, kinds="q").save(target, plots=False)
    assert "notes.txt" in os.listdir(target) and "table.csv" in os.listdir(target)
    assert hidden_entries(target) == [] and hidden_entries(tmp_path) == []


def test_the_exchange_is_atomic_where_the_system_has_it(tmp_path):
    write(tmp_path / "a", {"f": "a"})
    write(tmp_path / "b", {"f": "b"})
    if not _outputs.exchange(str(tmp_path / "a"), str(tmp_path / "b")):
        pytest.skip("this system or file system has no renameat2 RENAME_EXCHANGE")
    assert read(tmp_path / "a") == {"f": "b"} and read(tmp_path / "b") == {"f": "a"}


def test_a_failure_while_moving_in_keeps_the_old_folder(tmp_path, monkeypatch):
    target = tmp_path / "out"
    write(target, {"r": "old"})
    monkeypatch.setattr(_outputs, "exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in os.fspath(src):  # the new folder, after the old one went aside
            raise OSError("disk gone (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(_outputs.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        with _outputs.atomic_folder(str(target)) as temp:
            write(temp, {"r": "new"})
    monkeypatch.setattr(_outputs.os, "rename", real_rename)
    assert read(target) == {"r": "old"} and hidden_entries(tmp_path) == []


def test_an_error_while_writing_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with _outputs.atomic_folder(str(tmp_path / "out")) as temp:
            write(temp, {"half": "written"})
            raise RuntimeError("failed in the middle")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- stale temporary folders

def dead_pid():
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_folders_are_removed_and_live_ones_kept(tmp_path):
    host = _outputs._host()
    stale = tmp_path / f".out.tmp-{dead_pid()}-{host}-abc123_x"
    live = tmp_path / f".out.tmp-{os.getppid()}-{host}-abc123_y"  # our parent (pytest's runner) is alive
    elsewhere = tmp_path / f".out.tmp-{dead_pid()}-another-machine-abc123_z"
    unrelated = tmp_path / ".other.tmp-1-x-abc"
    for folder in (stale, live, elsewhere, unrelated):
        write(folder, {"weights": "partial"})
    with _outputs.atomic_folder(str(tmp_path / "out")) as temp:
        write(temp, {"r": "new"})
    assert not stale.exists()
    assert live.exists() and elsewhere.exists() and unrelated.exists()
    assert read(tmp_path / "out") == {"r": "new"}


def test_an_old_folder_left_aside_comes_back(tmp_path):
    old = tmp_path / f".out.old-{dead_pid()}-{_outputs._host()}-abc123_x"
    write(old, {"r": "old"})
    _outputs.remove_stale(str(tmp_path / "out"))
    assert read(tmp_path / "out") == {"r": "old"} and hidden_entries(tmp_path) == []


# ---------------------------------------------------------------- killed runs

KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import postsvd
    from postsvd import _outputs, constructions

    moment, number, base, post, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    kill = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    if moment == "copying":  # the temporary folder exists, nothing in it yet
        constructions._copy_other_files = kill
    elif moment == "publishing":  # the new folder is complete beside the old one
        _outputs.publish = kill
    elif moment == "after-exchange":  # the new folder is in place, the old one not yet deleted
        _outputs.shutil.rmtree = kill
    elif moment == "between-renames":  # no renameat2: the old folder renamed aside, the new one not yet in
        _outputs.exchange = lambda a, b: False
        real_rename = os.rename
        def rename(src, dst):
            if ".tmp-" in src:
                kill()
            return real_rename(src, dst)
        _outputs.os.rename = rename
    postsvd.construct(number, base, post, out, force=True, progress=False)
""")


def construction_number(out):
    with open(os.path.join(out, postsvd.constructions.RECORD_NAME)) as f:
        return json.load(f)["construction"]


@pytest.mark.parametrize("moment", ["copying", "publishing", "after-exchange", "between-renames"])
def test_a_killed_construct_leaves_the_old_or_the_new_folder(pair, tmp_path, moment):
    out = tmp_path / "model"
    postsvd.construct(10, pair.base, pair.post, out, progress=False)
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, moment, "15", pair.base, pair.post, str(out)],
                          env={**os.environ, "PYTHONPATH": PYTHONPATH}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    if moment == "between-renames":  # the one moment without renameat2: the old folder waits beside it
        assert not out.exists() and any(".model.old-" in e for e in hidden_entries(tmp_path))
        _outputs.remove_stale(str(out))
    assert construction_number(out) == (15 if moment == "after-exchange" else 10)
    assert "model.safetensors" in os.listdir(out)
    # The next run into the same place removes what the killed one left behind.
    postsvd.construct(11, pair.base, pair.post, out, force=True, progress=False)
    assert construction_number(out) == 11
    assert sorted(os.listdir(tmp_path)) == ["model"]


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_a_comparison_killed_at_any_time_leaves_old_or_new_results(pair, tmp_path):
    """Real kills at several delays while `save` replaces a previous result folder again and again."""
    import time

    out = tmp_path / "results"
    postsvd.compare(pair.base, pair.post, progress=False, layers=0).save(out, plots=False)
    script = ("import sys, postsvd\n"
              "r = postsvd.compare(sys.argv[1], sys.argv[2], progress=False, layers=1)\n"
              "print('ready', flush=True)\n"
              "while True: r.save(sys.argv[3])\n")
    for delay in (0.0, 0.3, 0.8):
        child = subprocess.Popen([sys.executable, "-c", script, pair.base, pair.post, str(out)],
                                 env={**os.environ, "PYTHONPATH": PYTHONPATH}, stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        with open(out / "run.json") as f:
            layers = json.load(f)["layers"]
        assert layers in ([0], [1])
        files = set(os.listdir(out))
        assert {"table.csv", "kinds.csv", "spectra.npz", "summary.txt", "run.json"} <= files
        assert ("svsm.png" in files) == (layers == [1])  # the new results have plots, the old ones none
    postsvd.compare(pair.base, pair.post, progress=False, layers=0).save(out, plots=False)
    assert sorted(os.listdir(tmp_path)) == ["results"]


def test_the_umask_is_read_without_changing_it(monkeypatch):
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(_outputs.os, "umask", lambda mask: pytest.fail("os.umask called"))
        assert _outputs.folder_mode() == 0o750
    finally:
        monkeypatch.undo()
        os.umask(old)


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path, umask_022):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with _outputs.atomic_file(str(target)) as temp:
            with open(temp, "w") as f:
                f.write("half")
            raise RuntimeError("failed while writing")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["table.csv"]
    with _outputs.atomic_file(str(target)) as temp:
        with open(temp, "w") as f:
            f.write("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["table.csv"]
    assert os.stat(target).st_mode & 0o777 == 0o644


def test_saving_into_the_current_folder_keeps_it(pair, tmp_path, monkeypatch):
    """`--out .` holding an earlier result: the files are replaced, the folder itself (our cwd) stays."""
    target = tmp_path / "results"
    comparison = postsvd.compare(pair.base, pair.post, progress=False, layers=0, kinds="q")
    comparison.save(target, plots=False)
    monkeypatch.chdir(target)
    inode = os.stat(".").st_ino
    comparison.save(".", plots=False)
    assert os.stat(".").st_ino == inode == os.stat(target).st_ino
    assert "table.csv" in os.listdir(".") and hidden_entries(".") == [] and hidden_entries(tmp_path) == []


def test_construct_refuses_early_a_folder_it_cannot_swap(pair, tmp_path, monkeypatch):
    out = tmp_path / "model"
    write(out, {"keep.txt": "old"})
    read_only(monkeypatch, tmp_path)
    monkeypatch.setattr(postsvd._core, "construct_checkpoint", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(postsvd.InvalidArgumentError, match="cannot be replaced in one step: its parent folder"):
        postsvd.construct(10, pair.base, pair.post, out, force=True, progress=False)
    assert read(out) == {"keep.txt": "old"} and hidden_entries(tmp_path) == []
