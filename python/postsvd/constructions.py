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

from . import _core, adapters, hub
from . import interactive as _interactive
from ._display import display_figure
from ._engine import Fetcher, named_models, select_batches
from ._html import display, escape as _e, small_table
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
    normalize_kinds,
    normalize_layers,
    normalize_threads,
    normalize_warm_start,
)
from ._version import __version__
from .errors import InvalidArgumentError, naming_models

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


def _copy_other_files(files: Mapping[str, str], target: str) -> List[str]:
    """Copies the model's files besides its weights (hub.other_files: name -> path) bit for bit; links are
    followed. Modes are the source's less the umask, as `cp` makes them."""
    copied = []
    for entry, src in files.items():
        if entry == RECORD_NAME:
            continue
        dst = os.path.join(target, entry)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
            shutil.copystat(src, dst)
        apply_umask(dst)
        copied.append(entry)
    return copied


def _source_record(model: "hub.ResolvedModel") -> Dict[str, Any]:
    """What the record says about a model read: its name (a Hub model's repo id, revision, commit), its folder,
    and the sha256 of each weight file (a Hub model's as the Hub lists them, without reading partial files; a
    PEFT adapter's own weights file)."""
    if model.is_local and adapters.is_adapter(model.folder):
        digests = {adapters.WEIGHTS: _sha256(os.path.join(model.folder, adapters.WEIGHTS))}
    elif model.is_local:
        digests = {os.path.basename(p): _sha256(p) for p in _core.Checkpoint(model.folder).files()}
    else:
        digests = hub.weight_sha256(model)
    return {"folder": os.path.abspath(model.folder), "model": model.record(), "safetensors_sha256": digests}


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

        return plots.plot_rotations(self._per_layer(kinds),
                                    title=f"Eq. 13 residual rotations (construction {self.number})")

    def _per_layer(self, kinds: Optional[Iterable[str]] = None) -> Dict[str, pd.DataFrame]:
        """kind -> the table's means per layer (the layer's matrices: experts pooled)."""
        table = self.table
        chosen = [k for k in KINDS if k in set(table["kind"])] if kinds is None else normalize_kinds(
            kinds, sorted(set(table["kind"])))
        return {kind: table[table["kind"] == kind].groupby("layer").mean(numeric_only=True) for kind in chosen}

    def interactive_rotations(self, kinds: Optional[Iterable[str]] = None):
        """Eq. 13 per layer with hover values (layer, kind, mean and max angles of dQ1 and dQ2, the relative
        change). A plotly Figure (``postsvd[interactive]``)."""
        return _interactive.rotations_figure(self._per_layer(kinds),
                                             title=f"Eq. 13 residual rotations (construction {self.number})")

    def _kind_rows(self) -> List[list]:
        table = self.table
        rows = []
        for kind in [k for k in KINDS if k in set(table["kind"])]:
            part = table[table["kind"] == kind]
            rows.append([kind, len(part), f"{part['alpha'].iloc[0]:g}" if part["alpha"].nunique() == 1 else "varies",
                         f"{part['relative_change'].mean():.4g}", f"{part['relative_change'].max():.4g}",
                         f"{part['dq1_mean_deg'].mean():.3g} / {part['dq2_mean_deg'].mean():.3g}"])
        return rows

    def _repr_html_(self) -> str:
        """The rich display in Jupyter: what was built, per kind alpha' and the size of the change, and the Eq. 13
        residual rotations per layer (interactive with ``postsvd[interactive]``, else a small PNG)."""
        lines = self.summary().splitlines()
        body = [f'<div class="pd-reading">{_e(lines[0])}; {_e(lines[1])}</div>']
        if not self.table.empty:
            body.append(small_table(["kind", "matrices", "α′", "relative change mean", "max",
                                     "Eq. 13 angle dQ1 / dQ2 (deg)"], self._kind_rows()))
            body.append(display_figure(self.interactive_rotations, self.plot_rotations,
                                       "Eq. 13 residual rotations per layer"))
        hint = ("More: <code>.table</code> (a row per matrix), <code>.summary()</code>; the model folder loads in "
                "transformers as it is.")
        return display("postsvd.ConstructionResult", f"construction {self.number} ({self.name}), "
                       f"{len(self._rows)} matrices, {self.seconds:.1f} s on {self.backend}", body, hint)

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
        """A few lines: the construction, where it was written, alpha', the size of the change (the summary)."""
        return "<postsvd.ConstructionResult " + "\n  ".join(self.summary().splitlines()) + ">"


