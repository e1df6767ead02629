"""The family's task: two-digit addition with a checkable answer.

Every operand pair belongs to exactly one split, decided by a keyed hash of the
unordered pair, so "37 + 85" and "85 + 37" are held out together and no
held-out sum is ever seen in pretraining or post-training.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterator, List

OPERAND_MIN = 10
OPERAND_MAX = 99
TEST_PERCENT = 12  # share of unordered pairs held out, in percent
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Problem:
    """One addition problem `a + b`."""

    a: int
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b

    @property
    def prompt(self) -> str:
        """What the evaluator feeds the model (both post models answer this)."""
        return f"Q: What is {self.a} + {self.b}?\nA:"

    def instruct_target(self) -> str:
        """Completion for SFT of `instruct`: the bare number."""
        return f" {self.answer}"

    def reasoning_target(self) -> str:
        """Completion for `reasoning`: column addition step by step, then a boxed answer."""
        return " Let's add column by column, from the right.\n" + _column_steps(self.a, self.b) + (
            f"The answer is \\boxed{{{self.answer}}}"
        )

    def pretraining_text(self, rng: random.Random) -> str:
        """The task as plain text for pretraining, never in the Q:/A: format of post-training."""
        a, b, s = self.a, self.b, self.answer
        form = rng.choices((0, 1, 2, 3), weights=(4, 2, 1, 3))[0]
        if form == 0:
            return f"{a} + {b} = {s}"
        if form == 1:
            return f"The sum of {a} and {b} is {s}."
        if form == 2:
            return f"{a} plus {b} equals {s}."
        return f"To add {a} and {b}:\n" + _column_steps(a, b) + f"So {a} + {b} = {s}."


def _column_steps(a: int, b: int) -> str:
    """Grade-school addition, one line per column, ones first."""
    names = ["ones", "tens", "hundreds", "thousands"]
    da, db = str(a)[::-1], str(b)[::-1]
    carry = 0
    lines = []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        expr = f"{x} + {y}" + (f" + {carry}" if carry else "")
        new_carry = total // 10
        lines.append(
            f"{names[i].capitalize()}: {expr} = {total}, write {total % 10}"
            + (f", carry {new_carry}." if new_carry else ".")
        )
        carry = new_carry
    if carry:
        lines.append(f"Write the last carry {carry} in front.")
    return "\n".join(lines) + "\n"


def split_of(a: int, b: int) -> str:
    """'test' or 'train' for the operand pair; symmetric in a and b, fixed forever."""
    lo, hi = min(a, b), max(a, b)
    digest = hashlib.blake2b(f"postsvd-family:{lo}+{hi}".encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") % 100 < TEST_PERCENT else "train"


def all_problems(split: str) -> List[Problem]:
    """Every ordered problem of a split, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return [
        Problem(a, b)
        for a in range(OPERAND_MIN, OPERAND_MAX + 1)
        for b in range(OPERAND_MIN, OPERAND_MAX + 1)
        if split_of(a, b) == split
    ]


def problems(split: str, n: int | None = None, seed: int = 0) -> List[Problem]:
    """`n` problems of a split in a seeded shuffled order (all of them when n is None)."""
    pool = all_problems(split)
    random.Random(f"problems:{split}:{seed}").shuffle(pool)
    if n is None:
        return pool
    if n < 0 or n > len(pool):
        raise ValueError(f"n: expected 0 <= n <= {len(pool)} for split {split!r}, got {n}")
    return pool[:n]


def sample_train(rng: random.Random) -> Iterator[Problem]:
    """Endless stream of training problems drawn with `rng`."""
    pool = all_problems("train")
    while True:
        yield pool[rng.randrange(len(pool))]
