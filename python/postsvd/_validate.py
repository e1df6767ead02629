"""Argument checks shared by the API and the CLI; every failure says what was
expected and what came."""
from __future__ import annotations

import errno
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .errors import BackendError, BadCheckpointError, InvalidArgumentError, NotBuiltWithCudaError

#: The projection kinds, attention first, from the core's one kind table: the paper's q, k, v, o, gate,
#: up, down and DeepSeek's MLA kinds q_a, q_b, kv_a, kv_b_k, kv_b_v.
KINDS: Tuple[str, ...] = tuple(name for name, _ in _core.kinds())
#: The kind groups (Appendix D: SA = attention, FFN = mlp), from the core's table, accepted wherever kinds or
#: a group are given; a group stands for those of its kinds that the model has.
KIND_GROUPS: Dict[str, Tuple[str, ...]] = {
    **{group: tuple(name for name, g in _core.kinds() if g == group) for group in ("attention", "mlp")},
    "all": KINDS}
#: Other spellings of a group, accepted too.
GROUP_ALIASES = {"attn": "attention"}
#: Working precisions (the core's one table, with every spelling it accepts).
DTYPES: Tuple[str, ...] = tuple(name for name, _ in _core.precisions())

_DTYPE_ALIASES = {spelling: name for name, spellings in _core.precisions() for spelling in spellings}

GPU_BUILD_HINT = ("install the GPU wheel instead (pip install postsvd-cu13), or build the GPU variant with: "
                  "POSTSVD_ENABLE_CUDA=ON pip install --no-build-isolation -v . (needs the CUDA toolkit)")

KindsArg = Union[None, str, Iterable[str]]
LayersArg = Union[None, int, str, Iterable[int]]


#: When a post matrix starts from the base's factors: the backend's measured choice, always, never
#: (from the core's one list, the default first).
WARM_START_MODES: Tuple[str, ...] = tuple(_core.warm_start_modes())


def normalize_warm_start(warm_start) -> str:
    """'auto', 'always' or 'off' from True ('auto'), False ('off') or one of those names."""
    if warm_start is True:
        return "auto"
    if warm_start is False:
        return "off"
    if isinstance(warm_start, str) and warm_start.strip().lower() in WARM_START_MODES:
        return warm_start.strip().lower()
    raise InvalidArgumentError(f"warm_start: expected True, False or one of {', '.join(WARM_START_MODES)}, "
                               f"got {warm_start!r}")


#: The sides the intruder count reads ('output': V, the paper's; 'input': U), the default first, and the
#: defaults of the count (the paper's k = 10, epsilon = 0.5): the core's one list and defaults.
INTRUDER_SIDES: Tuple[str, ...] = tuple(_core.intruder_sides())
INTRUDER_DEFAULTS: Dict[str, object] = dict(_core.intruder_options())