def construct(number: int, base: PathLike, post: PathLike, out: PathLike, *, ref: Optional[PathLike] = None,
              alpha: AlphaArg = None, layers=None, kinds=None, group: Optional[str] = None, device: str = "cpu",
              dtype: str = "float32", force: bool = False, progress: bool = True, comparison=None,
              cache: Optional[PathLike] = None, rotations: bool = True,
              num_threads: Optional[int] = None, warm_start: Union[bool, str] = True,
              whole_files: bool = False, residual_base: bool = False) -> ConstructionResult:
    """Builds construction `number` of `post` (relative to `base`) as a new model folder `out`.

    Args:
        number: 9, 10, 11, 12, 14, 15 or 16 (see the module docstring).
        base, post: models of one architecture: folders (config.json + safetensors) or Hub repo
            ids (``org/name[@revision]``). Of a Hub post model every tensor is fetched (the
            new folder holds all of them) with its other files (tokenizer, ...); of a Hub base
            (and ref) only the selected matrices. `post` (and `ref`) may be a PEFT LoRA adapter
            (a folder or a Hub repo) applied to `base`: the output holds W + ΔW for every
            projection the adapter changes and the construction leaves, and the base's other
            files (so every tensor of a Hub base is fetched); an adapter that changes other
            tensors (embeddings, lm_head, biases) is refused.
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
        whole_files: Hub models: fetch whole shards instead of the tensors' byte ranges.
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
    base_model, post_model, ref_model = _models(number, base, post, ref)
    base_path, post_path = base_model.folder, post_model.folder
    ref_path = ref_model.folder if ref_model is not None else ""
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

    # An error about one model's data names it as written here (a Hub id or a folder).
    models = named_models(("base", base_model), ("post", post_model), ("ref", ref_model))
    with naming_models(*models):
        post_checkpoint = _core.Checkpoint(post_path, base_path, bool(residual_base))
        arch = _core.detect_architecture(post_checkpoint)
    chosen_layers, chosen_kinds = _selection(arch, layers, kinds, group)
    available = _kinds_of(arch)
    cache_path = normalize_cache(cache)

    # alpha' (construction 9 only): the given values are checked first, then the models fetched, then the rest.
    alphas: Dict[str, float] = {}
    pooled: Dict[str, float] = {}
    alpha_source = ""
    given: Dict[str, float] = {}
    if info["uses_alpha"]:
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
    # Hub models: every tensor of post (the new folder holds them all; an adapter's: its base's), the selected
    # matrices of base and ref.
    written = base_model if post_checkpoint.adapter is not None else post_model
    hub.fetch(written, None, whole_files=whole_files, progress=progress or None)
    selected = [i for batch in select_batches(arch, chosen_layers, chosen_kinds, None).values() for i in batch]
    with naming_models(*models):
        _fetcher(base_model, ref_model, residual_base, whole_files).fetch(selected)
    others = hub.other_files(written)
    if info["uses_alpha"]:
        missing = [k for k in chosen_kinds if k not in given]
        if missing:
            with naming_models(*models):
                pooled = _default_pooled_mean(comparison, base_path, post_path, missing, chosen_layers, precision,
                                              device_kind, device_ids, threads, cache_path, bool(residual_base))
            for kind in missing:
                chosen = _core.table4_alpha(pooled[kind])
                if not (math.isfinite(chosen) and chosen > 0):
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
    entries = [e + "/" if os.path.isdir(path) else e for e, path in others.items()]
    files = FileSet("a construction", [*entries, *_weight_file_names(post_checkpoint), RECORD_NAME], literal=True)
    with atomic_folder(out_path, files=files, replace_all=True) as temp:
        copied = _copy_other_files(others, temp)
        with tqdm(total=None, desc=f"construction {number}", unit="matrix", disable=not progress,
                  leave=True) as bar:
            def on_progress(done: int, total: int, what: str) -> None:
                if bar.total != total:
                    bar.total = total
                bar.n = done
                bar.set_postfix_str(what, refresh=True)

            with naming_models(*models):
                report = _core.construct_checkpoint(
                    number, base_path, post_path, temp, ref=ref_path, alpha=alphas, layers=chosen_layers,
                    kinds=chosen_kinds, precision=precision, device=device_kind, device_ids=device_ids,
                    num_threads=threads, factor_cache=cache_path, rotations=rotations, progress=on_progress,
                    warm_start=normalize_warm_start(warm_start), residual_base=bool(residual_base))
        sources = {"base": base_model, "post": post_model}
        if ref_model is not None:
            sources["ref"] = ref_model
        record = {
            "construction": number,
            "name": info["name"],
            "formula": info["formula"],
            "alpha": alphas,
            "alpha_source": alpha_source or None,
            "pooled_mean_scaling": pooled,
            "layers": chosen_layers,
            "kinds": chosen_kinds,
            "sources": {role: _source_record(model) for role, model in sources.items()},
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


def _models(number: int, base, post, ref):
    """base, post and ref (None unless construction 12) as models (hub.resolve); ref checked against the number."""
    info = _core.construction_info(number)
    base_model, post_model = hub.resolve(base, "base"), hub.resolve(post, "post")
    if info["needs_ref"]:
        if ref is None:
            raise InvalidArgumentError(
                "construction 12 needs ref: another post model of the same base (--ref in the CLI)")
        return base_model, post_model, hub.resolve(ref, "ref")
    if ref is not None:
        raise InvalidArgumentError(f"ref: only construction 12 uses a reference model; construction {number} "
                                   f"does not")
    return base_model, post_model, None


def _kinds_of(arch: Dict[str, Any]) -> List[str]:
    """The kinds the model has, in the paper's order."""
    return [k for k in KINDS if any(s["kind"] == k for s in arch["matrices"])]


