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
could not, or the pair is out of scope: other vocabulary, depth or width).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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
#: The rows of the core's architecture table whose residual-stream tensors lineage knows by name, with
#: RMSNorm before each block (the row's `lineage` facts).
_FAMILIES = {row["model_type"]: row for row in _core.architecture_families()
             if row["lineage"] is not None and row["lineage"]["norm"] == "RMSNorm"}
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
#: The final norm, folded into the unembedding probes.
FINAL_NORM = "model.norm.weight"
#: The projections the test reads per layer.
_LINEAGE_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


# ---------------------------------------------------------------------- public API

def lineage(a: PathLike, b: PathLike, *, level: float = DEFAULT_LEVEL, layers=None, paper_nf: bool = True,
            device: str = "cpu", dtype: str = "float32", kinds=None, num_threads: Optional[int] = None,
            cache: Optional[PathLike] = None, progress: bool = False, whole_files: bool = False,
            residual_base: bool = False) -> "Lineage":
    """Tests whether model `b` is derived from model `a` (fine-tuned, post-trained, possibly disguised).

    Args:
        a, b: models (a folder with config.json + safetensors, or a Hub repo id ``org/name[@revision]``:
            only the tensors the test reads are fetched) of a llama, mistral, qwen2 or qwen3 model;
            any stored format postsvd reads (BF16, FP8, ...); the two may differ in format. `b` may be a
            PEFT LoRA adapter (a folder or a Hub repo): it is applied to `a` (docs/adapters.md;
            `residual_base` as in :func:`postsvd.compare`).
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
    if paper_nf:  # the comparison's options fail now, not after the test
        check_compare_arguments(model_a.model, [model_b.model], layers=chosen,
                                **{k: v for k, v in compare_options.items() if k not in ("progress", "whole_files")})
    for model in (model_a, model_b):  # a Hub model: what the test reads (the comparison fetches its own)
        hub.fetch(model.weights, model.tensors(read[model.label]), whole_files=compare_options["whole_files"],
                  progress=compare_options["progress"] or None)
    from tqdm.auto import tqdm

    probes = _ProbePair(model_a, model_b)
    rows, controls, moves = [], [], {"units": [], "heads": [], "head_scales": []}
    for layer in tqdm(chosen, desc="lineage", unit="layer", disable=not compare_options["progress"]):
        rows.append(_mlp_row(model_a, model_b, probes, layer, moves))
        rows.append(_attention_row(model_a, model_b, probes, layer, moves))
        if model_a.num_layers > 1:  # a control pair: layer l of A, layer l+1 of B
            by_gate, by_up, _ = _mlp_matchings(model_a, model_b, probes, layer, (layer + 1) % model_a.num_layers)
            controls.append(int(np.sum(by_gate == by_up)))
    table = _with_p_values(pd.DataFrame(rows), controls)
    nf_table = None
    if paper_nf:
        nf_table = compare(model_a.model, model_b.model, layers=chosen, **compare_options).table
        nf_table = nf_table[["layer", "kind", "k", "nf"]].copy()
        nf_table["nf_random"] = [random_rotation_nf(int(k)) for k in nf_table["k"]]
    return Lineage(model_a.folder, model_b.folder, level, table=table,
                   alignments=_alignments(model_a, model_b, probes, moves), nf_table=nf_table, models=models)


def out_of_scope(model_a: "_Model", model_b: "_Model") -> List[str]:
    """Why the pair cannot be tested (an empty list when it can): other vocabulary, depth or width."""
    reasons = []
    if model_a.vocab != model_b.vocab:
        reasons.append(f"the vocabularies differ ({model_a.vocab} and {model_b.vocab} embedding rows): the "
                       "residual-stream alignment reads both models through the same tokens")
    elif model_a.token_table() is not None and model_b.token_table() is not None and \
            model_a.token_table() != model_b.token_table():
        reasons.append("the tokenizers map tokens to other ids (tokenizer.json vocabularies differ): the "
                       "residual-stream alignment reads both models through the same tokens")
    if model_a.num_layers != model_b.num_layers:
        reasons.append(f"the depths differ ({model_a.num_layers} and {model_b.num_layers} layers): a pruned or "
                       "depth-upscaled copy is out of scope for this test")
    widths = [(name, x, y) for name, x, y in (
        ("hidden", model_a.hidden, model_b.hidden), ("intermediate", model_a.intermediate, model_b.intermediate),
        ("attention heads", model_a.heads, model_b.heads), ("key/value heads", model_a.kv_heads, model_b.kv_heads),
        ("head_dim", model_a.head_dim, model_b.head_dim)) if x != y]
    if widths:
        reasons.append("the widths differ (" + ", ".join(f"{n} {x} and {y}" for n, x, y in widths) +
                       "): a width-pruned or widened copy is out of scope for this test")
    return reasons


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
            matching agreements, null_rate, p_value, similarity = mean matched |cosine| of gate, up,
            down) and block 'attention' (heads, QK/OV matching agreements, exact-null p_value,
            evidence only); ``supports`` marks the rows significant at `level`.
        alignments: a list of dicts (alignment, change, measure): what was undone and how much it moved.
        nf_table: the paper's NF per (layer, kind) without alignment (None when not computed).
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
                self.reasons.append(f"too few MLP units for the test to reach level {level:g} (the smallest "
                                    f"p-value it can give is {math.exp(best):.3g})")
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
    """The permutation of B's units that maximizes the summed |similarity| with A's (Hungarian algorithm):
    entry i is the unit of B matched to unit i of A."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-np.abs(similarity))
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = cols
    return order