def normalize_intruders(k, epsilon, side) -> Dict[str, object]:
    """{k, epsilon, side} of the intruder count: k a positive int, epsilon a number in [0, 1], side
    'output' or 'input' in any case (values checked by the core, which names the option)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidArgumentError(f"intruder_k: expected a positive integer, got {k!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"intruder_epsilon: expected a number in [0, 1], got {epsilon!r}")
    if not isinstance(side, str):
        raise InvalidArgumentError(f"intruder_side: expected one of {', '.join(INTRUDER_SIDES)}, got {side!r}")
    return dict(_core.intruder_options(int(k), float(epsilon), side.strip().lower()))


def normalize_dtype(dtype) -> str:
    """'float32' / 'float64' from a string or numpy dtype; anything else raises."""
    if dtype is None:
        return "float32"
    if not isinstance(dtype, str):
        try:
            dtype = np.dtype(dtype).name
        except TypeError:
            dtype = str(dtype)
    name = _DTYPE_ALIASES.get(dtype.strip().lower())
    if name is None:
        raise InvalidArgumentError(
            f"dtype: expected one of {', '.join(DTYPES)} (the working precision), got {dtype!r}")
    return name


def normalize_device(device) -> Tuple[str, List[int]]:
    """('cpu' | 'cuda', device_ids) from 'cpu', 'cuda', 'cuda:1' or 'cuda:0,1'."""
    if not isinstance(device, str):
        raise InvalidArgumentError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    text = device.strip().lower()
    match = re.fullmatch(r"cuda(?::(\d+(?:,\d+)*))?", text)
    if text == "cpu":
        return "cpu", []
    if match is None:
        raise InvalidArgumentError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    ids = [int(i) for i in match.group(1).split(",")] if match.group(1) else []
    if not _core.built_with_cuda():
        raise NotBuiltWithCudaError(f"device={device!r}: this postsvd build has no CUDA backend; {GPU_BUILD_HINT}")
    count = _core.cuda_device_count()
    if count == 0:
        cuda = _core.build_info().partition("CUDA: ")[2]
        raise BackendError(f"device={device!r}: this postsvd has the CUDA backend but sees no CUDA device "
                           f"(no GPU here, no driver, or CUDA_VISIBLE_DEVICES hides them; {cuda}); use device='cpu'")
    for i in ids:
        if i >= count:
            raise InvalidArgumentError(f"device={device!r}: CUDA device {i} does not exist; devices 0..{count - 1}")
    return "cuda", ids


def group_name(name) -> Optional[str]:
    """The canonical name of a kind group ('attn' -> 'attention'), or None when `name` names no group."""
    text = str(name).strip().lower()
    text = GROUP_ALIASES.get(text, text)
    return text if text in KIND_GROUPS else None


def normalize_kinds(kinds: KindsArg, available: Sequence[str] = KINDS, what: str = "kinds") -> List[str]:
    """Kinds in the paper's order from None (all), 'q,k', 'attention' or a list; unknown names raise
    (naming the option `what`)."""
    if kinds is None:
        return [k for k in KINDS if k in available]
    if isinstance(kinds, str):
        items = [part.strip() for part in kinds.split(",") if part.strip()]
    else:
        items = [str(part).strip() for part in kinds]
    if not items:
        raise InvalidArgumentError(f"{what}: expected at least one of {', '.join(KINDS)}, got {kinds!r}")
    chosen = set()
    for item in items:
        name = item.lower()
        group = group_name(name)
        if group is not None:
            present = [k for k in KIND_GROUPS[group] if k in available]
            if not present:
                raise InvalidArgumentError(
                    f"{what}: the group {item!r} ({', '.join(KIND_GROUPS[group])}) has no kind in this model; "
                    f"it has {', '.join(available)}")
            chosen.update(present)
        elif name in KINDS:
            chosen.add(name)
        else:
            raise InvalidArgumentError(
                f"{what}: unknown kind {item!r}; valid kinds are {', '.join(KINDS)} "
                f"(or the groups {', '.join(KIND_GROUPS)})")
    missing = [k for k in KINDS if k in chosen and k not in available]
    if missing:
        raise InvalidArgumentError(
            f"{what}: {', '.join(missing)} not present in this model; it has {', '.join(available)}")
    return [k for k in KINDS if k in chosen]


def parse_layers_text(text: str, what: str = "layers") -> List[int]:
    """'0,1,5-9' -> [0, 1, 5, 6, 7, 8, 9]; errors name the option `what` and the text as written."""
    layers: List[int] = []
    for part in text.split(","):
        if part.strip():
            layers += _index_range(part.strip(), text, what)
    if not layers:
        raise InvalidArgumentError(f"{what}: expected a list like '0,1,5-9', got {text!r}")
    return layers


def _index_range(part: str, text: str, what: str) -> List[int]:
    """'5-9' -> [5, ..., 9], '3' -> [3]: one part of the list `text` given as option `what`."""
    match = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)|(-?\d+)", part)
    if match is None:
        raise InvalidArgumentError(f"{what}: expected a list like '0,1,5-9', got {text!r} (bad part {part!r})")
    if match.group(3) is not None:
        return [int(match.group(3))]
    first, last = int(match.group(1)), int(match.group(2))
    if last < first:
        where = f" in {text!r}" if part != text.strip() else ""
        raise InvalidArgumentError(f"{what}: range {part!r}{where} is empty; write it low-high, e.g. "
                                   f"'{last}-{first}'")
    return list(range(first, last + 1))


def normalize_layers(layers: LayersArg, num_layers: int, model_type: str = "model", what: str = "layers") -> List[int]:
    """Sorted unique layer indices from None (all), an int, '0,1,5-9' or a list;
    negative indices count from the end; out of range raises naming the range (and the option `what`)."""
    if layers is None:
        return list(range(num_layers))
    if isinstance(layers, str):
        items = parse_layers_text(layers, what)
    elif isinstance(layers, (int, np.integer)):
        items = [int(layers)]
    else:
        items = []
        for item in layers:
            if not isinstance(item, (int, np.integer)) or isinstance(item, bool):
                raise InvalidArgumentError(f"{what}: expected integers, got {item!r} in {layers!r}")
            items.append(int(item))
    if not items:
        raise InvalidArgumentError(f"{what}: expected at least one layer, got an empty list")
    result = set()
    for layer in items:
        if not -num_layers <= layer < num_layers:
            raise InvalidArgumentError(
                f"{what}: layer {layer} is out of range; this {model_type} model has layers 0..{num_layers - 1}")
        result.add(layer % num_layers)
    return sorted(result)


def normalize_threads(num_threads: Optional[int]) -> int:
    """0 (all cores) for None, else a positive int."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise InvalidArgumentError(f"num_threads: expected a positive integer or None (all cores), got {num_threads!r}")
    return int(num_threads)


