"""The paper's constructions 9-16 as new checkpoints (Sections 5.1, 5.2, Appendix C, D).

``postsvd.construct(11, base, post, out)`` decomposes every selected matrix of
``base`` and ``post`` once (reduced SVD, paper orientation ``W = W_hf^T``, sign
rule applied), builds the new weights, and writes a model folder that loads
like ``post``: config, generation config, tokenizer and every other non-weight
file and every untouched tensor copied bit for bit, modified tensors in their
stored dtype and layout (Conv1D, fused qkv / gate_up re-fused), single file or
sharded with an index. The folder is built beside ``out`` (normal
permissions, ``0777 & ~umask``) and moved into place only when complete, an
existing one swapped out atomically with ``force`` (:mod:`postsvd._outputs`);
``postsvd_construction.json`` beside the weights records what was done.

=====  =======================================  =====================================
  #    name                                     new weight W [in, out]
=====  =======================================  =====================================
  9    replace singular values, scaled          U_post (alpha' S_base) V_post^T
 10    ablate the output-side rotation          U_post S_post V_base^T
 11    restore it from the input side           U_post S_post (V_base Q1)^T
 12    restore it from another post model       U_post S_post (V_ref Q')^T
 14    replace singular values                  U_post S_base V_post^T
 15    ablate the input-side rotation           U_base S_post V_post^T
 16    restore it from the output side          (U_base Q2) S_post V_post^T
=====  =======================================  =====================================

with Q1 = U_base^T U_post, Q2 = V_base^T V_post, Q' = U_ref^T U_post.

Eq. 13 (Appendix B.2) is reported for every matrix: Q1 = Q dQ1, Q2 = Q dQ2 with
the shared rotation Q = polar(polar(Q1) + polar(Q2)) (the orthogonal midpoint
of the two polar factors; equal to the geodesic midpoint P1 (P1^T P2)^{1/2}
when that exists) and dQi = Q^T Qi; the table gives the mean and max principal
angle (degrees) of the rotation part Q^T polar(Qi) of each residual.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from . import _core, adapters
from .comparison import Comparison
from ._outputs import FileSet, apply_umask, atomic_folder, cannot_replace
from ._terminal import printable
from ._validate import (
    KIND_GROUPS,
    KINDS,
    expert_label,
    group_name,
    normalize_cache,
    normalize_device,
    normalize_dtype,
    normalize_folder,
    normalize_kinds,
    normalize_layers,
    normalize_threads,
    normalize_warm_start,
)
from ._version import __version__
from .errors import InvalidArgumentError

PathLike = Union[str, "os.PathLike[str]"]
AlphaArg = Union[None, float, Mapping[str, float]]

logger = logging.getLogger("postsvd")

#: The construction numbers, as the paper numbers its equations.
CONSTRUCTIONS = (9, 10, 11, 12, 14, 15, 16)
#: The record written beside the weights.
RECORD_NAME = "postsvd_construction.json"
#: The definition of Eq. 13 used, for the record.
EQ13_DEFINITION = ("Q = polar(polar(Q1) + polar(Q2)); dQi = Q^T Qi (so Qi = Q dQi); angles: principal angles "
                   "(degrees) of the rotation part Q^T polar(Qi), i.e. |arg| of its eigenvalues; "
                   "defect_i = ||Qi^T Qi - I||_F / k")


def construction_info(number: int) -> Dict[str, Any]:
    """Name, formula, whether it needs ``ref`` and whether it takes alpha'."""
    return dict(_core.construction_info(_check_number(number)))


def _check_number(number) -> int:
    if isinstance(number, bool) or not isinstance(number, (int, np.integer, str)):
        raise InvalidArgumentError(f"construction: expected one of {_numbers_text()}, got {number!r}")
    try:
        value = int(number)
    except ValueError:
        raise InvalidArgumentError(f"construction: expected one of {_numbers_text()}, got {number!r}") from None
    if value not in CONSTRUCTIONS:
        raise InvalidArgumentError(
            f"construction: unknown construction {number!r}; expected one of {_numbers_text()} (the paper's "
            f"numbering; 13 is the Eq. 13 split, reported with every construction)")
    return value