# ---------------------------------------------------------------------- reading the models

class _Model:
    """One folder: its checkpoint, sizes and the residual-stream tensors lineage reads."""

    def __init__(self, model: "hub.ResolvedModel", label: str, base: Optional["hub.ResolvedModel"] = None,
                 residual_base: bool = False):
        from .checkpoint import architecture, open_checkpoint

        self.model, self.folder, self.label = model, model.folder, label
        self.checkpoint = open_checkpoint(model, base, residual_base=residual_base)  # an adapter: on `base`
        # The model whose weight files the test reads: an adapter's base (the adapter's own file came whole).
        self.weights = base if base is not None and self.checkpoint.adapter is not None else model
        self.arch = architecture(self.checkpoint)
        self.model_type = self.arch["model_type"]
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise InvalidArgumentError(
                f"{label} '{printable(model.name)}': lineage reads {', '.join(SUPPORTED_MODEL_TYPES)} models "
                f"(RMSNorm before each block, norms and embeddings by their transformers names); got model_type "
                f"{printable(self.model_type)!r}")
        family = _FAMILIES[self.model_type]
        names = family["lineage"]
        config = self.checkpoint.config
        self.num_layers = self.arch["num_layers"]
        self.sources = {(s["layer"], s["kind"]): s for s in self.arch["matrices"] if s["expert"] == -1}
        q = self.sources[(0, "q")]
        k = self.sources[(0, "k")]
        self.hidden = q["in_features"]
        self.intermediate = self.sources[(0, "gate")]["out_features"]
        self.head_dim = int(config.get("head_dim") or self.hidden // int(config["num_attention_heads"]))
        self.heads = q["out_features"] // self.head_dim
        self.kv_heads = k["out_features"] // self.head_dim
        self.embedding_name = names["embedding"]
        self.unembedding_name = names["unembedding"] if names["unembedding"] in self.checkpoint else self.embedding_name
        self.norm_before_attention, self.norm_before_mlp = names["norm_before_attention"], names["norm_before_mlp"]
        self._layer_names = family["prefixes"][0] + family["layer_container"]  # "model.layers"
        self._require(self.embedding_name)
        self.vocab = int(self.checkpoint.info(self.embedding_name)["shape"][0])

    def _require(self, name: str) -> None:
        if name not in self.checkpoint:
            raise InvalidArgumentError(f"{self.label} '{printable(self.model.name)}': tensor {name} is missing "
                                       "(lineage reads the embeddings and the RMSNorm weights)")
        dtype = self.checkpoint.info(name)["dtype"]
        if dtype not in _FLOAT_DTYPES:
            raise InvalidArgumentError(f"{self.label} '{printable(self.model.name)}': tensor {name} is stored as "
                                       f"{dtype}; lineage reads embeddings and norms in {', '.join(_FLOAT_DTYPES)}")

    def vector(self, name: str) -> np.ndarray:
        """A norm weight, float64."""
        self._require(name)
        return np.asarray(self.checkpoint.read(name), dtype=np.float64)

    def rows(self, name: str) -> np.ndarray:
        """A [vocab, hidden] embedding matrix, float32 (large: read once)."""
        self._require(name)
        return np.asarray(self.checkpoint.read(name), dtype=np.float32)

    def matrix(self, layer: int, kind: str) -> np.ndarray:
        """A projection in the transformers orientation [out, in], float64, dequantized by the core."""
        return _core.read_matrix(self.checkpoint, self.sources[(layer, kind)], "float64").T

    def norm(self, layer: int, which: str) -> np.ndarray:
        return self.vector(self._norm_name(layer, which))

    def _norm_name(self, layer: int, which: str) -> str:
        return f"{self._layer_names}.{layer}.{which}.weight"

    def tensors(self, layers: Sequence[int]) -> List[str]:
        """The stored tensors the test reads at `layers` (what to fetch of a Hub model): the embeddings, the
        final norm, and per layer both norms and the projections (with their scales)."""
        names = [self.embedding_name, self.unembedding_name, FINAL_NORM]
        sources = []
        for layer in layers:
            names += [self._norm_name(layer, self.norm_before_attention), self._norm_name(layer, self.norm_before_mlp)]
            sources += [self.sources[(layer, kind)] for kind in _LINEAGE_KINDS]
        return list(dict.fromkeys(names + hub.source_tensors(self.checkpoint, sources)))

    def token_table(self) -> Optional[Dict[str, int]]:
        """tokenizer.json's token -> id table, or None where there is none."""
        if not hasattr(self, "_tokens"):
            self._tokens = None
            path = hub.repo_file(self.model, "tokenizer.json")
            try:
                if path is None:
                    raise FileNotFoundError("tokenizer.json")
                with open(path, encoding="utf-8") as f:
                    vocab = json.load(f).get("model", {}).get("vocab")
                self._tokens = vocab if isinstance(vocab, dict) else None
            except (OSError, ValueError, AttributeError):
                self._tokens = None
        return self._tokens

    def mlp_vectors(self, layer: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per hidden unit, its residual-stream vectors: gate and up rows (norm folded in), down column."""
        norm = self.norm(layer, self.norm_before_mlp)
        return (self.matrix(layer, "gate") * norm, self.matrix(layer, "up") * norm, self.matrix(layer, "down").T)

    def attention_vectors(self, layer: int) -> Dict[str, np.ndarray]:
        """q [heads, hd, d], k and v [kv_heads, hd, d] (norm folded in), o [heads, hd, d] (output directions)."""
        norm = self.norm(layer, self.norm_before_attention)
        hd, d = self.head_dim, self.hidden
        return {"q": (self.matrix(layer, "q") * norm).reshape(self.heads, hd, d),
                "k": (self.matrix(layer, "k") * norm).reshape(self.kv_heads, hd, d),
                "v": (self.matrix(layer, "v") * norm).reshape(self.kv_heads, hd, d),
                "o": self.matrix(layer, "o").T.reshape(self.heads, hd, d)}


class _ProbePair:
    """The whitened probes of both models, and coordinates in which they compare.

    A residual-stream vector x of A is seen through its profile P_A T_A x (P: embedding rows and
    unembedding rows with the final norm folded in; T = G^-1/2, G = P^T P, ridge-regularized); likewise
    for B. Both profiles live in the span of [P_A T_A, P_B T_B], of dimension at most 2d: with
    L = H^1/2 of that pair's Gram matrix H, x_a maps to L[:, :d] x_a and x_b to L[:, d:] x_b, and
    inner products of profiles become plain dot products of these 2d coordinates. A residual rotation R
    of B (P_B = P_A R) leaves every profile where it was."""

    def __init__(self, model_a: _Model, model_b: _Model):
        d = model_a.hidden
        gram_a, gram_b, cross = (np.zeros((d, d)) for _ in range(3))
        for name_a, name_b, final in ((model_a.embedding_name, model_b.embedding_name, False),
                                      (model_a.unembedding_name, model_b.unembedding_name, True)):
            rows_a, rows_b = model_a.rows(name_a), model_b.rows(name_b)
            scale_a = model_a.vector(FINAL_NORM) if final else np.ones(d)
            scale_b = model_b.vector(FINAL_NORM) if final else np.ones(d)
            for start in range(0, len(rows_a), _PROBE_CHUNK):
                chunk_a = rows_a[start:start + _PROBE_CHUNK].astype(np.float64) * scale_a
                chunk_b = rows_b[start:start + _PROBE_CHUNK].astype(np.float64) * scale_b
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
        (the control pairs reuse B's next layer)."""
        key = (side, block, layer)
        if key not in self._cache:
            if block == "mlp":
                gate, up, down = (self.coordinates(x, side) for x in model.mlp_vectors(layer))
                value = (gate, up, down, _unit_rows(_orthogonal_to(up, gate)))
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
    """Cosines of the invariant products X^T Y of (X, Y) pairs ([hd, 2d] each, profile coordinates):
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


# ---------------------------------------------------------------------- per-layer tests

_COLUMNS = ["layer", "block", "kinds", "units", "statistic", "null_rate", "p_value", "log_p", "log_p_min",
            "similarity", "supports"]


def _mlp_matchings(model_a: _Model, model_b: _Model, probes: _ProbePair, layer_a: int, layer_b: int):
    """B's units matched to A's by gate rows and by up rows (made orthogonal to the unit's own gate row)."""
    gate_a, up_a, down_a, up_rest_a = probes.layer(model_a, "a", "mlp", layer_a)
    gate_b, up_b, down_b, up_rest_b = probes.layer(model_b, "b", "mlp", layer_b)
    by_gate = match_units(_cosines(gate_a, gate_b))
    by_up = match_units(up_rest_a @ up_rest_b.T)
    return by_gate, by_up, ((gate_a, gate_b), (up_a, up_b), (down_a, down_b))


def _mlp_row(model_a: _Model, model_b: _Model, probes: _ProbePair, layer: int, moves: Dict[str, list]) -> Dict:
    by_gate, by_up, vectors = _mlp_matchings(model_a, model_b, probes, layer, layer)
    matched = [float(np.mean(np.abs(np.sum(_unit_rows(xa) * _unit_rows(xb[by_gate]), axis=1))))
               for xa, xb in vectors]
    moves["units"].append(float(np.mean(by_gate != np.arange(len(by_gate)))))
    return {"layer": layer, "block": "mlp", "kinds": "gate,up,down", "units": len(by_gate),
            "statistic": int(np.sum(by_gate == by_up)), "similarity": float(np.mean(matched))}


def _with_p_values(table: pd.DataFrame, controls: Sequence[int]) -> pd.DataFrame:
    """The MLP rows' null rate and p-values. Control pairs (layer l of A against layer l+1 of B) share no
    units under either hypothesis; where their agreements exceed the rate of independent permutations (1),
    their mean is the null rate."""
    rate = max(1.0, float(np.mean(controls))) if len(controls) else 1.0
    for index, row in table.iterrows():
        if row["block"] == "mlp":
            log_p = poisson_log_sf(int(row["statistic"]), rate)
            table.loc[index, ["null_rate", "log_p", "p_value", "log_p_min"]] = [
                rate, log_p, math.exp(log_p), poisson_log_sf(int(row["units"]), rate)]
    table.attrs["controls"] = list(controls)
    return table[[c for c in _COLUMNS if c != "supports"]].copy()


def _attention_row(model_a: _Model, model_b: _Model, probes: _ProbePair, layer: int,
                   moves: Dict[str, list]) -> Dict:
    va, vb = probes.layer(model_a, "a", "attention", layer), probes.layer(model_b, "b", "attention", layer)
    per_group = model_a.heads // model_a.kv_heads
    # KV groups first: K and V rows keep their order inside a head (no disguise turns inside a head).
    group_sims = sum(np.abs(_cosines(va[part].reshape(model_a.kv_heads, -1), vb[part].reshape(model_b.kv_heads, -1)))
                     for part in ("k", "v"))
    groups = match_units(group_sims)
    agreements, similarity, moved, scales = 0, [], 0, []
    for g in range(model_a.kv_heads):
        heads_a = np.arange(g * per_group, (g + 1) * per_group)
        heads_b = np.arange(groups[g] * per_group, (groups[g] + 1) * per_group)
        qk = _product_cosines([(va["q"][h], va["k"][g]) for h in heads_a],
                              [(vb["q"][h], vb["k"][groups[g]]) for h in heads_b])
        ov = _product_cosines([(va["v"][g], va["o"][h]) for h in heads_a],
                              [(vb["v"][groups[g]], vb["o"][h]) for h in heads_b])
        by_qk, by_ov = match_units(qk), match_units(ov)
        agreements += int(np.sum(by_qk == by_ov))
        similarity += [abs(qk[i, by_qk[i]]) for i in range(per_group)] + [abs(ov[i, by_ov[i]])
                                                                           for i in range(per_group)]
        moved += int(np.sum(heads_b[by_qk] != heads_a))
        # Per-head W_Q norm relative to A: a Q/K rescaling moves it, the invariant product does not move.
        scales += [np.linalg.norm(vb["q"][heads_b[by_qk[i]]]) / np.linalg.norm(va["q"][heads_a[i]])
                   for i in range(per_group)]
    moves["heads"].append(moved / model_a.heads)
    log_scales = np.log(np.maximum(scales, 1e-300))
    moves["head_scales"].append(float(np.max(np.abs(log_scales - np.median(log_scales)))))
    null = fixed_point_distribution([per_group] * model_a.kv_heads)
    tail = float(np.sum(null[agreements:]))
    return {"layer": layer, "block": "attention", "kinds": "q,k,v,o", "units": model_a.heads,
            "statistic": agreements, "null_rate": float(np.dot(np.arange(len(null)), null)),
            "p_value": tail, "log_p": math.log(max(tail, 1e-300)),
            "log_p_min": math.log(max(float(null[-1]), 1e-300)), "similarity": float(np.mean(similarity))}


def _alignments(model_a: _Model, model_b: _Model, probes: _ProbePair, moves: Dict[str, list]) -> List[Dict]:
    fold = max(float(np.max(np.abs(model.vector("model.norm.weight") - 1.0))) for model in (model_a, model_b))
    rotation_change = float(np.linalg.norm(probes.rotation - np.eye(len(probes.rotation))) /
                            math.sqrt(2.0 * len(probes.rotation)))
    return [
        {"alignment": "RMSNorm weights folded into the next matrices (both models)",
         "measure": "largest |final norm weight - 1| of the two models", "change": fold},
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
    "folded in, permuted MLP units or heads, per-head Q/K or V/O rescaling, uniform scaling) are undone or "
    "ignored: the statistics read each model through its own embeddings, match units and heads, and use cosines "
    "of invariant products.</li>"
    "<li><b>derived</b> does not say which model came first, nor how much was trained on top. "
    "<b>independent</b> means no unit kept its identity; a copy retrained until none did reads the same. "
    "Pruned or depth-upscaled copies, other vocabularies and other widths are out of scope.</li>"
    "<li>References: He and Cao, arXiv 2509.17866, App. F (I<sub>orth</sub> as a fingerprint); Zhu, Ahmed, "
    "Kuditipudi and Liang, <i>Independence Tests for Language Models</i>, ICML 2025 (matching of MLP units, "
    "Fisher's method); Zeng et al., <i>HuRef</i>, NeurIPS 2024 (invariant products); Ainsworth et al., "
    "<i>Git Re-Basin</i>, ICLR 2023 (unit matching); Ashkboos et al., <i>SliceGPT</i> and <i>QuaRot</i> "
    "(residual rotations).</li></ul></section>")