def broken_link(path: str) -> Optional[str]:
    """What is wrong with `path` when it is a symbolic link that leads nowhere ("is a symbolic link
    loop", "is a dangling symbolic link to 'x'"); None otherwise."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symbolic link loop"
        if error.errno == errno.ENOENT:
            return f"is a dangling symbolic link to '{os.readlink(path)}'"
        return f"is a symbolic link that cannot be followed ({error.strerror})"
    return None


def normalize_folder(folder, what: str) -> str:
    """A path string for an existing directory; a clear error otherwise."""
    path = path_text(folder, what, "a folder path")
    broken = broken_link(path)
    if broken:
        raise BadCheckpointError(f"{what}: '{path}' {broken}; expected a model folder")
    if not os.path.exists(path):
        raise BadCheckpointError(f"{what}: folder '{path}' does not exist")
    if not os.path.isdir(path):
        raise BadCheckpointError(
            f"{what}: '{path}' is not a folder; expected a Hugging Face model folder with config.json "
            f"and model.safetensors (or model.safetensors.index.json and its shards)")
    return path


def normalize_cache(cache, what: str = "cache") -> str:
    """The absolute path of a factor cache folder ('' for None); it is created on first use.

    Raises InvalidArgumentError when the path exists and is not a folder."""
    if cache is None:
        return ""
    try:
        path = os.fspath(cache)
    except TypeError:
        raise InvalidArgumentError(f"{what}: expected a folder path or None, got {type(cache).__name__}") from None
    if not path:
        raise InvalidArgumentError(f"{what}: expected a folder path or None, got an empty string")
    if os.path.exists(path) and not os.path.isdir(path):
        raise InvalidArgumentError(f"{what}: '{path}' exists and is not a folder; expected a factor cache folder")
    return os.path.abspath(path)


#: How tables name the shared expert of a MoE layer (the core's SHARED_EXPERT index).
SHARED_EXPERT = "shared"
ExpertsArg = Union[None, int, str, Iterable[Union[int, str]]]


def expert_label(expert: int) -> Union[int, str]:
    """The `expert` value of a table row: the routed expert's index, 'shared', or -1 (not an expert)."""
    return SHARED_EXPERT if expert == _core.SHARED_EXPERT else int(expert)