def _numbers_text() -> str:
    return ", ".join(str(n) for n in CONSTRUCTIONS)


def _check_alpha_value(kind: str, value) -> float:
    if isinstance(value, bool):
        raise InvalidArgumentError(f"alpha: expected a positive finite number for kind {kind!r}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"alpha: expected a positive finite number for kind {kind!r}, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise InvalidArgumentError(f"alpha: expected a positive finite number for kind {kind!r}, got {value!r}")
    return number


def parse_alpha_text(text: str) -> Union[float, Dict[str, float]]:
    """'0.9' -> 0.9; 'q=0.9,o=1.4' -> {'q': 0.9, 'o': 1.4} (CLI syntax)."""
    text = text.strip()
    if "=" not in text:
        return _check_alpha_value("all", text)
    values: Dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise InvalidArgumentError(f"alpha: expected 'KIND=VALUE' items like 'q=0.9,o=1.4', got {text!r}")
        kind, value = (p.strip() for p in part.split("=", 1))
        values[kind] = _check_alpha_value(kind, value)
    return values


def _select_kinds(kinds, group, available: Sequence[str]) -> List[str]:
    if kinds is not None and group is not None:
        raise InvalidArgumentError("kinds and group: give one of them, not both")
    if group is not None:
        name = group_name(group)
        if name is None:
            raise InvalidArgumentError(
                f"group: unknown group {group!r}; expected one of {', '.join(KIND_GROUPS)} "
                f"(attention = {', '.join(KIND_GROUPS['attention'])}; mlp = {', '.join(KIND_GROUPS['mlp'])})")
        return [k for k in KIND_GROUPS[name] if k in available] if name == "all" else normalize_kinds(
            name, available)
    return normalize_kinds(kinds, available)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 24)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _weight_file_names(checkpoint) -> List[str]:
    names = [os.path.basename(p) for p in checkpoint.files()]
    if checkpoint.sharded:
        names.append("model.safetensors.index.json")
    return names


def _weight_files(folder: str) -> List[str]:
    """The safetensors files of a model folder, or an adapter folder's own weights file."""
    if adapters.is_adapter(folder):
        return [os.path.join(folder, "adapter_model.safetensors")]
    return list(_core.Checkpoint(folder).files())


def _copy_other_files(source: str, target: str, skip: Iterable[str]) -> List[str]:
    """Copies every entry of `source` except `skip` (the weights) bit for bit; links are followed.
    Modes are the source's less the umask, as `cp` makes them."""
    skipped = set(skip)
    copied = []
    for entry in sorted(os.listdir(source)):
        if entry in skipped or entry == RECORD_NAME:
            continue
        src = os.path.join(source, entry)
        dst = os.path.join(target, entry)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
            shutil.copystat(src, dst)
        apply_umask(dst)
        copied.append(entry)
    return copied


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


