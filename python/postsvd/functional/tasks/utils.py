"""Document processing, answer extraction and the \\boxed{} filter of the postsvd
lm-eval tasks (paper Appendix H.1).

lm-eval loads this file by path from the task YAMLs (``!function utils.<name>``);
postsvd imports it as ``postsvd.functional.tasks.utils``. It depends on the
standard library only (``datasets`` objects come in from lm-eval).

Local JSONL formats (one object a line):

* open-ended (GSM8K, MATH-500): ``{"question": str, "answer": str}``;
* multiple choice (MMLU, GPQA): ``{"question": str, "choices": [4 str], "answer": "A".."D" or 0..3}``.

The raw Hugging Face layouts are accepted too: GSM8K ``question``/``answer`` with
``#### <number>``; MATH-500 ``problem``/``answer``; MMLU ``question``/``choices``/``answer``
(int); GPQA ``Question``/``Correct Answer``/``Incorrect Answer 1..3`` (choices shuffled with a
permutation fixed by a hash of the question, so every run and machine sees the same order).
"""
from __future__ import annotations

import hashlib
import re
from typing import Any, Dict, List, Optional, Sequence

LETTERS = "ABCD"


# ----------------------------------------------------------------------------- answers
def last_boxed(text: Optional[str]) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced;
    ``\\boxed 5`` (no braces) gives ``5``. None when there is none or it is unclosed."""
    if not text:
        return None
    for command in reversed(list(re.finditer(r"\\(?:boxed|fbox)", text))):
        pos = command.end()
        if pos < len(text) and text[pos] == "{":
            depth = 0
            for end in range(pos, len(text)):
                if text[end] == "{":
                    depth += 1
                elif text[end] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[pos + 1:end]
        elif pos < len(text) and text[pos] == " ":
            match = re.match(r"\s*([^\s$]+)", text[pos:])
            if match:
                return match.group(1)
    return None


_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\{([^{}]*)\}")
_DELETE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\$|\^\{?\\circ\}?|\\%|%")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"-?\d+\.\d+")
_CHOICE = re.compile(r"^\(?([A-Da-d])\)?(?:[.:)]|$)")


def normalize_answer(answer: Optional[str], multiple_choice: bool = False) -> str:
    """The form both prediction and target are compared in (exact match).

    Drops ``\\text{}``-like wrappers, ``\\left``/``\\right``, thin spaces, ``$``, degree and
    percent signs, all whitespace and a final period; ``dfrac``/``tfrac`` -> ``frac``;
    numbers lose thousands separators and trailing decimal zeros (``1,234.50`` -> ``1234.5``).
    Multiple choice: a leading option letter (``B``, ``(b)``, ``B.``, ``\\text{B}``) -> ``B``.
    """
    if answer is None:
        return ""
    s = str(answer).strip()
    previous = None
    while previous != s:
        previous, s = s, _WRAPPERS.sub(r"\1", s)
    s = _DELETE.sub("", s)
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = re.sub(r"\s+", "", s).rstrip(".")
    if multiple_choice:
        match = _CHOICE.match(s)
        return match.group(1).upper() if match else s
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _DECIMAL.fullmatch(s):
        s = s.rstrip("0").rstrip(".")
    if s == "-0":
        s = "0"
    return s


def extract_answer(response: Optional[str], multiple_choice: bool = False) -> str:
    """Normalized content of the last ``\\boxed{}`` of a response; ``""`` when there is none."""
    boxed = last_boxed(response)
    return "" if boxed is None else normalize_answer(boxed, multiple_choice)


def boxed_filter(resps: Sequence[Sequence[str]], docs: Sequence[Dict[str, Any]]) -> List[List[str]]:
    """lm-eval custom filter: every response -> its normalized last ``\\boxed{}``."""
    return [[extract_answer(r, bool(doc.get("choices"))) for r in doc_resps]
            for doc_resps, doc in zip(resps, docs)]


# ----------------------------------------------------------------------------- documents
def _field(doc: Dict[str, Any], names: Sequence[str], task: str, index: int) -> Any:
    for name in names:
        if name in doc and doc[name] is not None and str(doc[name]).strip() != "":
            return doc[name]
    raise ValueError(f"{task}: row {index} has none of the fields {list(names)} (or they are empty); "
                     f"got fields {sorted(doc)}")


def gsm8k_doc(doc: Dict[str, Any], index: int = 0) -> Dict[str, Any]:
    question = str(_field(doc, ["question"], "gsm8k", index))
    answer = str(_field(doc, ["answer"], "gsm8k", index))
    if "####" in answer:
        answer = answer.split("####")[-1]
    return {"question": question, "answer": answer.strip(), "target": normalize_answer(answer)}


def math500_doc(doc: Dict[str, Any], index: int = 0) -> Dict[str, Any]:
    question = str(_field(doc, ["question", "problem"], "math500", index))
    answer = str(_field(doc, ["answer"], "math500", index))
    return {"question": question, "answer": answer.strip(), "target": normalize_answer(answer)}


def _choice_doc(question: str, choices: List[str], answer: Any, task: str, index: int) -> Dict[str, Any]:
    if len(choices) != 4:
        raise ValueError(f"{task}: row {index}: expected 4 choices (the Appendix H.1 template has A-D), "
                         f"got {len(choices)}")
    if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit()):
        position = int(answer)
        if not 0 <= position < 4:
            raise ValueError(f"{task}: row {index}: answer index must be 0..3, got {answer!r}")
        letter = LETTERS[position]
    else:
        letter = normalize_answer(str(answer), multiple_choice=True)
        if letter not in LETTERS:
            raise ValueError(f"{task}: row {index}: answer must be A-D or 0-3, got {answer!r}")
    return {"question": question, "choices": [str(c).strip() for c in choices], "answer": letter,
            "target": letter}


def mmlu_doc(doc: Dict[str, Any], index: int = 0) -> Dict[str, Any]:
    question = str(_field(doc, ["question"], "mmlu", index)).strip()
    choices = list(_field(doc, ["choices"], "mmlu", index))
    return _choice_doc(question, choices, _field(doc, ["answer"], "mmlu", index), "mmlu", index)


def gpqa_doc(doc: Dict[str, Any], index: int = 0) -> Dict[str, Any]:
    if "Correct Answer" in doc:
        question = str(_field(doc, ["Question"], "gpqa", index)).strip()
        options = [str(doc["Correct Answer"]).strip()] + [
            str(_field(doc, [f"Incorrect Answer {i}"], "gpqa", index)).strip() for i in (1, 2, 3)]
        # a permutation fixed by the question text: the same on every run and machine
        order = sorted(range(4), key=lambda i: hashlib.sha256(f"{i}:{question}".encode()).hexdigest())
        choices = [options[i] for i in order]
        return _choice_doc(question, choices, order.index(0), "gpqa", index)
    question = str(_field(doc, ["question", "Question"], "gpqa", index)).strip()
    choices = list(_field(doc, ["choices"], "gpqa", index))
    return _choice_doc(question, choices, _field(doc, ["answer"], "gpqa", index), "gpqa", index)


def _process(dataset, convert):
    columns = list(dataset.column_names)
    return dataset.map(convert, with_indices=True, remove_columns=columns)


def process_gsm8k(dataset):
    return _process(dataset, gsm8k_doc)


def process_math500(dataset):
    return _process(dataset, math500_doc)


def process_mmlu(dataset):
    return _process(dataset, mmlu_doc)


def process_gpqa(dataset):
    return _process(dataset, gpqa_doc)
