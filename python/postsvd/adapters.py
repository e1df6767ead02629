"""PEFT LoRA adapters as post models (docs/adapters.md): which base an adapter applies to, and what a
result says about it.

The merge itself lives in the core: a folder with ``adapter_config.json`` and ``adapter_model.safetensors``
opens as :class:`postsvd.Checkpoint` on its base, and every projection it changes reads as
``W + scaling * B A`` (DoRA: scaled to its magnitude), one matrix at a time, without a merged copy being
written (``cpp/src/adapter.cpp``). Here: the base an adapter names when none is given
(``base_model_name_or_path``: a folder, or a Hub repo id through :mod:`postsvd.hub`), and the lines a
comparison prints about the adapter (what it changes, what it leaves out, QLoRA). An adapter named by Hub
repo id is resolved by :func:`postsvd.hub.resolve` like any model (its two files come whole: they are small,
and the reader checks every factor when it opens the adapter); its base's tensors are fetched as the base's.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Union

from . import _core, hub
from ._terminal import printable
from .errors import BadCheckpointError, InvalidArgumentError

PathLike = Union[str, "os.PathLike[str]"]

#: The file that makes a folder a PEFT adapter, and its weights.
CONFIG = hub.ADAPTER_CONFIG
WEIGHTS = hub.ADAPTER_WEIGHTS
#: quantization_config methods of checkpoints whose weights postsvd cannot read (an adapter trained on one is QLoRA-like).
_QUANTIZED_FOR_TRAINING = ("bitsandbytes", "gptq", "awq", "aqlm", "hqq", "eetq", "quanto", "torchao", "bitnet")


def is_adapter(folder: PathLike) -> bool:
    """True for a PEFT adapter folder: ``adapter_config.json`` and no ``config.json`` of its own."""
    path = os.fspath(folder)
    return os.path.isfile(os.path.join(path, CONFIG)) and not os.path.isfile(os.path.join(path, "config.json"))


def adapter_config(folder: PathLike) -> Dict[str, Any]:
    """``adapter_config.json`` of an adapter folder as a dict; BadCheckpointError naming the file otherwise."""
    path = os.path.join(os.fspath(folder), CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as error:
        raise BadCheckpointError(f"{path}: cannot be read as JSON: {error}") from None
    if not isinstance(config, dict):
        raise BadCheckpointError(f"{path}: is a JSON {type(config).__name__}; expected an object")
    return config


def recorded_base(folder: PathLike) -> Optional[str]:
    """The base an adapter's config names: ``base_model_name_or_path``, with ``@revision`` for a Hub repo id
    when the config pins one; None when it names none."""
    config = adapter_config(folder)
    name = config.get("base_model_name_or_path")
    if not name:
        return None
    if not isinstance(name, str):
        raise BadCheckpointError(f"{os.path.join(os.fspath(folder), CONFIG)}: base_model_name_or_path is "
                                 f"{name!r}; expected a folder or a Hub repo id")
    revision = config.get("revision")
    if revision and isinstance(revision, str) and not os.path.exists(name) and "@" not in name:
        return f"{name}@{revision}"
    return name


def resolve_base(post: Union[PathLike, hub.ResolvedModel], what: str = "base") -> hub.ResolvedModel:
    """The base the adapter `post` (a model as :func:`postsvd.hub.resolve` takes it: a folder or a Hub repo id)
    names when none is given: its ``base_model_name_or_path``, a folder or a Hub repo id, resolved through
    :func:`postsvd.hub.resolve` like any model argument (headers only; a run fetches the tensors it reads).
    The name as the config writes it names the base in tables and errors.

    Raises:
        InvalidArgumentError: `post` is not an adapter, or its config names no base, or a quantized one.
        BadCheckpointError: the folder it names does not exist.
        HubError: the Hub id cannot be resolved (offline with nothing cached, not found, no access).
    """
    post_model = hub.resolve(post, "post")
    if not is_adapter(post_model.folder):
        raise InvalidArgumentError(f"{what}: missing; only a PEFT adapter ({CONFIG}) names its base, and "
                                   f"'{printable(post_model.name)}' is none: name the base model")
    config = (os.path.join(post_model.name, CONFIG) if post_model.is_local
              else f"{CONFIG} of {post_model.name}")
    name = recorded_base(post_model.folder)
    if name is None:
        raise InvalidArgumentError(f"{what}: missing, and {printable(config)} names no base_model_name_or_path: "
                                   f"name the base model")
    source = f"{what} (base_model_name_or_path of {printable(config)})"
    resolved = hub.resolve(name, source)
    quantization = _quantization(os.path.join(resolved.folder, "config.json"))
    if quantization:
        raise InvalidArgumentError(f"{source}: '{printable(name)}' is a quantized model ({quantization}), whose "
                                   f"weights postsvd does not read: a QLoRA adapter; name its unquantized base")
    return resolved


def common_base(posts: Sequence[hub.ResolvedModel], what: str = "base") -> hub.ResolvedModel:
    """The one base that the adapters `posts` name (:func:`resolve_base`): a comparison of several posts has
    one base, so adapters naming different bases are refused."""
    bases = [resolve_base(post, what) for post in posts]
    differ = [(post, base) for post, base in zip(posts, bases) if base.folder != bases[0].folder]
    if differ:
        post, base = differ[0]
        raise InvalidArgumentError(f"{what}: missing, and the adapters name different bases: "
                                   f"'{printable(bases[0].name)}' ({printable(posts[0].name)}) and "
                                   f"'{printable(base.name)}' ({printable(post.name)}); name the base model")
    return bases[0]


def notes(post: "_core.Checkpoint", post_name: Optional[str] = None, base_name: Optional[str] = None) -> List[str]:
    """What a comparison's output says about an adapter post model (empty for a model folder): what the
    adapter is and changes, the tensors it leaves out, the declared residual base, and QLoRA (an adapter
    trained on a quantized model, compared against the unquantized base named). `post_name`, `base_name`:
    the models as named (a Hub repo id rather than its folder in the cache); default: the folders."""
    adapter = post.adapter
    if adapter is None:
        return []
    variant = ", ".join(v for v, on in (("rsLoRA", adapter["use_rslora"]), ("DoRA", adapter["use_dora"]),
                                        ("fan_in_fan_out", adapter["fan_in_fan_out"])) if on)
    line = (f"Adapter: PEFT LoRA '{printable(post_name or adapter['folder'])}' (r {adapter['r']}, alpha "
            f"{adapter['lora_alpha']:g}{', ' + variant if variant else ''}) applied to the base "
            f"'{printable(base_name or adapter['base_folder'])}': "
            f"{adapter['adapted']} projections W + scaling * B A")
    if adapter["replaced"]:
        line += f", {adapter['replaced']} replaced (modules_to_save)"
    lines = [line + "."]
    skipped = _skipped_modules(adapter["skipped"])
    if skipped:
        lines.append(f"Not compared (not projections): {skipped}.")
    if adapter["residual_base"]:
        lines.append(f"Residual base: declared the residual model that init_lora_weights "
                     f"'{printable(adapter['init_lora_weights'])}' left; the adapter applies to it.")
    quantized = _quantized_training_base(adapter)
    if quantized:
        lines.append(f"QLoRA: the adapter was trained on the quantized model '{printable(quantized[0])}' "
                     f"({quantized[1]}); it is compared against the unquantized base named, so W + ΔW is measured "
                     f"against the unquantized W, not the quantized weights it was trained with.")
    return lines


def record(post: "_core.Checkpoint") -> Optional[Dict[str, Any]]:
    """What run.json records of an adapter post model (None for a model folder)."""
    adapter = post.adapter
    if adapter is None:
        return None
    out = {key: adapter[key] for key in ("folder", "base_folder", "base_model_name_or_path", "r", "lora_alpha",
                                         "use_rslora", "use_dora", "fan_in_fan_out", "init_lora_weights",
                                         "residual_base", "adapted", "replaced")}
    out["skipped"] = [item["tensor"] for item in adapter["skipped"]]
    quantized = _quantized_training_base(adapter)
    out["qlora"] = {"trained_on": quantized[0], "quantization": quantized[1]} if quantized else None
    return out


def _skipped_modules(skipped: List[Dict[str, str]]) -> str:
    """'model.embed_tokens, lm_head (3 tensors)' from the core's skipped tensors."""
    modules: List[str] = []
    for item in skipped:
        name = item["tensor"]
        name = name[len("base_model.model."):] if name.startswith("base_model.model.") else name
        module = name.split(".lora_")[0].split(".base_layer")[0].split(".token_adapter")[0]
        if module not in modules:
            modules.append(module)
    if not modules:
        return ""
    shown = ", ".join(printable(m) for m in modules[:6]) + (f" and {len(modules) - 6} more" if len(modules) > 6 else "")
    return f"{shown} ({len(skipped)} tensors)"


