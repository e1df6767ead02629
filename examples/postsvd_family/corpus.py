"""Pretraining text and the character-level tokenizer of the family.

The text comes with CPython itself, so every machine that runs the script has it
and nothing is downloaded:

* ``pydoc``: the Python language reference topics shipped as ``pydoc_data.topics``
  (what ``help("if")`` prints). Used for ``base``.
* ``docstrings``: the module, class and function docstrings of the standard
  library's own ``.py`` sources, read with ``ast`` (nothing is imported). Used
  for ``base_alt``, so the two base models see different text.

Both are reduced to printable ASCII plus newline, the tokenizer's alphabet.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import sysconfig
from pathlib import Path
from typing import List

from . import tasks

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
# Tokens are single characters: printable ASCII and newline. Digits stay one token
# each, which is what column addition needs.
ALPHABET = ["\n"] + [chr(c) for c in range(32, 127)]
SOURCES = ("pydoc", "docstrings")

_NOT_ALPHABET = re.compile(r"[^\n\x20-\x7e]")


def clean(text: str) -> str:
    """Map text onto the alphabet: tabs to spaces, other characters dropped, runs of blank lines folded."""
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    text = _NOT_ALPHABET.sub("", text)
    text = re.sub(r"[ ]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def pydoc_paragraphs() -> List[str]:
    """Paragraphs of the language reference topics, in sorted topic order."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        paragraphs += [p for p in clean(topics[name]).split("\n\n") if len(p) > 40]
    return paragraphs


def docstring_paragraphs(max_chars: int | None = None) -> List[str]:
    """Paragraphs of docstrings from the standard library's sources, in sorted path order.

    Stops after the file at which `max_chars` characters are reached.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "pydoc_data")
    files = sorted(
        p for p in stdlib.rglob("*.py") if not any(part in skip for part in p.relative_to(stdlib).parts)
    )
    paragraphs, total = [], 0
    for path in files:
        if max_chars is not None and total >= max_chars:
            break
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    kept = [p for p in clean(doc).split("\n\n") if len(p) > 40]
                    paragraphs += kept
                    total += sum(len(p) + 2 for p in kept)
    return paragraphs


def paragraphs(source: str, max_chars: int) -> List[str]:
    """The first `max_chars` characters' worth of paragraphs of a source."""
    if source == "pydoc":
        found = pydoc_paragraphs()
    elif source == "docstrings":
        found = docstring_paragraphs(max_chars)
    else:
        raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
    kept, total = [], 0
    for p in found:
        if total >= max_chars:
            break
        kept.append(p)
        total += len(p) + 2
    if total < min(max_chars, 20_000):
        raise RuntimeError(f"text source {source!r} gave only {total} characters; expected at least 20000")
    return kept


def pretraining_documents(source: str, max_chars: int, task_fraction: float, seed: int) -> List[str]:
    """Text paragraphs mixed with blocks of training-split additions, shuffled with `seed`.

    `task_fraction` is the share of characters that are arithmetic. The arithmetic
    never uses the Q:/A: format of post-training, so the base model knows sums but
    not the instruction format.
    """
    if not 0.0 <= task_fraction < 1.0:
        raise ValueError(f"task_fraction: expected 0 <= f < 1, got {task_fraction}")
    rng = random.Random(f"pretrain:{source}:{seed}")
    docs = paragraphs(source, max_chars)
    text_chars = sum(len(d) for d in docs)
    target = int(text_chars * task_fraction / (1.0 - task_fraction))
    stream = tasks.sample_train(rng)
    made = 0
    while made < target:
        block = "\n".join(next(stream).pretraining_text(rng) for _ in range(rng.randint(3, 8)))
        docs.append(block)
        made += len(block)
    rng.shuffle(docs)
    return docs


def fingerprint(docs: List[str]) -> str:
    """Short sha256 of the documents, recorded in the model card."""
    return hashlib.sha256("\n\n".join(docs).encode()).hexdigest()[:16]


def build_tokenizer(out_dir: str | os.PathLike, model_max_length: int):
    """Write a character-level tokenizer that `AutoTokenizer.from_pretrained(out_dir)` loads offline.

    Encoding prepends <s>; decoding concatenates characters. Returns the loaded
    transformers tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + ALPHABET)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.add_special_tokens(SPECIAL_TOKENS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    save_tokenizer(tokenizer, out_dir, model_max_length)
    return tokenizer


def save_tokenizer(tokenizer, out_dir: str | os.PathLike, model_max_length: int) -> None:
    """save_pretrained, then a tokenizer_config.json that older transformers and vLLM read too.

    transformers 5 writes its own class name (TokenizersBackend) and load-time flags;
    PreTrainedTokenizerFast is the class every version knows for a tokenizer.json.
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for load_time_flag in ("is_local", "local_files_only"):
        config.pop(load_time_flag, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = model_max_length
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def describe_sources() -> str:
    """One line per source for the model card."""
    return json.dumps({"pydoc": "pydoc_data.topics (Python language reference)",
                       "docstrings": "docstrings of the CPython standard library sources"})