class ConstructionResult:
    """What :func:`construct` built: the folder, alpha' per kind, and a table
    with a row per (layer, kind): alpha', the relative change of the weights,
    and the Eq. 13 residual angles."""

    def __init__(self, number: int, out: str, alpha: Dict[str, float], alpha_source: str,
                 pooled_mean: Dict[str, float], rows: List[Dict[str, Any]], record: Dict[str, Any],
                 report: Dict[str, Any], seconds: float):
        info = _core.construction_info(number)
        self.number = number
        self.name = info["name"]
        self.formula = info["formula"]
        self.out = out
        self.alpha = alpha
        self.alpha_source = alpha_source
        self.pooled_mean = pooled_mean
        self.record = record
        self.backend = report["backend"]
        self.seconds = seconds
        self.timings = {key: report[key] for key in ("seconds_decompose", "seconds_construct", "seconds_write")}
        self.decompositions_computed = report["decompositions_computed"]
        self.decompositions_loaded = report["decompositions_loaded"]
        self._rows = rows

    @property
    def table(self) -> pd.DataFrame:
        """A row per (layer, kind): construction, alpha, relative_change
        (||W_new - W_post||_F / ||W_post||_F) and the Eq. 13 summary
        (dq1_/dq2_ mean and max angle in degrees, defect1/defect2 = ||Qi^T Qi - I||_F / k)."""
        records = []
        for r in self._rows:
            rot = r["rotation"]
            records.append({
                "layer": r["layer"], "kind": r["kind"], "expert": expert_label(r["expert"]), "in_features": r["rows"],
                "out_features": r["cols"], "construction": self.number, "alpha": r["alpha"],
                "relative_change": r["relative_change"],
                "dq1_mean_deg": rot["residual1"]["mean_deg"], "dq1_max_deg": rot["residual1"]["max_deg"],
                "dq2_mean_deg": rot["residual2"]["mean_deg"], "dq2_max_deg": rot["residual2"]["max_deg"],
                "defect1": rot["defect1"], "defect2": rot["defect2"], "tensor": r["tensor"],
            })
        table = pd.DataFrame(records)
        if not table.empty and (table["expert"] == -1).all():
            table = table.drop(columns=["expert"])
        return table

    def plot_rotations(self, kinds: Optional[Iterable[str]] = None):
        """Eq. 13 per layer: mean (solid) and max (dashed) residual angles of dQ1
        and dQ2, one panel per kind. Returns a matplotlib Figure."""
        from . import plots

        table = self.table
        chosen = [k for k in KINDS if k in set(table["kind"])] if kinds is None else normalize_kinds(
            kinds, sorted(set(table["kind"])))
        per_layer = {kind: table[table["kind"] == kind].groupby("layer").mean(numeric_only=True) for kind in chosen}
        return plots.plot_rotations(per_layer, title=f"Eq. 13 residual rotations (construction {self.number})")

    def summary(self) -> str:
        """A few lines for a person: construction, output folder, alpha' per kind, size of the change."""
        table = self.table
        lines = [f"construction {self.number} ({self.name}: {self.formula})", f"written to {printable(self.out)}"]
        if self.alpha:
            lines.append("alpha' (" + self.alpha_source + "): " +
                         ", ".join(f"{k}={v:g}" for k, v in self.alpha.items()))
        if not table.empty:
            lines.append(f"{len(table)} matrices; relative change mean {table['relative_change'].mean():.4g}, "
                         f"max {table['relative_change'].max():.4g}; Eq. 13 residual angle mean "
                         f"{table['dq1_mean_deg'].mean():.3g} / {table['dq2_mean_deg'].mean():.3g} deg "
                         f"(dQ1 / dQ2), max {table['dq1_max_deg'].max():.3g} / {table['dq2_max_deg'].max():.3g}")
        lines.append(f"{self.decompositions_computed} decompositions computed, {self.decompositions_loaded} "
                     f"loaded from the cache; {self.seconds:.1f} s on {self.backend}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<postsvd.ConstructionResult {self.number} ({self.name}) -> '{printable(self.out)}', "
                f"{len(self._rows)} matrices>")


