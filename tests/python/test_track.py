"""postsvd.track: one base against the checkpoints of a (synthetic) run from the bundled base to instruct."""
import os

import numpy as np
import pytest

import postsvd
from postsvd.tracking import step_of
from track_helpers import FAMILY, interpolated_checkpoints

BASE = os.path.join(FAMILY, "base")
STEPS = [200, 400, 600, 800, 1000]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    folders = interpolated_checkpoints(root, STEPS, STEPS[-1])
    out = root / "out"
    trajectory = postsvd.track(BASE, folders[::-1], out=out, progress=False)  # any order: sorted by step
    return trajectory, out, folders


def test_nf_grows_with_the_step_along_the_path_to_instruct(run):
    trajectory, _, _ = run
    assert trajectory.steps == STEPS
    kinds = trajectory.kind_table()
    assert trajectory.kinds == ["q", "k", "v", "o", "gate", "up", "down"]
    for kind in trajectory.kinds:
        nf = kinds.loc[kinds["kind"] == kind, "nf_mean"].to_numpy()
        assert np.all(np.diff(nf) > 0), (kind, nf)
        assert nf[0] > 0
    assert trajectory.nf_by_layer("o").shape == (4, len(STEPS))
    assert np.all(np.diff(trajectory.nf_by_layer("q"), axis=1) > 0)  # per layer too
    # the last checkpoint is instruct itself
    direct = postsvd.compare(BASE, os.path.join(FAMILY, "instruct"), progress=False)
    np.testing.assert_allclose(trajectory.comparisons[-1].table["nf"], direct.table["nf"], rtol=1e-4, atol=1e-6)


def test_the_base_is_decomposed_once(run):
    trajectory, _, _ = run
    pairs = len(trajectory.comparisons[0].records)
    assert trajectory.comparisons[0].decompositions == {"computed": 2 * pairs, "loaded": 0}
    for comparison in trajectory.comparisons[1:]:
        assert comparison.decompositions == {"computed": pairs, "loaded": pairs}


def test_the_output_folder(run):
    trajectory, out, _ = run
    names = sorted(os.listdir(out))
    assert names == sorted([f"step-{s}" for s in STEPS] + [
        "trajectory.csv", "trajectory.json", "table.csv", "run.json", "track.html", "nf_trajectory.png",
        "scaling_trajectory.png", "nf_heatmap.png"])
    assert "table.csv" in os.listdir(out / "step-600") and "kinds.csv" in os.listdir(out / "step-600")
    page = (out / "track.html").read_text()
    assert "<td>800</td>" in page
    if postsvd.interactive.available():  # the default: interactive figures where plotly is installed
        assert page.count('<div class="iplot"') == 2 and page.count("<img") == 0
    static = trajectory.render_html(interactive=False)
    assert static.count('<img class="plot" alt=') == 3 and "<script" not in static
    import pandas as pd

    table = pd.read_csv(out / "table.csv")
    assert list(table.columns[:3]) == ["step", "layer", "kind"] and len(table) == 28 * len(STEPS)
    assert not [n for n in os.listdir(out.parent) if n.startswith(".out.")]  # no temporary folder left


def test_steps_from_names_or_given(run, tmp_path):
    assert step_of("runs/checkpoint-1200") == 1200 and step_of("step_300/") == 300
    assert step_of("global_step40") == 40 and step_of("1500") == 1500
    with pytest.raises(postsvd.InvalidArgumentError, match="no step in the folder name"):
        step_of("instruct")
    _, _, folders = run
    given = postsvd.track(BASE, folders[:2], steps=[7, 3], layers=0, kinds="o", progress=False)
    assert given.steps == [3, 7] and given.comparisons[0].post == folders[1]


@pytest.mark.parametrize("kwargs, message", [
    (dict(checkpoints=["instruct"]), "no step in the folder name"),
    (dict(steps=[1]), "one step per checkpoint"),
    (dict(steps=[5, 5]), "distinct steps"),
    (dict(steps=[1, -2]), "non-negative"),
    (dict(kinds="qq"), "kind"),
])
def test_bad_arguments_fail_before_anything_is_computed(run, tmp_path, kwargs, message):
    _, _, folders = run
    checkpoints = kwargs.pop("checkpoints", folders[:2])
    if checkpoints == ["instruct"]:
        checkpoints = [os.path.join(FAMILY, "instruct")]
    with pytest.raises(postsvd.InvalidArgumentError, match=message):
        postsvd.track(BASE, checkpoints, out=tmp_path / "out", progress=False, **kwargs)
    assert not os.path.exists(tmp_path / "out")


def test_the_command_line(run, tmp_path, capsys):
    from postsvd import cli

    _, _, folders = run
    out = tmp_path / "out"
    code = cli.main(["track", BASE, *folders[:2], "--out", str(out), "--layers", "0-1", "--kinds", "o,q",
                     "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "NF mean o" in printed and "track.html" in printed
    assert (out / "track.html").exists() and (out / "step-400" / "table.csv").exists()
    code = cli.main(["track", BASE, *folders[:2], "--out", str(tmp_path / "other"), "--steps", "1,x"])
    assert code == 1 and "--steps" in capsys.readouterr().err and not (tmp_path / "other").exists()
    args = cli.build_parser().parse_args(["track", BASE, folders[0], "--out", "o", "--ray"])
    assert args.ray == "" and args.checkpoints == [folders[0]]
    args = cli.build_parser().parse_args(["compare", BASE, folders[0], "--out", "o", "--ray=auto"])
    assert args.ray == "auto"


@pytest.mark.slow  # over 2 s on an idle 2-core machine: CI runs it, the quick run does not
def test_intruder_options_reach_every_checkpoint(run, tmp_path, capsys):
    """k, epsilon and side as compare takes them: each checkpoint's counts equal compare's with the same options
    (and differ from the defaults', which a dropped option would give), in Python and on the command line."""
    from postsvd import cli

    _, _, folders = run
    options = dict(intruder_k=4, intruder_epsilon=0.9, intruder_side="input")
    tracked = postsvd.track(BASE, folders[-2:], layers="0-1", progress=False, **options)
    defaults = postsvd.track(BASE, folders[-2:], layers="0-1", progress=False)
    for comparison, folder in zip(tracked.comparisons, folders[-2:]):
        alone = postsvd.compare(BASE, folder, layers="0-1", progress=False, **options)
        assert comparison.table["intruders"].tolist() == alone.table["intruders"].tolist()
        assert [len(r["intruder_cosines"]) for r in comparison.records] == [4] * len(comparison.table)
    assert (tracked.comparisons[-1].table["intruders"].tolist()
            != defaults.comparisons[-1].table["intruders"].tolist())
    with pytest.raises(postsvd.InvalidArgumentError, match="epsilon"):
        postsvd.track(BASE, folders[:1], out=tmp_path / "bad", intruder_epsilon=1.5, progress=False)
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "cli"
    assert cli.main(["track", BASE, *folders[-2:], "--out", str(out), "--layers", "0-1", "--no-progress",
                     "--intruder-k", "4", "--intruder-epsilon", "0.9", "--intruder-side", "input"]) == 0
    capsys.readouterr()
    import pandas as pd

    saved = pd.read_csv(out / f"step-{STEPS[-1]}" / "table.csv")
    assert saved["intruders"].tolist() == tracked.comparisons[-1].table["intruders"].tolist()
