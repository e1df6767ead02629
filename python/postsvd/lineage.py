"""Is model B derived from model A? :func:`lineage` and ``postsvd lineage A B``.

The paper (He and Cao, arXiv 2509.17866, App. F) proposes I_orth as a fingerprint: a
post-trained copy keeps near-identity I_orth against its base, separately pretrained models
do not. That reading breaks under function-preserving disguises (a rotation of the residual
stream, permuted MLP units or heads, rescaled heads), which change the singular vectors without
changing a single output. This module asks the question as a statistical test that is invariant
to those disguises (docs/lineage.md has the reasoning and the references):

1. Alignment without trusting any basis. Every residual-stream vector of a model (embedding and
   unembedding rows, the rows of q, k, v, gate, up with the RMSNorm weights folded in, the
   output columns of o and down) turns by the same orthogonal R under a residual rotation. Each
   vector is read through the model's own *probes* (its embedding rows and its unembedding rows,
   whitened): the probe profile of a vector is unchanged by R. Profiles are compared through one
   cross-Gram matrix C = T_A P_A^T P_B T_B, so nothing of size vocab x units is formed.
2. MLP test (Zhu, Ahmed, Kuditipudi and Liang 2025): per layer, match B's hidden units to A's
   twice, once by the gate rows and once by the up rows (made orthogonal to the same unit's gate
   row, so that a within-unit coupling of gate and up cannot make two matchings agree), with
   the Hungarian algorithm on |cosine|. In a derived pair both matchings find the same
   partner for almost every unit; in independent models they are two unrelated permutations,
   whose agreements (fixed points of one relative to the other) are about Poisson(1). The null
   rate is checked on control pairs that share no units under either hypothesis (layer l of A
   against layer l+1 of B); where those agree more often than 1, their mean is the null rate.
   p-value per layer: P(Poisson(rate) >= agreements); layers combine by Fisher's method.
3. Attention: KV groups, then the query heads inside each group, are matched on the per-head
   invariant products W_Q,h W_K,h^T and W_V,h W_O,h (Zeng et al. 2024, HuRef), which do not
   move under per-head Q/K or V/O rescaling. The agreement of the QK and the OV matchings has an
   exact null (independent uniform permutations per group); with a handful of heads it cannot
   reach a strict level alone, so these rows are evidence and do not enter the verdict.

Cosines make every statistic blind to uniform scaling. The verdict at `level`: derived (combined
p < level), independent (the test could have reached the level and did not), inconclusive (it
could not, or the pair is out of scope: tokens at other ids, another depth, width or residual-stream layout).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from . import _core, hub
from . import interactive as _interactive
from ._display import display_figure, use_interactive
from ._engine import named_models
from ._html import data_table, display, escape as _e, figure as _figure, model_row, page, run_metadata, small_table
from ._outputs import FileSet, atomic_folder
from ._terminal import printable
from ._validate import normalize_layers, normalize_output_folder, normalize_threads
from ._version import __version__
from .compare import check_compare_arguments, compare
from .errors import InvalidArgumentError, naming_models
from .readings import random_rotation_nf

PathLike = Union[str, "os.PathLike[str]"]

#: The significance level of the verdict unless the caller names another.
DEFAULT_LEVEL = 0.01
#: The rows of the core's architecture table by model_type; each row's `lineage` facts name the residual
#: stream's tensors (embedding, unembedding or tied, final norm), where the norms sit and how they act, and the
#: router of a layer with routed experts.
_FAMILIES = {row["model_type"]: row for row in _core.architecture_families() if row["lineage"] is not None}
#: model_type values lineage reads.
SUPPORTED_MODEL_TYPES = tuple(_FAMILIES)
#: The stored dtypes lineage reads embeddings and norms in (the core's plain floats).
_FLOAT_DTYPES = tuple(d["name"] for d in _core.dtypes() if d["float"])
#: Eigenvalues of a probe Gram matrix below this fraction of the largest are raised to it (whitening ridge).
WHITENING_RIDGE = 1e-3
#: The files :meth:`Lineage.save` writes.
LINEAGE_FILES = FileSet("a lineage result", ["lineage.json", "lineage.csv", "lineage.html"])
VERDICTS = ("derived", "independent", "inconclusive")
#: Probe rows read at a time (the embedding matrices of large vocabularies are read in slices).
_PROBE_CHUNK = 16384
#: The norms of a layer the test reads (the architecture table's names; empty where a family has none).
_LAYER_NORMS = ("norm_before_attention", "norm_after_attention", "norm_before_mlp", "norm_after_mlp", "q_norm",
                "k_norm", "q_latent_norm", "kv_latent_norm")


# ---------------------------------------------------------------------- public API

def lineage(a: PathLike, b: PathLike, *, level: float = DEFAULT_LEVEL, layers=None, paper_nf: bool = True,
            device: str = "cpu", dtype: str = "float32", kinds=None, num_threads: Optional[int] = None,
            cache: Optional[PathLike] = None, progress: bool = False, whole_files: bool = False,
            residual_base: bool = False) -> "Lineage":
    """Tests whether model `b` is derived from model `a` (fine-tuned, post-trained, possibly disguised).

    Args:
        a, b: models (a folder with config.json + safetensors, or a Hub repo id ``org/name[@revision]``:
            only the tensors the test reads are fetched) of any architecture postsvd reads (dense, MoE, MLA;
            docs/lineage.md says per architecture what the test undoes), in any stored format it reads
            (BF16, FP8, ...); the two may differ in format, and in model type where both read the residual
            stream alike (a dense model and its MoE upcycling). `b` may be a PEFT LoRA adapter (a folder or
            a Hub repo): it is applied to `a` (docs/adapters.md; `residual_base` as in
            :func:`postsvd.compare`).
        level: significance level of the verdict (0 < level < 1).
        layers: the layers to test (None = all), as in :func:`postsvd.compare`.
        paper_nf: also compute the paper's NF per (layer, kind) (App. F's fingerprint, not robust to
            the disguises) through :func:`postsvd.compare`; device, dtype, kinds and cache go to that
            comparison (checked before anything is computed).
        num_threads: CPU threads of the comparison and, where threadpoolctl is installed, of numpy's BLAS.
        progress: show progress bars (one per layer of the test, and the comparison's).
        whole_files: Hub models: fetch whole shards instead of the tensors' byte ranges.

    Returns:
        A :class:`Lineage`: ``verdict``, ``p_value``, ``table`` (a row per layer and block),
        ``alignments``, ``nf_table``, ``summary()``, ``to_html()``, ``save(out)``.

    Raises:
        BadCheckpointError: a folder is missing or malformed (the message names it).
        InvalidArgumentError: a bad level or layer, an unsupported model_type (naming the folder).
    """
    level = _check_level(level)
    if num_threads is not None:
        normalize_threads(num_threads)
    with _blas_threads(num_threads):
        return _lineage(a, b, level, layers, paper_nf, dict(device=device, dtype=dtype, kinds=kinds,
                                                            num_threads=num_threads, cache=cache, progress=progress,
                                                            whole_files=whole_files, residual_base=residual_base))


def tested_layers(model_a: "_Model", model_b: "_Model", layers) -> Dict[str, List[int]]:
    """The layers the test reads of each model: the chosen ones, and of B also each one's successor (the
    control pairs: layer l of A against layer l+1 of B)."""
    chosen = normalize_layers(layers, model_a.num_layers, model_a.model_type) if layers is not None else \
        list(range(model_a.num_layers))
    controls = {(layer + 1) % model_a.num_layers for layer in chosen} if model_a.num_layers > 1 else set()
    return {"a": chosen, "b": sorted(set(chosen) | controls)}


def fetch_plans(a: PathLike, b: PathLike, *, layers=None, whole_files: bool = False,
                residual_base: bool = False) -> List["hub.FetchPlan"]:
    """What :func:`lineage` would fetch of each model (its dry run): a :class:`postsvd.hub.FetchPlan` per
    model (empty for a local folder; a PEFT adapter B reads A's weights, in A's plan)."""
    model_a = _Model(hub.resolve(a, "a"), "a")
    model_b = _Model(hub.resolve(b, "b"), "b", model_a.model, residual_base)
    if out_of_scope(model_a, model_b):
        return [hub.plan(model_a.model, []), hub.plan(model_b.model, [])]
    read = tested_layers(model_a, model_b, layers)
    wanted: Dict[str, List[str]] = {}
    for m in (model_a, model_b):
        wanted.setdefault(m.weights.folder, []).extend(m.tensors(read[m.label]))
    return [hub.plan(m.model, wanted.get(m.model.folder, []), whole_files=whole_files) for m in (model_a, model_b)]


def _lineage(a, b, level, layers, paper_nf, compare_options) -> "Lineage":
    # An error about one model's data names it as written here (the comparison calls them base and post).
    resolved_a, resolved_b = hub.resolve(a, "a"), hub.resolve(b, "b")
    with naming_models(*named_models(("a", resolved_a), ("b", resolved_b))):
        model_a = _Model(resolved_a, "a")
        model_b = _Model(resolved_b, "b", resolved_a, compare_options["residual_base"])  # an adapter: on A
        return _lineage_of(model_a, model_b, level, layers, paper_nf, compare_options)


def _lineage_of(model_a, model_b, level, layers, paper_nf, compare_options) -> "Lineage":
    models = (model_a.model, model_b.model)
    reasons = out_of_scope(model_a, model_b)
    if reasons:
        return Lineage(model_a.folder, model_b.folder, level, reasons=reasons, models=models)
    read = tested_layers(model_a, model_b, layers)
    chosen = read["a"]
    # The paper's NF compares projection pairs: only models of the same projections (not a dense parent and
    # its MoE upcycling) have them.
    paper_nf = paper_nf and model_a.model_type == model_b.model_type and model_a.shapes() == model_b.shapes()
    if paper_nf:  # the comparison's options fail now, not after the test
        check_compare_arguments(model_a.model, [model_b.model], layers=chosen,
                                **{k: v for k, v in compare_options.items() if k not in ("progress", "whole_files")})
    for model in (model_a, model_b):  # a Hub model: what the test reads (the comparison fetches its own)
        hub.fetch(model.weights, model.tensors(read[model.label]), whole_files=compare_options["whole_files"],
                  progress=compare_options["progress"] or None)
    from tqdm.auto import tqdm

    probes = _ProbePair(model_a, model_b)
    rows, controls = [], []
    moves: Dict[str, list] = {"units": [], "experts": [], "heads": [], "head_scales": []}
    for layer in tqdm(chosen, desc="lineage", unit="layer", disable=not compare_options["progress"]):
        rows.append(_mlp_row(model_a, model_b, probes, layer, moves))
        rows.append(_attention_row(model_a, model_b, probes, layer, moves))
        if model_a.num_layers > 1:  # a control pair: layer l of A, layer l+1 of B
            control = _mlp_test(model_a, model_b, probes, layer, (layer + 1) % model_a.num_layers)
            if control is not None:
                controls.append((control["agreements"], control["pairs"]))
    table = _with_p_values(pd.DataFrame(rows), controls)
    nf_table = None
    if paper_nf:
        nf_table = compare(model_a.model, model_b.model, layers=chosen, **compare_options).table
        nf_table = nf_table[["layer", "kind", "k", "nf"]].copy()
        nf_table["nf_random"] = [random_rotation_nf(int(k)) for k in nf_table["k"]]
    return Lineage(model_a.folder, model_b.folder, level, table=table,
                   alignments=_alignments(model_a, model_b, probes, moves), nf_table=nf_table, models=models)


def out_of_scope(model_a: "_Model", model_b: "_Model") -> List[str]:
    """Why the pair cannot be tested (an empty list when it can): another residual-stream layout, tokens
    indexed otherwise, other depth or widths, MLP layers that cannot be paired."""
    reasons = []
    if model_a.layout() != model_b.layout():
        reasons.append(f"the architectures differ ({model_a.model_type}: {model_a.layout_text()}; "
                       f"{model_b.model_type}: {model_b.layout_text()}): the residual streams are not read alike")
    reasons += _token_rows(model_a, model_b)[1]
    if model_a.num_layers != model_b.num_layers:
        reasons.append(f"the depths differ ({model_a.num_layers} and {model_b.num_layers} layers): a pruned or "
                       "depth-upscaled copy is out of scope for this test")
    widths = [(name, x, y) for name, x, y in zip(model_a.width_names(), model_a.widths(), model_b.widths())
              if x != y] if model_a.attention == model_b.attention else []
    if model_a.hidden != model_b.hidden:
        widths.insert(0, ("hidden", model_a.hidden, model_b.hidden))
    if widths:
        reasons.append("the widths differ (" + ", ".join(f"{n} {x} and {y}" for n, x, y in widths) +
                       "): a width-pruned or widened copy is out of scope for this test")
    if model_a.num_layers == model_b.num_layers and model_a.hidden == model_b.hidden:
        for layer in range(model_a.num_layers):
            problem = _pairing_problem(model_a.mlp_layout(layer), model_b.mlp_layout(layer))
            if problem:
                reasons.append(f"layer {layer}: {problem}")
                break
    return reasons


def _token_rows(model_a: "_Model", model_b: "_Model") -> Tuple[int, List[str]]:
    """The token rows both models index alike (the first ones: a fine-tune that adds tokens appends rows), and
    why they cannot be compared. Rows that both tokenizer.json tables name differently are tokens
    re-indexed: the probes would read other tokens, so the pair is out of scope."""
    rows = min(model_a.vocab, model_b.vocab)
    table_a, table_b = model_a.token_table(), model_b.token_table()
    if table_a is not None and table_b is not None:
        ids_a = {i: t for t, i in table_a.items() if isinstance(i, int) and 0 <= i < rows}
        ids_b = {i: t for t, i in table_b.items() if isinstance(i, int) and 0 <= i < rows}
        moved = sum(1 for i, token in ids_a.items() if i in ids_b and ids_b[i] != token)
        if moved:
            return rows, [f"the tokenizers map tokens to other ids ({moved} of the {rows} shared token ids hold "
                          "another token in tokenizer.json): the residual-stream alignment reads both models "
                          "through the same tokens"]
    return rows, []


class Lineage:
    """The answer of :func:`lineage`: a verdict with the figures behind it.

    Attributes:
        a, b: the two folders the core read (a Hub model's: its folder in postsvd's cache).
        a_model, b_model: the two models as named (:class:`postsvd.hub.ResolvedModel`).
        level: the significance level.
        verdict: 'derived', 'independent' or 'inconclusive'.
        p_value: the combined p-value of the MLP unit tests (Fisher's method over layers); None when
            the pair is out of scope. ``log10_p`` keeps it where the float underflows.
        reasons: why the verdict is inconclusive (empty otherwise).
        table: pandas DataFrame, a row per (layer, block): block 'mlp' (units, statistic = gate/up
            matching agreements summed over the layer's block pairs: the dense MLPs, or matched experts;
            null_rate, p_value, similarity = mean matched |cosine| of gate, up, down; kinds names the
            blocks) and block 'attention' (heads, QK/OV matching agreements, exact-null p_value,
            evidence only); ``supports`` marks the rows significant at `level`.
        alignments: a list of dicts (alignment, change, measure): what was undone and how much it moved.
        nf_table: the paper's NF per (layer, kind) without alignment (None when not computed, or when
            the two models do not have the same projections).
    """

    def __init__(self, a: str, b: str, level: float, *, reasons: Sequence[str] = (),
                 table: Optional[pd.DataFrame] = None, alignments: Sequence[Dict[str, Any]] = (),
                 nf_table: Optional[pd.DataFrame] = None,
                 models: Optional[Tuple["hub.ResolvedModel", "hub.ResolvedModel"]] = None):
        self.a, self.b, self.level = a, b, level
        self.a_model, self.b_model = models or (hub.resolve(a, "a"), hub.resolve(b, "b"))
        self.reasons: List[str] = list(reasons)
        self.table: pd.DataFrame = table if table is not None else pd.DataFrame(columns=_COLUMNS)
        self.alignments: List[Dict[str, Any]] = list(alignments)
        self.nf_table = nf_table
        self.log10_p: Optional[float] = None
        self.p_value: Optional[float] = None
        if not self.reasons:
            mlp = self.table[self.table["block"] == "mlp"]
            log_p = fisher_log_p(mlp["log_p"].tolist())
            best = fisher_log_p(mlp["log_p_min"].tolist())
            self.log10_p = log_p / math.log(10.0)
            self.p_value = math.exp(log_p)
            self.table["supports"] = self.table["log_p"] < math.log(level)
            if log_p < math.log(level):
                self.verdict = "derived"
            elif best >= math.log(level):
                self.verdict = "inconclusive"
                units, layers = int(mlp["units"].sum()), len(mlp)
                self.reasons.append(f"too few MLP units for the test to reach level {level:g} ({units} units in "
                                    f"{layers} layer{'s' if layers != 1 else ''}; the smallest p-value it can "
                                    f"give is {math.exp(best):.3g})")
            else:
                self.verdict = "independent"
        else:
            self.verdict = "inconclusive"

    # ------------------------------------------------------------------ reading

    def supporting_rows(self) -> pd.DataFrame:
        """The rows that carry the verdict: significant at the level (derived) or, otherwise, every MLP row."""
        if self.verdict == "derived":
            return self.table[self.table["supports"] & (self.table["block"] == "mlp")]
        return self.table[self.table["block"] == "mlp"]

    def summary(self) -> str:
        """A short text report: the verdict, the p-value and what it rests on."""
        lines = [f"postsvd lineage: is '{printable(self.b_model.label)}' derived from "
                 f"'{printable(self.a_model.label)}'? {self.verdict.upper()} (level {self.level:g})"]
        if self.p_value is not None:
            lines.append(f"combined p-value {_p_text(self.p_value, self.log10_p)} (Fisher over "
                         f"{int((self.table['block'] == 'mlp').sum())} MLP layers; null: independently trained "
                         "models, whose gate and up unit matchings agree only by chance)")
        for reason in self.reasons:
            lines.append(f"inconclusive: {reason}")
        if len(self.table):
            lines.append(f"{'layer':>5} {'block':<9} {'agree':>11} {'null rate':>9} {'p-value':>10} "
                         f"{'similarity':>10}")
            for row in self.table.itertuples():
                lines.append(f"{row.layer:>5} {row.block:<9} {f'{row.statistic}/{row.units}':>11} "
                             f"{row.null_rate:>9.2f} {_p_text(row.p_value, row.log_p / math.log(10)):>10} "
                             f"{row.similarity:>10.3f}" + ("  *" if row.supports else ""))
        for item in self.alignments:
            lines.append(f"alignment: {item['alignment']}: {item['measure']} = {item['change']:.3g}")
        lines.append(f"Reading: {verdict_reading(self.verdict)}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        """Everything as plain data (what lineage.json holds)."""
        return {"a": self.a, "b": self.b, "a_model": self.a_model.record(), "b_model": self.b_model.record(),
                "verdict": self.verdict, "level": self.level,
                "p_value": self.p_value, "log10_p": self.log10_p, "reasons": self.reasons,
                "alignments": self.alignments, "table": json.loads(self.table.to_json(orient="records")),
                "nf_table": None if self.nf_table is None else json.loads(self.nf_table.to_json(orient="records")),
                "reading": verdict_reading(self.verdict), "postsvd_version": __version__}

    def to_html(self, title: Optional[str] = None, interactive: Optional[bool] = None) -> str:
        """One self-contained HTML page in the style of ``postsvd report`` (`interactive`: as there)."""
        title = title or f"postsvd lineage: {self.b_model.label} from {self.a_model.label}?"
        subtitle = f"A <code>{_e(self.a_model.label)}</code>, B <code>{_e(self.b_model.label)}</code>"
        nav = [("verdict", "verdict"), ("tests", "tests"), ("alignments", "alignments"), ("paper-nf", "paper NF"),
               ("how-to-read", "how to read"), ("metadata", "run")]
        live = use_interactive(interactive) and len(self.table) > 0
        if not live:
            return page(title, self._sections(False), subtitle=subtitle, nav=nav)
        return page(title, self._sections(True), subtitle=subtitle, nav=nav, head=_interactive.runtime_script(),
                    tail=_interactive.page_scripts())

    def save(self, out: PathLike, interactive: Optional[bool] = None) -> List[str]:
        """Writes lineage.json, lineage.csv and lineage.html into `out` (built aside, moved in whole;
        `interactive`: the page's figure, as in :func:`postsvd.report`)."""
        target = normalize_output_folder(out)
        use_interactive(interactive)
        names = [LINEAGE_FILES.name(n) for n in ("lineage.json", "lineage.csv", "lineage.html")]
        with atomic_folder(target, files=LINEAGE_FILES) as temp:
            with open(os.path.join(temp, names[0]), "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=1)
            self.table.to_csv(os.path.join(temp, names[1]), index=False)
            with open(os.path.join(temp, names[2]), "w", encoding="utf-8") as f:
                f.write(self.to_html(interactive=interactive))
        return [os.path.join(os.fspath(out), name) for name in names]

    def plot(self):
        """matplotlib Figure: per layer, -log10 p of the MLP test against the level and the share of agreeing units."""
        from .plots import plot_lineage

        if not len(self.table):
            raise InvalidArgumentError(f"nothing to plot: the pair is out of scope ({'; '.join(self.reasons)})")
        return plot_lineage(self.table, self.level)

    def interactive_plot(self):
        """The tests per layer with hover values (layer, block, agreeing matchings of units, null rate, p-value,
        similarity). A plotly Figure (``postsvd[interactive]``)."""
        if not len(self.table):
            raise InvalidArgumentError(f"nothing to plot: the pair is out of scope ({'; '.join(self.reasons)})")
        return _interactive.lineage_figure(self.table, self.level)

    def _headline(self) -> str:
        p = "" if self.p_value is None else f"; combined p-value {_p_text(self.p_value, self.log10_p)}"
        return (f"is {self.b_model.label} derived from {self.a_model.label}? {self.verdict} at level "
                f"{self.level:g}{p}")

    def _block_rows(self) -> List[list]:
        """Per block: layers tested, layers significant at the level, the smallest p-value, mean similarity."""
        rows = []
        for block, part in self.table.groupby("block", sort=False):
            low = part.loc[part["log_p"].idxmin()]
            rows.append([block, len(part), int(part["supports"].sum()),
                         _p_text(float(low["p_value"]), float(low["log_p"]) / math.log(10)),
                         f"{part['similarity'].mean():.3f}"])
        return rows

    def __repr__(self) -> str:
        """A few lines: the verdict with its p-value, what it rests on per block, the reading."""
        lines = [f"<postsvd.Lineage {printable(self._headline())}"]
        lines += [f"  {r[0]:<9} {r[1]} layers, {r[2]} significant, smallest p {r[3]}, similarity {r[4]}"
                  for r in (self._block_rows() if len(self.table) else [])]
        lines += [f"  inconclusive: {reason}" for reason in self.reasons]
        lines.append(f"  {verdict_reading(self.verdict)}>")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The rich display in Jupyter: the verdict, per block what it rests on, and the tests per layer
        (interactive with ``postsvd[interactive]``, else a small PNG)."""
        warn = " pd-warn" if self.verdict != "derived" else ""
        body = [f'<div class="pd-reading{warn}"><b>{_e(self.verdict)}</b>: {_e(verdict_reading(self.verdict))}</div>']
        body += [f'<p class="note">inconclusive: {_e(reason)}</p>' for reason in self.reasons]
        if len(self.table):
            body.append(small_table(["block", "layers", f"significant at {self.level:g}", "smallest p-value",
                                     "mean similarity"], self._block_rows()))
            body.append(display_figure(self.interactive_plot, self.plot, "the tests per layer (−log10 p)"))
        hint = "More: <code>.table</code>, <code>.summary()</code>, <code>.save(DIR)</code> (lineage.html, .json, .csv)."
        return display("postsvd.Lineage", self._headline(), body, hint)

    # ------------------------------------------------------------------ page

    def _sections(self, live: bool) -> List[str]:
        verdict = [f'<section id="verdict"><h2>Verdict</h2><div class="verdict"><p><b>{_e(self.verdict)}</b> at '
                   f"level {self.level:g}"]
        if self.p_value is not None:
            verdict.append(f"; combined p-value {_e(_p_text(self.p_value, self.log10_p))}")
        verdict.append(f".</p><p>{_e(verdict_reading(self.verdict))}</p>")
        if self.reasons:
            verdict.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in self.reasons) + "</ul>")
        verdict.append("</div></section>")
        sections = ["".join(verdict)]
        if len(self.table):
            shown = self.table.drop(columns=["log_p", "log_p_min"])
            sections.append(
                '<section id="tests"><h2>Tests per layer</h2><p>Block <b>mlp</b>: the hidden units of B matched to '
                "A's twice, by gate rows and by up rows; <i>statistic</i> counts the units both matchings send to "
                "the same partner, out of <i>units</i>. Independent models agree about <i>null rate</i> times by "
                "chance (Poisson); the p-value is the chance of at least this many. Block <b>attention</b>: the "
                "same with the query heads matched on the invariant products W<sub>Q</sub>W<sub>K</sub><sup>T"
                "</sup> and W<sub>V</sub>W<sub>O</sub> (exact null; evidence only, not in the verdict). "
                "<i>similarity</i>: mean |cosine| of matched units or heads after alignment (1 = identical "
                "directions). Rows marked <i>supports</i> are significant at the level.</p>"
                + (_interactive.figure_html(self.interactive_plot(), "lineage-layers",
                                            "the tests per layer (hover for the values)") if live else
                   _figure(self.plot(), "lineage-layers", "the MLP unit test per layer"))
                + data_table(shown) + "</section>")
        if self.alignments:
            rows = "".join(f"<tr><td>{_e(a['alignment'])}</td><td>{_e(a['measure'])}</td>"
                           f"<td>{a['change']:.4g}</td></tr>" for a in self.alignments)
            sections.append('<section id="alignments"><h2>Alignments applied</h2><p>Each disguise that leaves the '
                            "outputs unchanged, what undid it, and how far B had moved from A along it.</p>"
                            '<table class="data"><thead><tr><th>alignment</th><th>measure</th><th>value</th></tr>'
                            f"</thead><tbody>{rows}</tbody></table></section>")
        if self.nf_table is not None:
            sections.append('<section id="paper-nf"><h2>The paper\'s fingerprint: NF without alignment</h2><p>NF = '
                            "‖I<sub>orth</sub> − I‖<sub>F</sub>/k per matrix (arXiv 2509.17866, App. F), "
                            "computed on the weights as stored. Near 0 for an undisguised derivative, about "
                            "√(2/k) for unrelated models; a rotated or permuted copy also reads near √(2/k), "
                            "which is why the verdict does not rest on it.</p>"
                            + data_table(self.nf_table) + "</section>")
        sections.append(_HOW_TO_READ)
        sections.append(self._metadata_html())
        return sections

    def _metadata_html(self) -> str:
        return run_metadata([model_row("A", self.a_model), model_row("B", self.b_model), ("level", f"{self.level:g}")])


def verdict_reading(verdict: str) -> str:
    """What a verdict means, in one sentence (the one wording of the CLI, the page and the docs)."""
    return {
        "derived": "B shares A's hidden units and heads beyond what independent training explains: B was trained "
                   "from A's weights (fine-tuned, post-trained, or disguised by function-preserving changes). It "
                   "does not say which model came first.",
        "independent": "No shared units beyond chance, and the test had the power to see them: B was not trained "
                       "from A's weights, or was retrained so far that no unit kept its identity.",
        "inconclusive": "The test cannot answer for this pair (see the reasons).",
    }[verdict]


# ---------------------------------------------------------------------- statistics

def poisson_log_sf(count: int, rate: float) -> float:
    """log P(X >= count) for X ~ Poisson(rate), accurate far into the tail (log-space sum)."""
    if count <= 0:
        return 0.0
    terms = []
    j = count
    log_term = -rate + count * math.log(rate) - math.lgamma(count + 1)
    while True:
        terms.append(log_term)
        j += 1
        log_term += math.log(rate) - math.log(j)
        if log_term < terms[0] - 40 or j > count + 10000:
            break
    top = max(terms)
    return min(0.0, top + math.log(sum(math.exp(t - top) for t in terms)))


def fixed_point_distribution(sizes: Sequence[int]) -> np.ndarray:
    """P(K = j) for K the number of fixed points of independent uniform permutations of the given sizes."""
    total = np.array([1.0])
    for m in sizes:
        # Rencontres: P(j fixed points of a uniform permutation of m) = (1/j!) sum_{i<=m-j} (-1)^i / i!
        single = np.array([sum((-1) ** i / math.factorial(i) for i in range(m - j + 1)) / math.factorial(j)
                           for j in range(m + 1)])
        total = np.convolve(total, single)
    return total


def fisher_log_p(log_ps: Sequence[float]) -> float:
    """log of Fisher's combined p-value: X = -2 sum log p ~ chi2(2n), sf = exp(-X/2) sum_{i<n} (X/2)^i / i!."""
    n = len(log_ps)
    if n == 0:
        return 0.0
    half = -float(sum(log_ps))
    if half <= 0:
        return 0.0
    log_terms = [i * math.log(half) - math.lgamma(i + 1) for i in range(n)]
    top = max(log_terms)
    return min(0.0, -half + top + math.log(sum(math.exp(t - top) for t in log_terms)))


def match_units(similarity: np.ndarray) -> np.ndarray:
    """The assignment of B's units to A's that maximizes the summed |similarity| (Hungarian algorithm): entry
    i is the unit of B matched to unit i of A, -1 where A has more units than B and unit i is left over."""
    return _assign(np.abs(similarity))


def _assign(score: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-score)
    order = np.full(score.shape[0], -1, dtype=np.int64)
    order[rows] = cols
    return order


# ---------------------------------------------------------------------- reading the models

_SHARED = int(_core.SHARED_EXPERT)


def _expert_order(expert: int) -> Tuple[int, int]:
    """Blocks in the order dense (-1), shared, then routed experts 0, 1, ..."""
    return (0 if expert == -1 else 1 if expert == _SHARED else 2, expert)


class _Model:
    """One folder: its checkpoint, sizes, and the residual-stream vectors lineage reads, with the norms
    folded in as the architecture table's row says (before or after each block, RMSNorm, Gemma's 1 + weight,
    or LayerNorm, whose centring is applied to every residual-stream vector)."""

    def __init__(self, model: "hub.ResolvedModel", label: str, base: Optional["hub.ResolvedModel"] = None,
                 residual_base: bool = False):
        from .checkpoint import architecture, open_checkpoint

        self.model, self.folder, self.label = model, model.folder, label
        self.checkpoint = open_checkpoint(model, base, residual_base=residual_base)  # an adapter: on `base`
        # The model whose weight files the test reads: an adapter's base (the adapter's own file came whole).
        self.weights = base if base is not None and self.checkpoint.adapter is not None else model
        self.arch = architecture(self.checkpoint)
        self.model_type = self.arch["model_type"]
        if self.model_type not in _FAMILIES:
            raise InvalidArgumentError(
                f"{label} '{printable(model.name)}': lineage reads {', '.join(SUPPORTED_MODEL_TYPES)} models; "
                f"got model_type {printable(self.model_type)!r}")
        family = _FAMILIES[self.model_type]
        self.names = names = family["lineage"]
        self.norm_kind = names["norm"]
        self.num_layers = self.arch["num_layers"]
        self.sources = {(s["layer"], s["kind"], s["expert"]): s for s in self.arch["matrices"]}
        # The prefix the projections were found under ("model.", a text tower's, gpt2's "transformer.", none).
        container = family["layer_container"]
        first = self.arch["matrices"][0]["tensor"]
        self.prefix = next(p for p in family["prefixes"] if first.startswith(f"{p}{container}."))
        self._layer_names = self.prefix + container
        self.embedding_name = self.prefix + names["embedding"]
        self._require(self.embedding_name)
        self.vocab, self.hidden = (int(x) for x in self.checkpoint.info(self.embedding_name)["shape"])
        present = [name for name in names["unembedding"] if name in self.checkpoint]
        self.tied = not present
        self.unembedding_name = present[0] if present else self.embedding_name
        self.final_norm = self.prefix + names["final_norm"]
        config = _text_config(self.checkpoint.config, family)
        if (0, "kv_a", -1) in self.sources:  # DeepSeek's multi-head latent attention
            self.attention = "mla"
            self.heads = self.kv_heads = int(config["num_attention_heads"])
            self.nope, self.rope = int(config["qk_nope_head_dim"]), int(config["qk_rope_head_dim"])
            self.v_head = int(config["v_head_dim"])
            self.kv_rank = int(config["kv_lora_rank"])
            self.head_dim = self.nope + self.rope
        else:
            self.attention = "mha"
            q_out, k_out = self.sources[(0, "q", -1)]["out_features"], self.sources[(0, "k", -1)]["out_features"]
            heads = int(config.get("num_attention_heads") or config.get("n_head"))
            self.head_dim = int(config.get("head_dim") or q_out // heads)
            self.heads, self.kv_heads = q_out // self.head_dim, k_out // self.head_dim

    # ------------------------------------------------------------------ shape and layout

    def layout(self) -> Tuple:
        """What decides how residual-stream vectors are read: the norm kind and placement, the attention kind."""
        n = self.names
        return (self.norm_kind, bool(n["norm_before_attention"]), bool(n["norm_after_attention"]), self.attention)

    def layout_text(self) -> str:
        kind, before, after, attention = self.layout()
        place = " and ".join(w for w, on in (("before", before), ("after", after)) if on)
        return f"{kind} {place} each block, {'latent' if attention == 'mla' else 'multi-head'} attention"

    def width_names(self) -> Tuple[str, ...]:
        if self.attention == "mla":
            return ("attention heads", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        return ("attention heads", "key/value heads", "head_dim")

    def widths(self) -> Tuple[int, ...]:
        if self.attention == "mla":
            return (self.heads, self.nope, self.rope, self.v_head)
        return (self.heads, self.kv_heads, self.head_dim)

    def mlp_layout(self, layer: int) -> Dict[int, int]:
        """The layer's MLP blocks: expert (-1 dense, shared, 0, 1, ... routed) -> units."""
        return {e: s["out_features"] for (l, k, e), s in self.sources.items() if l == layer and k == "up"}

    def shapes(self) -> Dict[Tuple[int, str, int], Tuple[int, int]]:
        return {key: (s["in_features"], s["out_features"]) for key, s in self.sources.items()}

    # ------------------------------------------------------------------ tensors

    def _require(self, name: str) -> None:
        if name not in self.checkpoint:
            raise InvalidArgumentError(f"{self.label} '{printable(self.model.name)}': tensor {name} is missing "
                                       "(lineage reads the embeddings and the norm weights)")
        dtype = self.checkpoint.info(name)["dtype"]
        if dtype not in _FLOAT_DTYPES:
            raise InvalidArgumentError(f"{self.label} '{printable(self.model.name)}': tensor {name} is stored as "
                                       f"{dtype}; lineage reads embeddings and norms in {', '.join(_FLOAT_DTYPES)}")

    def vector(self, name: str) -> np.ndarray:
        """A norm weight or a router, float64."""
        self._require(name)
        return np.asarray(self.checkpoint.read(name), dtype=np.float64)

    def rows(self, name: str) -> np.ndarray:
        """A [vocab, hidden] embedding matrix, float32 (large: read once)."""
        self._require(name)
        return np.asarray(self.checkpoint.read(name), dtype=np.float32)

    def matrix(self, layer: int, kind: str, expert: int = -1) -> np.ndarray:
        """A projection in the transformers orientation [out, in], float64, dequantized by the core."""
        return _core.read_matrix(self.checkpoint, self.sources[(layer, kind, expert)], "float64").T

    def norm_scale(self, module: str) -> np.ndarray:
        """What a norm module multiplies each coordinate by: its weight (Gemma: 1 + weight)."""
        weight = self.vector(f"{module}.weight")
        return 1.0 + weight if self.norm_kind == "GemmaRMSNorm" else weight

    def residual(self, vectors: np.ndarray) -> np.ndarray:
        """Residual-stream vectors as the model's norms see them: LayerNorm removes every vector's mean
        (its component along the all-ones direction is read by nothing), RMSNorm keeps them as they are."""
        if self.norm_kind == "LayerNorm":
            return vectors - vectors.mean(axis=-1, keepdims=True)
        return vectors

    def _layer_norm(self, layer: int, which: str) -> Optional[np.ndarray]:
        name = self.names[which]
        return self.norm_scale(f"{self._layer_names}.{layer}.{name}") if name else None

    def reader(self, rows: np.ndarray, layer: int, block: str) -> np.ndarray:
        """Rows reading the residual stream before `block` ('attention' or 'mlp'), that block's norm folded in."""
        scale = self._layer_norm(layer, f"norm_before_{block}")
        return self.residual(rows * scale if scale is not None else rows)

    def writer(self, columns: np.ndarray, layer: int, block: str) -> np.ndarray:
        """Output directions ([n, d]) written by `block`, through the norm after it where there is one (its scale;
        the normalization itself only rescales the whole output)."""
        scale = self._layer_norm(layer, f"norm_after_{block}")
        return self.residual(columns * scale if scale is not None else columns)

    def final_scale(self) -> np.ndarray:
        return self.norm_scale(self.final_norm)

    def tensors(self, layers: Sequence[int]) -> List[str]:
        """The stored tensors the test reads at `layers` (what to fetch of a Hub model): the embeddings (one
        matrix where they are tied), the final norm, and per layer its norms, its router and every projection
        (dense, shared and routed experts, MLA latents; with their scales)."""
        names = [self.embedding_name, self.unembedding_name, f"{self.final_norm}.weight"]
        sources = []
        for layer in layers:
            prefix = f"{self._layer_names}.{layer}."
            names += [f"{prefix}{self.names[which]}.weight" for which in _LAYER_NORMS if self.names[which]]
            if self.names["router"]:
                names.append(prefix + self.names["router"])
            sources += [s for (at, _, _), s in self.sources.items() if at == layer]
        present = [name for name in names if name in self.checkpoint]  # optional norms, routers of dense layers
        return list(dict.fromkeys(present + hub.source_tensors(self.checkpoint, sources)))

    def token_table(self) -> Optional[Dict[str, int]]:
        """tokenizer.json's token -> id table (the model's vocabulary and its added tokens), or None where
        there is none."""
        if not hasattr(self, "_tokens"):
            self._tokens = None
            path = hub.repo_file(self.model, "tokenizer.json")
            try:
                if path is None:
                    raise FileNotFoundError("tokenizer.json")
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                vocab = data.get("model", {}).get("vocab")
                if isinstance(vocab, dict):
                    table = dict(vocab)
                    for token in data.get("added_tokens") or []:
                        if isinstance(token, dict) and isinstance(token.get("content"), str):
                            table[token["content"]] = token.get("id")
                    self._tokens = table
            except (OSError, ValueError, AttributeError):
                self._tokens = None
        return self._tokens

    # ------------------------------------------------------------------ vectors per block

    def mlp_vectors(self, layer: int) -> List[Tuple[int, Optional[np.ndarray], np.ndarray, np.ndarray]]:
        """Per MLP block of the layer (dense, shared expert, routed experts), its expert index and per hidden
        unit its residual-stream vectors: gate rows (None without a gate: gpt2) and up rows, norm folded in,
        and down columns as rows."""
        out = []
        for expert in sorted(self.mlp_layout(layer), key=_expert_order):
            gate = self.reader(self.matrix(layer, "gate", expert), layer, "mlp") \
                if (layer, "gate", expert) in self.sources else None
            out.append((expert, gate, self.reader(self.matrix(layer, "up", expert), layer, "mlp"),
                        self.writer(self.matrix(layer, "down", expert).T, layer, "mlp")))
        return out

    def router(self, layer: int) -> Optional[np.ndarray]:
        """The router's rows [experts, d] (norm folded in) of a layer with routed experts, else None."""
        name = f"{self._layer_names}.{layer}.{self.names['router']}"
        if not self.names["router"] or name not in self.checkpoint or \
                not any(e >= 0 for e in self.mlp_layout(layer)):
            return None
        return self.reader(self.vector(name), layer, "mlp")

    def _head_norm(self, layer: int, which: str, heads: int, rows: int) -> np.ndarray:
        """The query or key norm's scale per head row ([heads, rows]; ones where the model has none): per head
        (width head_dim) or across heads (width heads x head_dim)."""
        name = self.names[which]
        module = f"{self._layer_names}.{layer}.{name}"
        if not name or f"{module}.weight" not in self.checkpoint:
            return np.ones((heads, rows))
        scale = self.norm_scale(module)
        return np.broadcast_to(scale, (heads, rows)) if len(scale) == rows else scale.reshape(heads, rows)

    def attention_vectors(self, layer: int) -> Dict[str, np.ndarray]:
        """Per head the residual-stream vectors of its invariant products (norms folded in): q [heads, r, d]
        and k [groups, r, d] (W_Q,h W_K,g^T), v [groups, r_v, d] and o [heads, r_v, d] (W_V,g W_O,h), with
        groups the key/value heads. MLA: q of head h is its nope and rope rows (through the query latent and
        its norm), k its nope rows through the key/value latent and the rope rows shared by every head."""
        o = self.writer(self.matrix(layer, "o"), layer, "attention")  # [d, heads * r_v] as output columns
        if self.attention == "mla":
            return self._latent_attention_vectors(layer, o)
        hd, d = self.head_dim, self.hidden
        q = self.reader(self.matrix(layer, "q"), layer, "attention").reshape(self.heads, hd, d)
        k = self.reader(self.matrix(layer, "k"), layer, "attention").reshape(self.kv_heads, hd, d)
        return {"q": q * self._head_norm(layer, "q_norm", self.heads, hd)[:, :, None],
                "k": k * self._head_norm(layer, "k_norm", self.kv_heads, hd)[:, :, None],
                "v": self.reader(self.matrix(layer, "v"), layer, "attention").reshape(self.kv_heads, hd, d),
                "o": o.T.reshape(self.heads, hd, d)}

    def _latent_attention_vectors(self, layer: int, o: np.ndarray) -> Dict[str, np.ndarray]:
        h, d = self.heads, self.hidden
        if (layer, "q", -1) in self.sources:
            q = self.reader(self.matrix(layer, "q"), layer, "attention")
        else:
            latent = self.reader(self.matrix(layer, "q_a"), layer, "attention")
            scale = self.norm_scale(f"{self._layer_names}.{layer}.{self.names['q_latent_norm']}")
            q = self.matrix(layer, "q_b") @ (latent * scale[:, None])
        kv_a = self.reader(self.matrix(layer, "kv_a"), layer, "attention")
        scale = self.norm_scale(f"{self._layer_names}.{layer}.{self.names['kv_latent_norm']}")
        latent = kv_a[:self.kv_rank] * scale[:, None]
        k_nope = (self.matrix(layer, "kv_b_k") @ latent).reshape(h, self.nope, d)
        k_rope = np.broadcast_to(kv_a[self.kv_rank:], (h, self.rope, d))
        return {"q": q.reshape(h, self.head_dim, d), "k": np.concatenate([k_nope, k_rope], axis=1),
                "v": (self.matrix(layer, "kv_b_v") @ latent).reshape(h, self.v_head, d),
                "o": o.T.reshape(h, self.v_head, d)}


def _text_config(config: Dict[str, Any], family: Dict[str, Any]) -> Dict[str, Any]:
    """The text model's config: config.json, or its nested text config over the values transformers assumes."""
    if not family["text_config"]:
        return config
    return {**family["text_config_defaults"], **(config.get(family["text_config"]) or {})}


class _Block(NamedTuple):
    """One MLP block (dense, shared or routed expert) in profile coordinates: per unit its two matching views
    (unit rows) and its gate, up and down profiles."""
    expert: int
    first: np.ndarray   # gate rows (GLU), or up rows (gpt2)
    second: np.ndarray  # up rows made orthogonal to the same unit's gate row; gpt2: down columns to its up row
    vectors: Tuple[np.ndarray, ...]


class _ProbePair:
    """The whitened probes of both models, and coordinates in which they compare.

    A residual-stream vector x of A is seen through its profile P_A T_A x (P: embedding rows and
    unembedding rows with the final norm folded in, on the token rows both models share; T = G^-1/2,
    G = P^T P, ridge-regularized); likewise for B. Both profiles live in the span of [P_A T_A, P_B T_B], of
    dimension at most 2d: with L = H^1/2 of that pair's Gram matrix H, x_a maps to L[:, :d] x_a and x_b to
    L[:, d:] x_b, and inner products of profiles become plain dot products of these 2d coordinates. A
    residual rotation R of B (P_B = P_A R) leaves every profile where it was. With tied embeddings the
    unembedding rows are the embedding rows through the final norm."""

    def __init__(self, model_a: _Model, model_b: _Model):
        d = model_a.hidden
        self.token_rows = _token_rows(model_a, model_b)[0]
        gram_a, gram_b, cross = (np.zeros((d, d)) for _ in range(3))
        for name_a, name_b, final in ((model_a.embedding_name, model_b.embedding_name, False),
                                      (model_a.unembedding_name, model_b.unembedding_name, True)):
            rows_a, rows_b = model_a.rows(name_a), model_b.rows(name_b)
            scale_a = model_a.final_scale() if final else np.ones(d)
            scale_b = model_b.final_scale() if final else np.ones(d)
            for start in range(0, self.token_rows, _PROBE_CHUNK):
                stop = min(start + _PROBE_CHUNK, self.token_rows)
                chunk_a = model_a.residual(rows_a[start:stop].astype(np.float64) * scale_a)
                chunk_b = model_b.residual(rows_b[start:stop].astype(np.float64) * scale_b)
                gram_a += chunk_a.T @ chunk_a
                gram_b += chunk_b.T @ chunk_b
                cross += chunk_a.T @ chunk_b
        whiten_a, whiten_b = _inverse_sqrt(gram_a), _inverse_sqrt(gram_b)
        cross_white = whiten_a @ cross @ whiten_b
        pair_gram = np.block([[whiten_a @ gram_a @ whiten_a, cross_white],
                              [cross_white.T, whiten_b @ gram_b @ whiten_b]])
        values, vectors = np.linalg.eigh(pair_gram)
        root = (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T
        self._coordinates = {"a": root[:, :d], "b": root[:, d:]}  # [2d, d] each
        # The orthogonal part of the whitened cross-Gram: the residual rotation from A's basis to B's (Procrustes).
        u, _, vt = np.linalg.svd(cross_white)
        self.rotation = u @ vt
        norm_a = float(np.sqrt(np.trace(gram_a)))
        self.embedding_scale = float(np.sqrt(np.trace(gram_b))) / norm_a if norm_a > 0 else float("nan")
        self._cache: Dict[Tuple[str, str, int], Any] = {}

    def coordinates(self, vectors: np.ndarray, model: str) -> np.ndarray:
        """The profile coordinates ([..., 2d]) of residual-stream vectors ([..., d]) of model 'a' or 'b'."""
        return vectors @ self._coordinates[model].T

    def layer(self, model: _Model, side: str, block: str, layer: int):
        """A layer's vectors in profile coordinates, the two most recent of each model and block kept
        (the control pairs reuse B's next layer): 'mlp' gives (blocks, router rows or None), 'attention' a
        dict of q, k, v, o."""
        key = (side, block, layer)
        if key not in self._cache:
            if block == "mlp":
                blocks = []
                for expert, gate, up, down in model.mlp_vectors(layer):
                    gate, up, down = (None if x is None else self.coordinates(x, side) for x in (gate, up, down))
                    first, second = (gate, up) if gate is not None else (up, down)
                    blocks.append(_Block(expert, _unit_rows(first), _unit_rows(_orthogonal_to(second, first)),
                                         tuple(x for x in (gate, up, down) if x is not None)))
                router = model.router(layer)
                value = (blocks, None if router is None else self.coordinates(router, side))
            else:
                value = {name: self.coordinates(x, side) for name, x in model.attention_vectors(layer).items()}
            stale = [k for k in self._cache if k[:2] == (side, block) and k[2] < layer - 1]
            for k in stale:
                del self._cache[k]
            self._cache[key] = value
        return self._cache[key]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-300)


def _orthogonal_to(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each row of `vectors` minus its component along the same row of `reference`."""
    along = np.sum(vectors * reference, axis=1) / np.maximum(np.sum(reference * reference, axis=1), 1e-300)
    return vectors - along[:, None] * reference


def _cosines(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    return _unit_rows(xa) @ _unit_rows(xb).T


def _product_cosines(pairs_a: Sequence[Tuple[np.ndarray, np.ndarray]],
                     pairs_b: Sequence[Tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Cosines of the invariant products X^T Y of (X, Y) pairs ([r, 2d] each, profile coordinates):
    <X_a^T Y_a, X_b^T Y_b>_F = sum((X_a X_b^T) * (Y_a Y_b^T))."""
    def inner(first, second):
        return float(np.sum((first[0] @ second[0].T) * (first[1] @ second[1].T)))

    norms_a = [math.sqrt(max(inner(p, p), 1e-300)) for p in pairs_a]
    norms_b = [math.sqrt(max(inner(p, p), 1e-300)) for p in pairs_b]
    return np.array([[inner(pa, pb) / (na * nb) for pb, nb in zip(pairs_b, norms_b)]
                     for pa, na in zip(pairs_a, norms_a)])


def _inverse_sqrt(gram: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(gram)
    floor = max(float(values.max()), 1e-300) * WHITENING_RIDGE
    return (vectors / np.sqrt(np.maximum(values, floor))) @ vectors.T


# ---------------------------------------------------------------------- pairing MLP blocks

def _pairing_problem(layout_a: Dict[int, int], layout_b: Dict[int, int]) -> Optional[str]:
    """Why two layers' MLP blocks cannot be paired (None when they can): a dense MLP pairs with a dense MLP of
    its width, or with every expert of an upcycled MoE layer; routed experts pair with as many routed experts
    of the same width, and a shared expert with a shared expert."""
    routed_a = sorted(w for e, w in layout_a.items() if e >= 0)
    routed_b = sorted(w for e, w in layout_b.items() if e >= 0)
    if not routed_a and not routed_b:
        if layout_a.get(-1) != layout_b.get(-1):
            return (f"the MLP widths differ ({layout_a.get(-1)} and {layout_b.get(-1)} units): a width-pruned or "
                    "widened copy is out of scope for this test")
        return None
    if not routed_a or not routed_b:  # a dense MLP and a MoE layer: the experts of an upcycled copy
        dense = layout_a if not routed_a else layout_b
        return None if -1 in dense else "a MoE layer and a layer without a dense MLP cannot be paired"
    if len(routed_a) != len(routed_b) or routed_a != routed_b:
        return (f"the routed experts differ ({len(routed_a)} experts of {routed_a[0]} units and {len(routed_b)} of "
                f"{routed_b[0]}): experts are matched one to one")
    if layout_a.get(_SHARED) != layout_b.get(_SHARED):
        return f"the shared experts differ ({layout_a.get(_SHARED)} and {layout_b.get(_SHARED)} units)"
    return None


#: Columns of the random sketch of an expert's Gram matrix (expert matching).
_SKETCH = 32


def _expert_signatures(blocks: Sequence[_Block]) -> np.ndarray:
    """Per routed expert a unit-permutation-invariant signature: the sketch G Ω of the Gram matrix of its
    units' unit-length gate, up and down profiles, less the layer's mean (what every expert shares), as a
    unit row. Ω is a fixed Gaussian [2d, 32]: the same for both models, whose profiles share coordinates."""
    width = blocks[0].first.shape[1]
    omega = np.random.default_rng(0).standard_normal((width, min(_SKETCH, width)))
    sketches = []
    for block in blocks:
        units = np.concatenate([_unit_rows(x) for x in block.vectors])
        sketches.append((units.T @ (units @ omega)).ravel() / len(units))
    sketches = np.array(sketches)
    if len(sketches) > 1:
        sketches = sketches - sketches.mean(axis=0)
    return _unit_rows(sketches)


def _pair_blocks(layer_a, layer_b) -> Tuple[List[Tuple[_Block, _Block]], Optional[np.ndarray]]:
    """The block pairs to test, and the routed experts' matching (None without routed experts on both sides):
    experts are matched on their signatures plus the |cosine| of their router rows."""
    (blocks_a, router_a), (blocks_b, router_b) = layer_a, layer_b
    routed_a = [x for x in blocks_a if x.expert >= 0]
    routed_b = [x for x in blocks_b if x.expert >= 0]
    if not routed_a or not routed_b:
        dense_a = [x for x in blocks_a if x.expert == -1]
        dense_b = [x for x in blocks_b if x.expert == -1]
        if not routed_a and not routed_b:
            return list(zip(dense_a, dense_b)), None
        if not routed_a:  # B's experts against A's dense MLP (upcycling), and the reverse
            return [(dense_a[0], x) for x in blocks_b], None
        return [(x, dense_b[0]) for x in blocks_a], None
    score = _expert_signatures(routed_a) @ _expert_signatures(routed_b).T
    if router_a is not None and router_b is not None:
        score = score + np.abs(_cosines(router_a, router_b))
    experts = _assign(score)
    pairs = [(routed_a[i], routed_b[j]) for i, j in enumerate(experts)]
    shared_a = [x for x in blocks_a if x.expert == _SHARED]
    shared_b = [x for x in blocks_b if x.expert == _SHARED]
    return list(zip(shared_a, shared_b)) + pairs, experts


# ---------------------------------------------------------------------- per-layer tests

_COLUMNS = ["layer", "block", "kinds", "units", "statistic", "null_rate", "p_value", "log_p", "log_p_min",
            "similarity", "supports"]


def _mlp_test(model_a: _Model, model_b: _Model, probes: _ProbePair, layer_a: int, layer_b: int) -> Optional[Dict]:
    """B's units matched to A's twice per block pair (by gate rows, and by up rows made orthogonal to the
    unit's gate row; gpt2: up rows, and down columns made orthogonal to the up row), and the number of units
    both matchings send to the same partner. `pairs`: the block pairs, each of which contributes at most one
    agreement on average under independence. None where the layers' blocks cannot be paired."""
    if _pairing_problem(model_a.mlp_layout(layer_a), model_b.mlp_layout(layer_b)):
        return None
    pairs, experts = _pair_blocks(probes.layer(model_a, "a", "mlp", layer_a),
                                  probes.layer(model_b, "b", "mlp", layer_b))
    agreements, units, similarity, moved, same_width = 0, 0, [], 0, 0
    for block_a, block_b in pairs:
        by_first = match_units(block_a.first @ block_b.first.T)
        by_second = match_units(block_a.second @ block_b.second.T)
        matched = by_first >= 0
        agreements += int(np.sum((by_first == by_second) & matched))
        units += int(np.sum(matched))
        index = np.flatnonzero(matched)
        similarity += [float(np.mean(np.abs(np.sum(_unit_rows(xa[index]) * _unit_rows(xb[by_first[index]]), axis=1))))
                       for xa, xb in zip(block_a.vectors, block_b.vectors)]
        if len(by_first) == len(block_b.first):
            moved += int(np.sum(by_first != np.arange(len(by_first))))
            same_width += len(by_first)
    return {"agreements": agreements, "units": units, "pairs": len(pairs), "similarity": float(np.mean(similarity)),
            "units_moved": moved / same_width if same_width else 0.0,
            "experts_moved": None if experts is None else float(np.mean(experts != np.arange(len(experts))))}


def _mlp_kinds(model: _Model, layer: int) -> str:
    kinds = "gate,up,down" if any(l == layer and k == "gate" for l, k, _ in model.sources) else "up,down"
    layout = model.mlp_layout(layer)
    routed = sum(1 for e in layout if e >= 0)
    if not routed:
        return kinds
    return f"{kinds} of {routed} routed experts" + (" and the shared expert" if _SHARED in layout else "")


def _mlp_row(model_a: _Model, model_b: _Model, probes: _ProbePair, layer: int, moves: Dict[str, list]) -> Dict:
    test = _mlp_test(model_a, model_b, probes, layer, layer)
    moves["units"].append(test["units_moved"])
    if test["experts_moved"] is not None:
        moves["experts"].append(test["experts_moved"])
    kinds = _mlp_kinds(model_a, layer)
    if model_a.mlp_layout(layer).keys() != model_b.mlp_layout(layer).keys():
        kinds = f"{kinds} / {_mlp_kinds(model_b, layer)}"
    return {"layer": layer, "block": "mlp", "kinds": kinds, "units": test["units"],
            "statistic": test["agreements"], "similarity": test["similarity"], "pairs": test["pairs"]}


def _with_p_values(table: pd.DataFrame, controls: Sequence[Tuple[int, int]]) -> pd.DataFrame:
    """The MLP rows' null rate and p-values. Each block pair of a layer (the dense MLPs, or two matched
    experts) agrees about once by chance: the null rate of a layer is its number of block pairs. Control
    pairs (layer l of A against layer l+1 of B) share no units under either hypothesis; where they agree more
    often than that, every rate is scaled by their ratio of agreements to block pairs."""
    agreements, pairs = sum(c[0] for c in controls), sum(c[1] for c in controls)
    excess = max(1.0, agreements / pairs) if pairs else 1.0
    for index, row in table.iterrows():
        if row["block"] == "mlp":
            rate = excess * float(row["pairs"])
            log_p = poisson_log_sf(int(row["statistic"]), rate)
            table.loc[index, ["null_rate", "log_p", "p_value", "log_p_min"]] = [
                rate, log_p, math.exp(log_p), poisson_log_sf(int(row["units"]), rate)]
    table.attrs["controls"] = [list(c) for c in controls]
    return table[[c for c in _COLUMNS if c != "supports"]].copy()


def _head_sets(va: Dict[str, np.ndarray], vb: Dict[str, np.ndarray]) -> List[Tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray, np.ndarray]]:
    """The sets of query heads matched inside, each as (heads of A, heads of B, their key/value heads in A and
    in B). Grouped-query attention: the key/value groups matched first on their K and V rows, then the query
    heads inside each matched group. Each head with its own keys and values (multi-head, MLA): one set."""
    heads, groups = len(va["q"]), len(va["k"])
    per_group = heads // groups
    if per_group == 1:
        every = np.arange(heads)
        return [(every, every, every, every)]
    # K and V rows keep their order inside a head (no disguise turns inside a head).
    group_sims = sum(np.abs(_cosines(va[part].reshape(groups, -1), vb[part].reshape(groups, -1)))
                     for part in ("k", "v"))
    matched = match_units(group_sims)
    sets = []
    for g in range(groups):
        heads_a = np.arange(g * per_group, (g + 1) * per_group)
        heads_b = np.arange(matched[g] * per_group, (matched[g] + 1) * per_group)
        sets.append((heads_a, heads_b, np.full(per_group, g), np.full(per_group, matched[g])))
    return sets


def _attention_row(model_a: _Model, model_b: _Model, probes: _ProbePair, layer: int,
                   moves: Dict[str, list]) -> Dict:
    va, vb = probes.layer(model_a, "a", "attention", layer), probes.layer(model_b, "b", "attention", layer)
    agreements, similarity, moved, scales, sizes = 0, [], 0, [], []
    for heads_a, heads_b, kv_a, kv_b in _head_sets(va, vb):
        qk = _product_cosines([(va["q"][h], va["k"][g]) for h, g in zip(heads_a, kv_a)],
                              [(vb["q"][h], vb["k"][g]) for h, g in zip(heads_b, kv_b)])
        ov = _product_cosines([(va["v"][g], va["o"][h]) for h, g in zip(heads_a, kv_a)],
                              [(vb["v"][g], vb["o"][h]) for h, g in zip(heads_b, kv_b)])
        by_qk, by_ov = match_units(qk), match_units(ov)
        n = len(heads_a)
        sizes.append(n)
        agreements += int(np.sum(by_qk == by_ov))
        similarity += [abs(qk[i, by_qk[i]]) for i in range(n)] + [abs(ov[i, by_ov[i]]) for i in range(n)]
        moved += int(np.sum(heads_b[by_qk] != heads_a))
        # Per-head W_Q norm relative to A: a Q/K rescaling moves it, the invariant product does not move.
        scales += [np.linalg.norm(vb["q"][heads_b[by_qk[i]]]) / np.linalg.norm(va["q"][heads_a[i]]) for i in range(n)]
    moves["heads"].append(moved / model_a.heads)
    log_scales = np.log(np.maximum(scales, 1e-300))
    moves["head_scales"].append(float(np.max(np.abs(log_scales - np.median(log_scales)))))
    null = fixed_point_distribution(sizes)
    tail = float(np.sum(null[agreements:]))
    kinds = "q,k,v,o" if model_a.attention == "mha" else \
        ",".join(k for k in ("q", "q_a", "q_b", "kv_a", "kv_b_k", "kv_b_v", "o") if (layer, k, -1) in model_a.sources)
    return {"layer": layer, "block": "attention", "kinds": kinds, "units": model_a.heads,
            "statistic": agreements, "null_rate": float(np.dot(np.arange(len(null)), null)),
            "p_value": tail, "log_p": math.log(max(tail, 1e-300)),
            "log_p_min": math.log(max(float(null[-1]), 1e-300)), "similarity": float(np.mean(similarity))}


#: How each norm kind is undone, in the alignments' words.
_NORM_FOLDING = {
    "RMSNorm": "RMSNorm weights folded into the matrices that read or write through them (both models)",
    "GemmaRMSNorm": "RMSNorm scales (1 + weight) folded into the matrices that read or write through them "
                    "(both models)",
    "LayerNorm": "LayerNorm weights folded into the matrices that read them, every residual vector centred "
                 "(both models)",
}


def _alignments(model_a: _Model, model_b: _Model, probes: _ProbePair, moves: Dict[str, list]) -> List[Dict]:
    fold = max(float(np.max(np.abs(model.final_scale() - 1.0))) for model in (model_a, model_b))
    rotation_change = float(np.linalg.norm(probes.rotation - np.eye(len(probes.rotation))) /
                            math.sqrt(2.0 * len(probes.rotation)))
    out = [
        {"alignment": _NORM_FOLDING[model_a.norm_kind],
         "measure": "largest |final norm scale - 1| of the two models", "change": fold},
        {"alignment": "residual-stream rotation: whitened probe profiles (embedding and unembedding rows)",
         "measure": "||R - I||_F / sqrt(2 d) of the Procrustes rotation (0 none, ~1 arbitrary)",
         "change": rotation_change},
        {"alignment": "MLP hidden-unit permutation: Hungarian matching on gate rows",
         "measure": "fraction of units matched to another index", "change": float(np.mean(moves["units"]))},
        {"alignment": "KV-group and head permutation: matching on W_K, W_V and the per-head products",
         "measure": "fraction of heads matched to another index", "change": float(np.mean(moves["heads"]))},
        {"alignment": "per-head Q/K and V/O rescaling: invariant products W_Q W_K^T and W_V W_O",
         "measure": "largest |log| spread of per-head W_Q norm ratios B/A", "change":
             float(np.max(moves["head_scales"]))},
        {"alignment": "uniform scaling: cosine similarities throughout",
         "measure": "norm ratio B/A of the probe matrices", "change": probes.embedding_scale},
    ]
    if moves["experts"]:
        out.append({"alignment": "routed-expert permutation: experts matched on their units' Gram matrices and "
                                 "router rows, units matched inside matched experts",
                    "measure": "fraction of routed experts matched to another index",
                    "change": float(np.mean(moves["experts"]))})
    if model_a.vocab != model_b.vocab:
        out.append({"alignment": f"vocabulary: the {probes.token_rows} token rows both models hold are compared "
                                 "(added tokens are appended rows)",
                    "measure": "token rows B holds beyond A's (negative: fewer)",
                    "change": float(model_b.vocab - model_a.vocab)})
    return out


# ---------------------------------------------------------------------- helpers

@contextlib.contextmanager
def _blas_threads(num_threads: Optional[int]):
    """numpy's BLAS limited to `num_threads` while lineage computes (where threadpoolctl is installed)."""
    if num_threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=int(num_threads), user_api="blas"):
        yield


def _check_level(level: Any) -> float:
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"level: expected a number in (0, 1), got {level!r}") from None
    if not 0.0 < value < 1.0:
        raise InvalidArgumentError(f"level: expected a number in (0, 1), got {level!r}")
    return value


def _p_text(p: float, log10_p: Optional[float]) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    if p > 0 and p >= 1e-300:
        return f"{p:.3g}"
    return f"1e{log10_p:.0f}" if log10_p is not None else "0"


_HOW_TO_READ = (
    '<section id="how-to-read"><h2>How to read this page</h2><ul>'
    "<li><b>Question</b>: were B's weights trained from A's? Null hypothesis: A and B were trained from "
    "independent initializations.</li>"
    "<li><b>Disguises</b> that leave every output unchanged (a rotation of the residual stream with the norms "
    "folded in, permuted MLP units, experts or heads, per-head Q/K or V/O rescaling, uniform scaling) are undone or "
    "ignored: the statistics read each model through its own embeddings, match units and heads, and use cosines "
    "of invariant products.</li>"
    "<li><b>derived</b> does not say which model came first, nor how much was trained on top. "
    "<b>independent</b> means no unit kept its identity; a copy retrained until none did reads the same. "
    "Pruned or depth-upscaled copies, tokens at other ids, other widths and architectures that read the residual "
    "stream otherwise are out of scope; a vocabulary that grew is compared on the token rows both models hold.</li>"
    "<li>References: He and Cao, arXiv 2509.17866, App. F (I<sub>orth</sub> as a fingerprint); Zhu, Ahmed, "
    "Kuditipudi and Liang, <i>Independence Tests for Language Models</i>, ICML 2025 (matching of MLP units, "
    "Fisher's method); Zeng et al., <i>HuRef</i>, NeurIPS 2024 (invariant products); Ainsworth et al., "
    "<i>Git Re-Basin</i>, ICLR 2023 (unit matching); Ashkboos et al., <i>SliceGPT</i> and <i>QuaRot</i> "
    "(residual rotations).</li></ul></section>")