def construct(number: int, base: PathLike, post: PathLike, out: PathLike, *, ref: Optional[PathLike] = None,
              alpha: AlphaArg = None, layers=None, kinds=None, group: Optional[str] = None, device: str = "cpu",
              dtype: str = "float32", force: bool = False, progress: bool = True, comparison=None,
              cache: Optional[PathLike] = None, rotations: bool = True,
              num_threads: Optional[int] = None, warm_start: Union[bool, str] = True,
              residual_base: bool = False) -> ConstructionResult:
    """Builds construction `number` of `post` (relative to `base`) as a new model folder `out`.

    Args:
        number: 9, 10, 11, 12, 14, 15 or 16 (see the module docstring).
        base, post: model folders of one architecture (config.json + safetensors). `post` (and `ref`)
            may be a PEFT LoRA adapter folder applied to `base`: the output holds W + ΔW for every
            projection the adapter changes and the construction leaves, and the base's other files;
            an adapter that changes other tensors (embeddings, lm_head, biases) is refused.
        out: the folder to write; it must not exist unless ``force=True`` (then
            the old folder is replaced only once the new one is complete).
        ref: another post model of the same base; construction 12 only.
        alpha: construction 9 only: alpha' for every kind (a float) or per kind
            (``{"q": 0.9, "o": 1.4}``); kinds left out, or all when None, get the
            Table 4 rule: the pooled mean top-90 % scaling factor of the kind
            over the selected layers, rounded to one decimal.
        layers: None (all), an int, a list, or text like '0,1,5-9'.
        kinds: None (all), a list or text of q, k, v, o, gate, up, down.
        group: instead of kinds: 'attention' (q, k, v, o), 'mlp' (gate, up, down) or 'all'.
        device: 'cpu' or 'cuda' (a CUDA build). dtype: working precision 'float32' / 'float64'.
        progress: a tqdm bar, and alpha' printed to stderr.
        comparison: a :class:`postsvd.Comparison` of the same base and post whose
            kind table gives the Table 4 alpha' without decomposing again.
        cache: a factor cache folder: decompositions are loaded from it when
            present and saved to it otherwise, so later constructions of the same
            models (10, 11, 15, 16, ...) decompose nothing again. The same folder
            given to :func:`postsvd.compare` (``cache=``) shares its decompositions.
        rotations: compute the Eq. 13 summary (costs a few k x k products per matrix).
        num_threads: CPU threads for LAPACK/BLAS (None = all cores).
        warm_start: as in :func:`postsvd.compare`: a post decomposition not in the
            cache starts from the base's factors (True/'auto', 'always', False/'off').
        residual_base: as in :func:`postsvd.compare`: `base` is the residual model an adapter's
            initialization left (PiSSA, OLoRA, ...).

    Returns:
        A :class:`ConstructionResult` (``.table``, ``.alpha``, ``.plot_rotations()``).

    Raises:
        InvalidArgumentError: unknown construction, kind or group; 12 without
            ref; alpha not positive and finite; out exists without force.
        BadCheckpointError: missing or mismatched models.
        Any error or KeyboardInterrupt leaves no output and no temporary folder.
    """
    started = time.perf_counter()
    number = _check_number(number)
    info = _core.construction_info(number)
    base_path = normalize_folder(base, "base")
    post_path = normalize_folder(post, "post")
    ref_path = ""
    if info["needs_ref"]:
        if ref is None:
            raise InvalidArgumentError(
                "construction 12 needs ref: another post model of the same base (--ref in the CLI)")
        ref_path = normalize_folder(ref, "ref")
    elif ref is not None:
        raise InvalidArgumentError(f"ref: only construction 12 uses a reference model; construction {number} "
                                   f"does not")
    if alpha is not None and not info["uses_alpha"]:
        raise InvalidArgumentError(
            f"alpha: only construction 9 takes alpha'; construction {number} does not"
            + (" (14 is 9 with alpha' = 1)" if number == 14 else ""))
    precision = normalize_dtype(dtype)
    device_kind, device_ids = normalize_device(device)
    threads = normalize_threads(num_threads)
    if comparison is not None:
        _check_comparison(comparison, base_path, post_path)
    try:
        out_path = os.fspath(out)
    except TypeError:
        raise InvalidArgumentError(f"out: expected a folder path, got {type(out).__name__}") from None
    out_path = os.path.abspath(out_path)
    for name, source in (("base", base_path), ("post", post_path), ("ref", ref_path)):
        if source and _same_folder(source, out_path):
            raise InvalidArgumentError(f"out: '{out_path}' is the {name} model's folder; choose another folder")
    if os.path.lexists(out_path):
        if not force:
            raise InvalidArgumentError(
                f"out: '{out_path}' already exists; pass force=True (--force) to replace it")
        if not os.path.isdir(out_path) or os.path.islink(out_path):
            raise InvalidArgumentError(f"out: '{out_path}' exists and is not a folder; remove it first")
        reason = cannot_replace(out_path)
        if reason:
            raise InvalidArgumentError(f"out: '{out_path}' cannot be replaced in one step: {reason}; remove it "
                                       f"first or choose another folder")
    parent = os.path.dirname(out_path)
    if not os.path.isdir(parent):
        raise InvalidArgumentError(f"out: the parent folder '{parent}' does not exist")

    post_checkpoint = _core.Checkpoint(post_path, base_path, bool(residual_base))
    arch = _core.detect_architecture(post_checkpoint)
    files_from = post_checkpoint.weights_folder  # an adapter's: its base's config, tokenizer and other files
    available = [k for k in KINDS if any(s["kind"] == k for s in arch["matrices"])]
    chosen_kinds = _select_kinds(kinds, group, available)
    chosen_layers = normalize_layers(layers, arch["num_layers"], arch["model_type"])
    cache_path = normalize_cache(cache)

    # alpha' (construction 9 only).
    alphas: Dict[str, float] = {}
    pooled: Dict[str, float] = {}
    alpha_source = ""
    if info["uses_alpha"]:
        given: Dict[str, float] = {}
        if isinstance(alpha, Mapping):
            for kind, value in alpha.items():
                if kind not in KINDS:
                    raise InvalidArgumentError(f"alpha: unknown kind {kind!r}; valid kinds are {', '.join(KINDS)}")
                if kind not in available:  # e.g. DeepSeek's MLA q_a on a llama model: it would be ignored
                    raise InvalidArgumentError(f"alpha: this {arch['model_type']} model has no {kind!r} matrices; "
                                               f"its kinds are {', '.join(available)}")
                given[kind] = _check_alpha_value(kind, value)
        elif alpha is not None:
            value = _check_alpha_value("all", alpha)
            given = {k: value for k in chosen_kinds}
        missing = [k for k in chosen_kinds if k not in given]
        if missing:
            pooled = _default_pooled_mean(comparison, base_path, post_path, missing, chosen_layers, precision,
                                          device_kind, device_ids, threads, cache_path, bool(residual_base))
            for kind in missing:
                chosen = _core.table4_alpha(pooled[kind])
                if not chosen > 0:
                    raise InvalidArgumentError(
                        f"alpha: the Table 4 rule gives alpha' = {chosen} for kind {kind!r} (pooled mean scaling "
                        f"{pooled[kind]:.4g}); give alpha explicitly")
                given[kind] = chosen
        alphas = {k: given[k] for k in chosen_kinds}
        alpha_source = "given" if not missing else ("Table 4 rule" if len(missing) == len(chosen_kinds)
                                                    else "given + Table 4 rule")
        message = "alpha' per kind (" + alpha_source + "): " + ", ".join(f"{k}={v:g}" for k, v in alphas.items())
        logger.info(message)
        if progress:
            print(f"postsvd construct {number}: {message}", file=sys.stderr)

    from tqdm.auto import tqdm

    # Built in a hidden folder beside out (normal permissions), swapped into place when complete. What it may
    # hold: the post folder's entries (its weights rewritten, the rest copied) and the record.
    entries = [e + "/" if os.path.isdir(os.path.join(files_from, e)) else e for e in sorted(os.listdir(files_from))]
    files = FileSet("a construction", [*entries, *_weight_file_names(post_checkpoint), RECORD_NAME], literal=True)
    with atomic_folder(out_path, files=files, replace_all=True) as temp:
        copied = _copy_other_files(files_from, temp, _weight_file_names(post_checkpoint))
        with tqdm(total=None, desc=f"construction {number}", unit="matrix", disable=not progress,
                  leave=True) as bar:
            def on_progress(done: int, total: int, what: str) -> None:
                if bar.total != total:
                    bar.total = total
                bar.n = done
                bar.set_postfix_str(what, refresh=True)

            report = _core.construct_checkpoint(
                number, base_path, post_path, temp, ref=ref_path, alpha=alphas, layers=chosen_layers,
                kinds=chosen_kinds, precision=precision, device=device_kind, device_ids=device_ids,
                num_threads=threads, factor_cache=cache_path, rotations=rotations, progress=on_progress,
                warm_start=normalize_warm_start(warm_start), residual_base=bool(residual_base))
        sources = {"base": base_path, "post": post_path}
        if ref_path:
            sources["ref"] = ref_path
        record = {
            "construction": number,
            "name": info["name"],
            "formula": info["formula"],
            "alpha": alphas,
            "alpha_source": alpha_source or None,
            "pooled_mean_scaling": pooled,
            "layers": chosen_layers,
            "kinds": chosen_kinds,
            "sources": {
                role: {"folder": os.path.abspath(folder),
                       "safetensors_sha256": {os.path.basename(p): _sha256(p) for p in _weight_files(folder)}}
                for role, folder in sources.items()},
            "postsvd_version": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": report["backend"],
            "device": device_kind,
            "dtype": precision,
            "eq13": EQ13_DEFINITION,
            "copied_files": copied,
            "written_files": list(report["written_files"]),
            "table": [_record_row(row, rotations) for row in report["rows"]],
        }
        with open(os.path.join(temp, RECORD_NAME), "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    result = ConstructionResult(number, out_path, alphas, alpha_source, pooled, list(report["rows"]), record,
                                report, time.perf_counter() - started)
    logger.info("construction %d written to %s", number, out_path)
    return result


