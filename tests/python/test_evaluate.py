"""The family's evaluator (examples/postsvd_family/evaluate.py): answer extraction, argument checks, right
and wrong answers scored as such, and its command line, on a shipped model."""
from pathlib import Path

import pandas
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from postsvd_family import evaluate as ev  # noqa: E402
from postsvd_family import tasks  # noqa: E402

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


class WrongClaim:
    """A problem whose stated answer is off by one: a model that adds correctly must be scored wrong on it."""

    def __init__(self, a, b):
        self.prompt = tasks.Problem(a, b).prompt
        self.answer = a + b + 1


def test_right_answers_score_and_wrong_claims_do_not():
    # instruct answers every held-out prompt right (family.json: 1010/1010; test_family checks the record)
    held_out = tasks.problems("test", 3)
    claims = [WrongClaim(p.a, p.b) for p in held_out[:2]]
    result = ev.evaluate(MODELS / "instruct", problems=held_out + claims, max_new_tokens=6)
    rows = result["rows"]
    assert list(rows.columns) == ["prompt", "expected", "completion", "extracted", "correct"]
    sums = [str(p.a + p.b) for p in held_out] + [str(p.a + p.b) for p in held_out[:2]]
    assert list(rows["extracted"]) == sums  # what the model said: the true sums
    assert list(rows["expected"]) == sums[:3] + [str(int(x) + 1) for x in sums[3:]]
    assert list(rows["correct"]) == [True, True, True, False, False]
    assert (result["correct"], result["n"], result["split"]) == (3, 5, "custom")
    assert result["accuracy"] == 3 / 5
    again = ev.evaluate(MODELS / "instruct", problems=held_out + claims, max_new_tokens=6)
    assert list(again["rows"]["completion"]) == list(rows["completion"])  # greedy: deterministic


def test_command_line_prints_accuracy_and_writes_rows(capsys, tmp_path):
    csv = tmp_path / "rows.csv"
    assert ev.main([str(MODELS / "instruct"), "--n", "4", "--csv", str(csv), "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "accuracy 1.000 (4/4 exact matches, split test)" in out
    written = pandas.read_csv(csv, keep_default_na=False, dtype=str)
    assert len(written) == 4 and list(written.columns)[:2] == ["prompt", "expected"]
    assert list(written["expected"]) == [str(p.answer) for p in tasks.problems("test", 4)]