def expert_index(expert: Union[int, str], what: str = "expert") -> int:
    """The core's expert index of 'shared' or a routed expert's index (-1: not an expert); errors name
    the option `what`."""
    if isinstance(expert, str):
        text = expert.strip().lower()
        if text == SHARED_EXPERT:
            return _core.SHARED_EXPERT
        if not re.fullmatch(r"-?\d+", text):
            raise InvalidArgumentError(f"{what}: expected an expert index or 'shared', got {expert!r}")
        return int(text)
    if isinstance(expert, bool) or not isinstance(expert, (int, np.integer)):
        raise InvalidArgumentError(f"{what}: expected an expert index or 'shared', got {expert!r}")
    return int(expert)


def normalize_experts(experts: ExpertsArg, what: str = "experts") -> Optional[set]:
    """The core's expert indices from None (all), an int, 'shared', text like '0-7,shared' or a list.
    Errors name the option `what` and the value as written.

    The selection applies to MoE expert matrices only; attention and dense MLP matrices are always kept."""
    if experts is None:
        return None
    if isinstance(experts, (int, np.integer)) and not isinstance(experts, bool):
        items: List[Union[int, str]] = [int(experts)]
    elif isinstance(experts, str):
        items = []
        for part in experts.split(","):
            part = part.strip()
            if part.lower() == SHARED_EXPERT:
                items.append(SHARED_EXPERT)
            elif re.fullmatch(r"\d+\s*-\s*\d+|\d+", part):
                items.extend(_index_range(part, experts, what))
            elif part:
                raise InvalidArgumentError(f"{what}: expected expert indices like '0-7,shared', got {experts!r} "
                                           f"(bad part {part!r})")
    else:
        try:
            items = list(experts)
        except TypeError:
            raise InvalidArgumentError(f"{what}: expected expert indices like '0-7' or 'shared', "
                                       f"got {experts!r}") from None
    chosen = {expert_index(item, what) for item in items}
    if not chosen:
        raise InvalidArgumentError(f"{what}: expected expert indices like '0-7' or 'shared', got {experts!r}")
    bad = [e for e in chosen if e < 0 and e != _core.SHARED_EXPERT]
    if bad:
        raise InvalidArgumentError(f"{what}: expected expert indices >= 0 or 'shared', got {experts!r}")
    return chosen


def normalize_leading_k(leading_k) -> int:
    """0 (all) for None, else a positive int: the leading singular vectors kept in the similarity matrices."""
    if leading_k is None:
        return 0
    if isinstance(leading_k, bool) or not isinstance(leading_k, (int, np.integer)) or leading_k < 1:
        raise InvalidArgumentError(f"leading_k: expected a positive integer or None (all), got {leading_k!r}")
    return int(leading_k)


def normalize_matrix_pairs(pairs, layers: Sequence[int], kinds: Sequence[str], num_layers: int,
                           model_type: str = "model",
                           what: str = "matrices") -> List[Tuple[int, str, Optional[Union[int, str]]]]:
    """(layer, kind) or (layer, kind, expert) items that name compared matrices, as (layer, kind, expert
    or None): layers among `layers` (negative counts from the end of the model), kinds among `kinds`,
    experts an index or 'shared'; anything else raises naming what was compared."""
    try:
        items = list(pairs)
    except TypeError:
        raise InvalidArgumentError(f"{what}: expected (layer, kind) pairs, got {pairs!r}") from None
    result: List[Tuple[int, str, Optional[Union[int, str]]]] = []
    for item in items:
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) not in (2, 3):
            raise InvalidArgumentError(f"{what}: expected (layer, kind) pairs or (layer, kind, expert) triples "
                                       f"like (0, 'q') or (3, 'gate', 17), got {item!r}")
        if isinstance(item[0], bool) or not isinstance(item[0], (int, np.integer)):
            raise InvalidArgumentError(f"{what}: expected an integer layer, got {item[0]!r} in {item!r}")
        if not -num_layers <= item[0] < num_layers:
            raise InvalidArgumentError(f"{what}: layer {item[0]} is out of range; this {model_type} model has "
                                       f"layers 0..{num_layers - 1}")
        layer = int(item[0]) % num_layers
        if layer not in layers:
            raise InvalidArgumentError(f"{what}: layer {layer} was not compared; compared layers: "
                                       f"{', '.join(str(x) for x in layers)}")
        try:
            names = normalize_kinds(item[1]) if isinstance(item[1], str) else []
            expert = expert_label(expert_index(item[2])) if len(item) == 3 and item[2] is not None else None
        except InvalidArgumentError as error:
            raise InvalidArgumentError(f"{what}: {error}") from None
        if len(names) != 1:
            raise InvalidArgumentError(f"{what}: expected one kind per pair, got {item[1]!r}")
        if names[0] not in kinds:
            raise InvalidArgumentError(f"{what}: kind {names[0]!r} was not compared; compared kinds: "
                                       f"{', '.join(kinds)}")
        result.append((layer, names[0], expert))
    return result