def _quantized_training_base(adapter: Dict[str, Any]) -> Optional[tuple]:
    """(name, quantization) when the base the adapter was trained on (base_model_name_or_path) is a quantized
    checkpoint other than the base it is applied to: a local folder, or a Hub repo whose config.json the
    Hugging Face cache holds (no request is made)."""
    name = adapter["base_model_name_or_path"]
    if not name:
        return None
    config_path = None
    if os.path.isdir(name):
        if os.path.exists(adapter["base_folder"]) and os.path.samefile(name, adapter["base_folder"]):
            return None
        config_path = os.path.join(name, "config.json")
    elif name.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
            config_path = cached if isinstance(cached, str) else None
        except Exception:  # a name the cache cannot look up: nothing known
            config_path = None
    quantization = _quantization(config_path) if config_path else None
    return (name, quantization) if quantization else None


def _quantization(config_path: str) -> Optional[str]:
    """'bitsandbytes 4-bit', 'gptq 4-bit', ...: the quantization of a config.json whose weights postsvd cannot
    read (what QLoRA-style adapters are trained on); None for others, or when the file cannot be read."""
    try:
        with open(config_path, encoding="utf-8") as f:
            quantization = json.load(f).get("quantization_config") or {}
    except (OSError, ValueError, AttributeError):
        return None
    method = str(quantization.get("quant_method", "")) if isinstance(quantization, dict) else ""
    if method not in _QUANTIZED_FOR_TRAINING:
        return None
    bits = ("4-bit" if quantization.get("load_in_4bit") else "8-bit" if quantization.get("load_in_8bit")
            else f"{quantization['bits']}-bit" if "bits" in quantization else "")
    return f"{method} {bits}".strip()
