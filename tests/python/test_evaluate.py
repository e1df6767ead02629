"""postsvd.evaluate: answer extraction, argument checks and the `evaluate` CLI on a shipped model."""
import argparse
from pathlib import Path

import pandas
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from postsvd import evaluate as ev  # noqa: E402
from postsvd.family import tasks  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (" 122", "122"),
        (" 122\nQ: What is 1 + 2?", "122"),
        ("Ones: 7 + 5 = 12 ... The answer is \\boxed{122}", "122"),
        ("\\boxed{7} first, then \\boxed{1,234}", "1234"),
        ("\\boxed{x}", "x"),
        (" -5 apples", "-5"),
        (" no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert ev.extract_answer(completion) == expected


def test_bad_arguments_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ev.evaluate(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="config.json"):
        ev.evaluate(tmp_path)
    with pytest.raises(ValueError, match="max_new_tokens: expected >= 1, got 0"):
        ev.evaluate(MODELS / "instruct", max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size: expected >= 1, got 0"):
        ev.evaluate(MODELS / "instruct", batch_size=0)


def test_rows_and_custom_problems():
    problems = [tasks.Problem(10, 10), tasks.Problem(99, 99)]
    result = ev.evaluate(MODELS / "instruct", problems=problems, max_new_tokens=6)
    rows = result["rows"]
    assert list(rows.columns) == ["prompt", "expected", "completion", "extracted", "correct"]
    assert list(rows["expected"]) == ["20", "198"] and result["n"] == 2 and result["split"] == "custom"
    assert result["accuracy"] == rows["correct"].mean()
    again = ev.evaluate(MODELS / "instruct", problems=problems, max_new_tokens=6)
    assert list(again["rows"]["completion"]) == list(rows["completion"])  # greedy: deterministic


def test_cli_prints_accuracy(capsys, tmp_path):
    parser = argparse.ArgumentParser(prog="postsvd")
    ev.add_cli(parser.add_subparsers(dest="command"))
    csv = tmp_path / "rows.csv"
    args = parser.parse_args(["evaluate", str(MODELS / "instruct"), "--n", "4", "--csv", str(csv)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "/4 exact matches" in out
    written = pandas.read_csv(csv, keep_default_na=False)
    assert len(written) == 4 and list(written.columns)[:2] == ["prompt", "expected"]