def parse_matrix_pairs(text: Optional[str], what: str = "--matrices") -> Optional[List[Tuple]]:
    """'0:q,3:gate:17,3:down:shared' -> [(0, 'q'), (3, 'gate', 17), (3, 'down', 'shared')]."""
    if text is None:
        return None
    pairs: List[Tuple] = []
    for part in text.split(","):
        fields = [f.strip() for f in part.strip().split(":")]
        if len(fields) not in (2, 3) or not re.fullmatch(r"-?\d+", fields[0]) or not fields[1] or (
                len(fields) == 3 and not re.fullmatch(rf"\d+|{SHARED_EXPERT}", fields[2].lower())):
            raise InvalidArgumentError(f"{what}: expected LAYER:KIND or LAYER:KIND:EXPERT items like 0:q,5:down,"
                                       f"3:gate:17 (EXPERT: an index or '{SHARED_EXPERT}'), got {text!r}")
        item: Tuple = (int(fields[0]), fields[1])
        if len(fields) == 3:
            item += (int(fields[2]) if fields[2].isdigit() else fields[2].lower(),)
        pairs.append(item)
    return pairs


def path_text(path, what: str, expected: str = "a path") -> str:
    """The text of a str, bytes or os.PathLike path; InvalidArgumentError naming `what` otherwise."""
    try:
        text = os.fspath(path)
    except TypeError:
        raise InvalidArgumentError(f"{what}: expected {expected}, got {type(path).__name__}") from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise InvalidArgumentError(f"{what}: expected {expected}, got an empty string")
    return text


def _check_creatable(path: str, what: str) -> None:
    """The nearest existing folder above `path` is a writable folder, so `path` can be created."""
    probe = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InvalidArgumentError(f"{what}: cannot create '{path}': '{probe}' is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"{what}: cannot create '{path}': no permission to write in '{probe}'")


def normalize_output_folder(out, what: str = "out") -> str:
    """The absolute path of an output folder: an existing folder, or one that can be created
    (its missing parents too). Raises InvalidArgumentError for a file, or a place it cannot go."""
    path = path_text(out, what)
    broken = broken_link(path)
    if broken:
        raise InvalidArgumentError(f"{what}: '{path}' {broken}; expected a folder (created if missing)")
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise InvalidArgumentError(f"{what}: expected a folder (created if missing), got the existing file "
                                       f"'{path}'")
    else:
        _check_creatable(path, what)
    return os.path.abspath(path)


def normalize_output_file(path, what: str) -> str:
    """The absolute path of a file to write: not a folder; its folder exists."""
    text = path_text(path, what)
    if os.path.isdir(text):
        raise InvalidArgumentError(f"{what}: '{text}' is a folder; expected a file name")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise InvalidArgumentError(f"{what}: the folder '{folder}' of '{text}' does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidArgumentError(f"{what}: no permission to write in '{folder}'")
    return os.path.abspath(text)