def _record_row(row: Dict[str, Any], rotations: bool) -> Dict[str, Any]:
    record = {key: value for key, value in row.items() if key != "rotation"}
    if rotations:
        rot = row["rotation"]
        for name, key in (("dq1", "residual1"), ("dq2", "residual2")):
            record[f"{name}_mean_deg"] = rot[key]["mean_deg"]
            record[f"{name}_max_deg"] = rot[key]["max_deg"]
    return record




def _check_comparison(comparison, base_path: str, post_path: str) -> None:
    """`comparison` is a Comparison of these two folders (its alpha' would be wrong for others)."""
    if not isinstance(comparison, Comparison):
        raise InvalidArgumentError(f"comparison: expected a postsvd.Comparison, got {type(comparison).__name__}")
    for role, given, compared in (("base", base_path, comparison.base), ("post", post_path, comparison.post)):
        if not _same_folder(given, compared):
            raise InvalidArgumentError(f"comparison: it compared {role} '{compared}', the construction's {role} is "
                                       f"'{given}'")


def _default_pooled_mean(comparison, base_path: str, post_path: str, kinds: List[str], layers: List[int],
                         precision: str, device: str, device_ids: List[int], threads: int,
                         cache_path: str, residual_base: bool = False) -> Dict[str, float]:
    """Pooled mean top-90 % scaling per kind: from a Comparison when given, else decomposed here."""
    if comparison is not None:
        kind_table = comparison.kind_table()
        covered = set(kind_table["kind"])
        lacking = [k for k in kinds if k not in covered]
        if lacking:
            raise InvalidArgumentError(
                f"comparison: it has no {', '.join(lacking)}; compare those kinds too or give alpha")
        compared_layers = set(getattr(comparison, "layers", layers))
        if not set(layers) <= compared_layers:
            raise InvalidArgumentError(
                f"comparison: it covers layers {sorted(compared_layers)}, the construction selects {layers}")
        return {k: float(kind_table.loc[kind_table["kind"] == k, "scaling_mean"].iloc[0]) for k in kinds}
    choice = _core.default_alpha(base_path, post_path, layers, kinds, precision, device, device_ids, threads,
                                 cache_path, residual_base)
    return {k: float(choice["pooled_mean"][k]) for k in kinds}
