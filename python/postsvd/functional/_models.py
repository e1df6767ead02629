"""Loading models and encoding prompts for the functional checks.

torch and transformers are imported inside the functions, so that
``import postsvd.functional`` stays light and works without them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from .. import hub
from .._extras import require

#: Appendix H.1: the "simple" system prompt (GSM8K, attention entropy, CKA).
SIMPLE_SYSTEM_PROMPT = "Please put your final answer within \\boxed{}."
#: Appendix H.1: the system prompt for the hard datasets (MATH-500, MMLU, GPQA).
HARD_SYSTEM_PROMPT = ("Please put your final answer within \\boxed{} and keep your thought "
                      "process as short as possible.")

ModelLike = Union[str, os.PathLike, Any]  # a checkpoint folder, a Hub repo id, or a loaded PreTrainedModel


def is_model_object(model: Any) -> bool:
    """True for a loaded torch model (anything with ``config`` and ``forward``)."""
    return hasattr(model, "config") and hasattr(model, "forward") and not isinstance(model, (str, os.PathLike))


def model_name(model: ModelLike) -> str:
    """A short display name: the folder name, or the model's ``name_or_path``."""
    if is_model_object(model):
        name = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
        return Path(str(name)).name or type(model).__name__
    return Path(os.fspath(model)).name or os.fspath(model)


def as_model_dict(models: Union[ModelLike, Mapping[str, ModelLike]], what: str) -> Dict[str, ModelLike]:
    """``{name: model}`` from one model (folder or object) or a mapping of them."""
    if isinstance(models, Mapping):
        if not models:
            raise ValueError(f"{what}: expected at least one model in the mapping, got an empty mapping")
        for name in models:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{what}: model names must be non-empty strings, got {name!r}")
        return dict(models)
    if isinstance(models, (str, os.PathLike)) or is_model_object(models):
        return {model_name(models): models}
    raise TypeError(f"{what}: expected a checkpoint folder, a loaded model or a dict name -> model, "
                    f"got {type(models).__name__}")


def check_prompts(prompts: Union[str, Sequence[str]], what: str, *, minimum: int = 1) -> List[str]:
    """A list of non-empty prompt strings (a single string counts as one prompt)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(f"{what}: expected a list of prompt strings, got {type(prompts).__name__}") from None
    if len(prompts) < minimum:
        raise ValueError(f"{what}: expected at least {minimum} prompt(s), got {len(prompts)}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"{what}: prompt {i} must be a non-empty string, got {p!r}")
    return prompts


def _check_folder(path: Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: model folder {os.fspath(path)!r} does not exist or is not a folder")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{what}: {os.fspath(path)!r} has no config.json; expected a Hugging Face "
                                "checkpoint folder (config.json + *.safetensors + tokenizer files)")


def is_hub_model(model: Union[str, os.PathLike]) -> bool:
    """Whether `model` names a Hub repo (``org/name[@revision]``, ``hf://...``) and no existing path."""
    text = os.fspath(model)
    return isinstance(text, str) and not os.path.lexists(text) and hub.is_hub_name(text)


def hub_source(model: Union[str, os.PathLike], what: str) -> Tuple[str, Dict[str, str]]:
    """What to give from_pretrained (transformers, lm-eval): (a checked folder, {}), or for a Hub repo id
    (repo_id, {"revision": <commit>}): transformers downloads complete files itself, never postsvd's
    partial copies, with huggingface_hub's token."""
    if is_hub_model(model):
        repo_id, commit = hub.commit_of(os.fspath(model), what)
        return repo_id, {"revision": commit}
    path = Path(os.fspath(model))
    _check_folder(path, what)
    return os.fspath(path), {}


def load_model_and_tokenizer(model: ModelLike, tokenizer: Any = None, *, device: str = "cpu",
                             dtype: Any = "float32", attn_implementation: str | None = None,
                             what: str = "model") -> Tuple[Any, Any]:
    """(model in eval mode on ``device``, tokenizer) from a folder, a Hub repo id or a loaded model.

    A Hub repo id (``org/name[@revision]``, ``hf://...``; an existing folder wins) is pinned to the commit
    its revision points to and loaded by transformers itself (``from_pretrained(repo_id,
    revision=commit)``: complete files into the Hugging Face cache; postsvd's partial copies are never
    given to transformers; the token is huggingface_hub's).

    A loaded model is used as it is (moved to ``device``); for ``attn_implementation="eager"``
    it is switched to eager attention where transformers allows it, and refused otherwise.
    """
    torch = require("torch", "loading a model")
    transformers = require("transformers", "loading a model")
    AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    if is_model_object(model):
        loaded = model
        weight_dtype = next(loaded.parameters()).dtype
        if isinstance(torch_dtype, torch.dtype) and weight_dtype != torch_dtype:
            warnings.warn(f"{what}: the loaded model runs in {weight_dtype}, not the requested {torch_dtype}; "
                          "it is used as it is (load it with dtype=... to change that)")
        if attn_implementation is not None:
            current = getattr(loaded.config, "_attn_implementation", None)
            if current != attn_implementation:
                setter = getattr(loaded, "set_attn_implementation", None)
                if setter is None:
                    raise ValueError(f"{what}: the model uses attn_implementation={current!r}; expected "
                                     f"{attn_implementation!r}: load it with "
                                     f"from_pretrained(..., attn_implementation={attn_implementation!r})")
                setter(attn_implementation)
        if tokenizer is None:
            source = getattr(loaded, "name_or_path", "") or getattr(loaded.config, "_name_or_path", "")
            if not source or not Path(str(source)).is_dir():
                raise ValueError(f"{what}: a loaded model needs tokenizer=...; its name_or_path "
                                 f"{source!r} is not a folder to read a tokenizer from")
            tokenizer = AutoTokenizer.from_pretrained(str(source))
    else:
        source, pinned = hub_source(model, what)
        kwargs = {"dtype": torch_dtype, **pinned}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        loaded = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source, **pinned)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    loaded = loaded.to(device)
    loaded.eval()
    return loaded, tokenizer


def encode_prompt(tokenizer: Any, question: str, *, system_prompt: str | None = SIMPLE_SYSTEM_PROMPT,
                  chat_template: Union[bool, str] = "auto") -> List[int]:
    """Token ids of the prompt the model sees before its first generated token.

    With a chat template (``chat_template=True``, or ``"auto"`` when the tokenizer has
    one): system message ``system_prompt`` + user message ``question`` + the generation
    prompt. Without: ``system_prompt + "\\n\\n" + question`` as plain text.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "auto":
        use_template = has_template
    elif isinstance(chat_template, bool):
        use_template = chat_template
        if use_template and not has_template:
            raise ValueError("chat_template=True but the tokenizer has no chat template; "
                             "pass chat_template=False (plain text) or 'auto'")
    else:
        raise ValueError(f"chat_template: expected True, False or 'auto', got {chat_template!r}")
    if use_template:
        messages = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": question})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = f"{system_prompt}\n\n{question}" if system_prompt else question
        ids = tokenizer(text)["input_ids"]
    if len(ids) == 0:
        raise ValueError(f"the prompt {question!r} encodes to no tokens")
    return list(ids)