def _selection(arch: Dict[str, Any], layers, kinds, group):
    """The selected layers and kinds of the post model's architecture."""
    chosen_kinds = _select_kinds(kinds, group, _kinds_of(arch))
    return normalize_layers(layers, arch["num_layers"], arch["model_type"]), chosen_kinds


def _fetcher(base: "hub.ResolvedModel", ref: Optional["hub.ResolvedModel"], residual_base: bool,
             whole_files: bool = False) -> Fetcher:
    """The Fetcher of a construction's base and ref (an adapter ref applies to the base: nothing of it to fetch)."""
    return Fetcher([(m, _core.Checkpoint(m.folder, base.folder, bool(residual_base)))
                    for m in (base, ref) if m is not None], whole_files)


def fetch_plans(number: int, base: PathLike, post: PathLike, *, ref: Optional[PathLike] = None, layers=None,
                kinds=None, group: Optional[str] = None, whole_files: bool = False,
                residual_base: bool = False) -> List["hub.FetchPlan"]:
    """What :func:`construct` would fetch (its dry run): a :class:`postsvd.hub.FetchPlan` per model, every
    tensor of post (a PEFT adapter post: every tensor of base), the selected matrices of base (and ref); empty
    for local folders."""
    number = _check_number(number)
    models = _models(number, base, post, ref)
    post_checkpoint = _core.Checkpoint(models[1].folder, models[0].folder, bool(residual_base))
    arch = _core.detect_architecture(post_checkpoint)
    chosen_layers, chosen_kinds = _selection(arch, layers, kinds, group)
    selected = [i for batch in select_batches(arch, chosen_layers, chosen_kinds, None).values() for i in batch]
    written = models[0] if post_checkpoint.adapter is not None else models[1]
    wanted = {m.folder: names for m, names in _fetcher(models[0], models[2], residual_base).tensors(selected)}
    return [hub.plan(m, None if m is written else wanted.get(m.folder, []), whole_files=whole_files)
            for m in models if m is not None]


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
