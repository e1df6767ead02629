"""One base against the checkpoints of a training run: :func:`track` and :class:`Trajectory`.

``postsvd.track(base, [ckpt, ...], out=DIR)`` compares the base with every
checkpoint (steps of an SFT or RL run) and shows how the measures move with
the step: the mean NF and the pooled scaling mean ± std per kind against the
step, and the per-layer NF over the steps as heatmaps. The base's
decompositions are computed once and reused for every checkpoint through the
factor cache (``cache=``; without one, a temporary cache for the run, removed
at the end). Steps come from the folder names (``checkpoint-1200``,
``step_300``, ``global_step40``, ``1200``), from a Hub model's revision
(``org/run@step-1200``), or from ``steps=``. A training run kept as revisions
of one Hub repo: ``track(base, "org/run", revisions=["step-100", ...])``.

(The module is ``postsvd.tracking`` so that the function ``postsvd.track``
does not shadow it.)
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Any, Iterator, List, Optional, Sequence, Union

import numpy as np
import pandas as pd

from . import interactive as _interactive
from ._display import display_figure, use_interactive
from ._engine import named_models, resolve_models
from ._html import display, escape as _e, figure as _figure, page, small_table
from ._names import short_name
from ._outputs import FileSet, atomic_folder
from ._terminal import printable
from ._validate import INTRUDER_DEFAULTS, LayersArg, KindsArg, normalize_output_folder, normalize_warm_start
from ._version import __version__
from .compare import check_compare_arguments, compare
from .comparison import COMPARISON_FILES, OUTPUT_SCHEMA_VERSION, Comparison
from .errors import InvalidArgumentError, naming_models
from .hub import ResolvedModel, is_hub_name

PathLike = Union[str, "os.PathLike[str]"]

#: Folder names that carry a step: checkpoint-1200, step_300, global_step40, iter-5, ckpt7, or just 1200.
STEP_NAME = re.compile(r"(?:.*?[-_.]?)?(?:checkpoint|global_step|step|iter|ckpt)[-_]?(\d+)|(\d+)", re.IGNORECASE)
#: The page's file name inside the output folder.
TRACK_PAGE = "track.html"
#: What :meth:`Trajectory.save` writes: a folder per checkpoint (the tables of a comparison) and the run's own files.
TRACK_FILES = FileSet("a track run", ["trajectory.csv", "trajectory.json", "table.csv", "run.json", TRACK_PAGE,
                                     "nf_trajectory.png", "scaling_trajectory.png", "nf_heatmap.png", "step-{step}/"],
                      fields={"step": r"\d+"}, folders={"step-{step}/": COMPARISON_FILES})


def step_of(folder: Union[PathLike, ResolvedModel]) -> int:
    """The training step in a checkpoint's name: a folder's (``checkpoint-1200`` -> 1200), or a Hub model's
    revision (``org/run@step-1200`` -> 1200; its repo name when it names no revision)."""
    where = "folder"
    if isinstance(folder, ResolvedModel) and not folder.is_local:
        name = folder.revision if folder.revision is not None else short_name(folder.repo_id or folder.name)
        where = "revision" if folder.revision is not None else "repo"
    else:
        name = short_name(folder.folder if isinstance(folder, ResolvedModel) else os.fspath(folder))
    match = STEP_NAME.fullmatch(name)
    if match is None:
        raise InvalidArgumentError(f"checkpoint {name!r}: no step in the {where} name (expected a name like "
                                   f"'checkpoint-1200' or 'step_300'); pass steps= (--steps) instead")
    return int(match.group(1) or match.group(2))


def checkpoint_list(base: Optional[PathLike], checkpoints: Union[PathLike, Sequence[PathLike]] = (),
                    revisions: Optional[Sequence[str]] = None) -> List[Any]:
    """The checkpoints of :func:`track`: as given, or with `revisions` ``repo@revision`` for each revision of
    the run's repo (`checkpoints`: that repo, ``org/name``; empty: the base's repo)."""
    given = [checkpoints] if isinstance(checkpoints, (str, bytes, os.PathLike, ResolvedModel)) else list(checkpoints)
    if revisions is None:
        if not given:
            raise InvalidArgumentError("checkpoints: expected at least one checkpoint folder, got none")
        return given
    if len(given) > 1:
        raise InvalidArgumentError(f"checkpoints: with revisions, expected at most the run's repo, got "
                                   f"{len(given)} checkpoints")
    run = given[0] if given else base
    if run is None:
        raise InvalidArgumentError("revisions: expected the run as a Hub repo id (org/name), got none")
    repo = run.repo_id if isinstance(run, ResolvedModel) else os.fspath(run)
    repo = (repo or "").removeprefix("hf://").split("@", 1)[0]
    if not isinstance(repo, str) or not is_hub_name(repo) or os.path.lexists(repo):
        raise InvalidArgumentError(f"revisions: expected the run as a Hub repo id (org/name), got {repo!r}")
    items = [str(r).strip() for r in ([revisions] if isinstance(revisions, str) else revisions)]
    if not items or not all(items):
        raise InvalidArgumentError(f"revisions: expected revision names like step-100,step-200, got {revisions!r}")
    return [f"{repo}@{r}" for r in items]


def track(base: Optional[PathLike], checkpoints: Union[PathLike, Sequence[PathLike]] = (), *,
          revisions: Optional[Sequence[str]] = None, steps: Optional[Sequence[int]] = None,
          out: Optional[PathLike] = None, device: str = "cpu", dtype: str = "float32", layers: LayersArg = None,
          kinds: KindsArg = None, progress: bool = True, num_threads: Optional[int] = None,
          cache: Optional[PathLike] = None, executor: str = "local", ray_address: Optional[str] = None,
          title: Optional[str] = None, warm_start: Union[bool, str] = True, whole_files: bool = False,
          interactive: Optional[bool] = None, residual_base: bool = False,
          intruder_k: int = INTRUDER_DEFAULTS["k"], intruder_epsilon: float = INTRUDER_DEFAULTS["epsilon"],
          intruder_side: str = INTRUDER_DEFAULTS["side"]) -> "Trajectory":
    """Compares `base` with each checkpoint of a training run; returns a :class:`Trajectory`.

    Args:
        base: the base model: a folder or a Hub repo id (``org/name[@revision]``); None when the
            checkpoints are PEFT adapters naming their base.
        checkpoints: the checkpoints (same architecture as the base), folders or Hub names
            (``org/run@step-1200``), in any order; the trajectory is ordered by step. With
            `revisions`: the run's repo (``org/run``), or nothing for the base's repo. PEFT LoRA
            adapter checkpoints (a LoRA run's checkpoint-N folders) are applied to the base
            (docs/adapters.md; `residual_base` as in :func:`postsvd.compare`).
        revisions: a run kept as revisions (branches, tags) of one Hub repo, e.g.
            ``["step-100", "step-200"]``: the checkpoints are ``repo@revision``.
        steps: the step of each checkpoint (None: read from the folder or revision names).
        out: when given, :meth:`Trajectory.save` writes everything there (tables per step,
            trajectory tables, figures and ``track.html``).
        device, dtype, layers, kinds, num_threads, executor, ray_address, whole_files, residual_base,
            intruder_k, intruder_epsilon, intruder_side: as in :func:`postsvd.compare` (``executor='ray'``
            runs each comparison on a Ray cluster; every checkpoint's intruder dimensions are counted
            with the same k, epsilon and side).
        cache: a factor cache folder; the base is decomposed once and loaded for every
            other checkpoint. None: a temporary cache, removed at the end (locally; on Ray,
            pass a folder every node sees, or each checkpoint decomposes the base again).
        title: the page's title.
        warm_start: as in :func:`postsvd.compare`; with a cache, each checkpoint starts from
            the previous checkpoint's factors (the first from the base's).
        interactive: the page's figures, as in :func:`postsvd.report` (None: plotly where installed).
    """
    warm_start = normalize_warm_start(warm_start)
    base_model, models = resolve_models(base, checkpoint_list(base, checkpoints, revisions), "checkpoint")
    if steps is None:
        step_list = [step_of(m) for m in models]
    else:
        step_list = [_step_value(s) for s in steps]
        if len(step_list) != len(models):
            raise InvalidArgumentError(f"steps: expected one step per checkpoint ({len(models)}), "
                                       f"got {len(step_list)}")
    if len(set(step_list)) != len(step_list):
        raise InvalidArgumentError(f"steps: expected distinct steps, got {step_list}")
    # An error about one checkpoint's data names it as written here (compare calls it the post model).
    named = named_models(*(("checkpoint", model) for model in models))
    with naming_models(*named):
        check_compare_arguments(base_model, models, device="cpu" if executor == "ray" else device, dtype=dtype,
                                layers=layers, kinds=kinds, num_threads=num_threads, cache=cache,
                                outs=[out] if out is not None else (), residual_base=residual_base,
                                intruder_k=intruder_k, intruder_epsilon=intruder_epsilon,
                                intruder_side=intruder_side)
    use_interactive(interactive)
    order = sorted(range(len(models)), key=lambda i: step_list[i])
    comparisons = []
    with _factor_cache(cache, executor) as cache_folder:
        previous = None
        for i in order:
            with naming_models(named[i]):
                comparisons.append(compare(base_model, models[i], device=device, dtype=dtype, layers=layers,
                                           kinds=kinds, progress=progress, num_threads=num_threads,
                                           cache=cache_folder, executor=executor, ray_address=ray_address,
                                           warm_start=warm_start, warm_from=previous if cache_folder else None,
                                           whole_files=whole_files, residual_base=residual_base,
                                           intruder_k=intruder_k, intruder_epsilon=intruder_epsilon,
                                           intruder_side=intruder_side))
            previous = models[i]
    trajectory = Trajectory([step_list[i] for i in order], comparisons, title=title)
    if out is not None:
        trajectory.save(out, interactive=interactive)
    return trajectory


@contextlib.contextmanager
def _factor_cache(cache: Optional[PathLike], executor: str) -> Iterator[Optional[str]]:
    """The cache folder of a run: the caller's, or a temporary one (local runs) removed at the end."""
    if cache is not None or executor == "ray":
        yield None if cache is None else os.fspath(cache)
        return
    folder = tempfile.mkdtemp(prefix="postsvd-track-factors-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _step_value(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise InvalidArgumentError(f"steps: expected non-negative integers, got {step!r}")
    return int(step)


class Trajectory:
    """The comparisons of one base with the checkpoints of a run, ordered by step.

    Attributes:
        steps: the steps, ascending.
        comparisons: a :class:`~postsvd.Comparison` per step.
        kinds: the compared kinds.
    """

    def __init__(self, steps: Sequence[int], comparisons: Sequence[Comparison], title: Optional[str] = None):
        if not comparisons or len(steps) != len(comparisons):
            raise InvalidArgumentError(f"expected one comparison per step, got {len(comparisons)} for "
                                       f"{len(steps)} steps")
        self.steps: List[int] = [int(s) for s in steps]
        self.comparisons: List[Comparison] = list(comparisons)
        self.kinds: List[str] = list(comparisons[0].kinds)
        self.base: str = comparisons[0].base
        self.base_model = comparisons[0].base_model
        self.title = title or f"postsvd track: {self.base_model.label}"

    @property
    def table(self) -> pd.DataFrame:
        """Every compared pair at every step: :attr:`Comparison.table` with a leading ``step`` column."""
        return pd.concat([c.table.assign(step=s) for s, c in zip(self.steps, self.comparisons)], ignore_index=True
                         )[["step"] + list(self.comparisons[0].table.columns)]

    def kind_table(self) -> pd.DataFrame:
        """Per step and kind: :meth:`Comparison.kind_table` with a leading ``step`` column."""
        frames = [c.kind_table().assign(step=s) for s, c in zip(self.steps, self.comparisons)]
        table = pd.concat(frames, ignore_index=True)
        return table[["step"] + [col for col in table.columns if col != "step"]]

    def nf_by_layer(self, kind: str, expert=None) -> np.ndarray:
        """NF of a series of `kind` (see :meth:`Comparison.series`; default: its dense matrices, else its
        routed experts pooled) per compared layer and step: ``[layers, steps]``."""
        if expert is None:
            expert = self.comparisons[0].series(kind)[0].expert
        return np.stack([c.nf(kind, expert) for c in self.comparisons], axis=1)

    # ------------------------------------------------------------------ plots

    def plot_nf(self):
        """Mean NF per kind against the step (dashed: unrelated rotations). A matplotlib Figure."""
        from . import plots

        kinds = self.kind_table()
        series = {k: kinds.loc[kinds["kind"] == k, "nf_mean"].tolist() for k in self.kinds}
        baseline = {k: float(kinds.loc[kinds["kind"] == k, "nf_random"].iloc[0]) for k in self.kinds}
        return plots.plot_trajectory_nf(self.steps, series, baseline)

    def plot_scaling(self):
        """Pooled top-90 % scaling mean ± std per kind against the step. A matplotlib Figure."""
        from . import plots

        kinds = self.kind_table()
        series = {k: {"mean": kinds.loc[kinds["kind"] == k, "scaling_mean"].tolist(),
                      "std": kinds.loc[kinds["kind"] == k, "scaling_std"].tolist()} for k in self.kinds}
        return plots.plot_trajectory_scaling(self.steps, series)

    def plot_nf_heatmap(self):
        """Per-layer NF over the steps, one heatmap per series of the first comparison (a kind's dense
        matrices; MoE: its routed experts pooled, its shared expert). A matplotlib Figure."""
        from . import plots

        first = self.comparisons[0]
        chosen = first.series()
        return plots.plot_nf_heatmap(self.steps, {s.label: self.nf_by_layer(s.kind, s.expert) for s in chosen},
                                     {s.label: first.layers_of(s.kind, s.expert) for s in chosen})

    # ------------------------------------------------------------------ interactive figures (plotly)

    def _per_kind(self) -> dict:
        kinds = self.kind_table()
        return {k: {column: kinds.loc[kinds["kind"] == k, column].tolist()
                    for column in ("nf_mean", "nf_max", "scaling_mean", "scaling_std", "intruders", "nf_random")}
                for k in self.kinds}

    def interactive_steps(self):
        """The mean NF (top) and pooled scaling mean ± std (bottom) per kind against the step, with hover values
        (step, kind, NF mean and max, scaling, intruders). A plotly Figure (``postsvd[interactive]``)."""
        per_kind = self._per_kind()
        return _interactive.trajectory_figure(self.steps, per_kind,
                                              {k: v["nf_random"][0] for k, v in per_kind.items()},
                                              title=f"Along the run: {self.base_model.label} against "
                                                    f"{len(self.steps)} checkpoints")

    def interactive_heatmap(self):
        """Per-layer NF over the steps, one heatmap per series of the first comparison, with hover values.
        A plotly Figure (``postsvd[interactive]``)."""
        first = self.comparisons[0]
        chosen = first.series()
        return _interactive.steps_heatmap(self.steps, {s.label: self.nf_by_layer(s.kind, s.expert) for s in chosen},
                                          {s.label: first.layers_of(s.kind, s.expert) for s in chosen})

    # ------------------------------------------------------------------ output

    def save(self, out_dir: PathLike, interactive: Optional[bool] = None) -> List[str]:
        """Writes the run into `out_dir` (built beside it and moved in when complete); returns the paths.

        Files (:data:`TRACK_FILES`): ``step-<N>/`` per checkpoint (the tables of :meth:`Comparison.save`,
        no plots), ``trajectory.csv`` / ``.json`` (:meth:`kind_table`), ``table.csv`` (:attr:`table`),
        ``nf_trajectory.png``, ``scaling_trajectory.png``, ``nf_heatmap.png``, ``track.html`` and ``run.json``.
        `interactive`: the page's figures, as in :func:`postsvd.report`.
        """
        out = os.fspath(out_dir)
        target = normalize_output_folder(out, "out")
        live = use_interactive(interactive)
        with atomic_folder(target, files=TRACK_FILES) as temp:
            return self._write_files(temp, out, live)

    def _write_files(self, folder: str, out: str, live: bool) -> List[str]:
        written: List[str] = []

        def path(template: str, **values) -> str:
            name = TRACK_FILES.name(template, **values)
            written.append(os.path.join(out, name))
            return os.path.join(folder, name)

        for step, comparison in zip(self.steps, self.comparisons):
            name = TRACK_FILES.name("step-{step}/", step=step)  # listed by its files, not as a folder
            os.mkdir(os.path.join(folder, name))
            written += comparison.write(os.path.join(folder, name), os.path.join(out, name), plots=False)
        kinds = self.kind_table()
        kinds.to_csv(path("trajectory.csv"), index=False)
        kinds.to_json(path("trajectory.json"), orient="records", indent=1)
        self.table.to_csv(path("table.csv"), index=False)
        for name, figure in self._figures():
            figure.savefig(path(name), dpi=110)
        with open(path(TRACK_PAGE), "w", encoding="utf-8") as f:
            f.write(self.render_html(interactive=live))
        with open(path("run.json"), "w") as f:
            json.dump({"schema_version": OUTPUT_SCHEMA_VERSION, "base": self.base, "steps": self.steps,
                       "checkpoints": [c.post for c in self.comparisons],
                       "base_model": self.base_model.record(),
                       "checkpoint_models": [c.post_model.record() for c in self.comparisons],
                       "runs": [c.run_info() for c in self.comparisons]}, f, indent=1)
        return written

    def _figures(self):
        return [("nf_trajectory.png", self.plot_nf()), ("scaling_trajectory.png", self.plot_scaling()),
                ("nf_heatmap.png", self.plot_nf_heatmap())]

    def render_html(self, interactive: Optional[bool] = None) -> str:
        """The page of the run as one self-contained HTML string (figures embedded, CSS inline; `interactive`:
        as in :func:`postsvd.report`)."""
        live = use_interactive(interactive)
        kinds = self.kind_table()
        rows = "".join(
            f"<tr><td>{row.step}</td><td>{_e(row.kind)}</td><td>{row.scaling_mean:.4f}</td>"
            f"<td>{row.scaling_std:.4f}</td><td>{row.nf_mean:.4f}</td><td>{row.nf_max:.4f}</td>"
            f"<td>{row.nf_random:.4f}</td></tr>" for row in kinds.itertuples())
        checkpoints = "".join(f"<tr><td>{s}</td><td>{_e(c.post_model.description)}</td>"
                              f"<td>{c.elapsed_seconds:.1f} s</td></tr>" for s, c in zip(self.steps, self.comparisons))
        first = self.comparisons[0]
        if live:
            figures = [_interactive.figure_html(self.interactive_steps(), "trajectory",
                                                "mean NF and scaling mean ± std per kind against the step (hover for "
                                                "the values)"),
                       _interactive.figure_html(self.interactive_heatmap(), "nf-heatmap",
                                                "NF per layer over the steps (hover for the values)")]
        else:
            figures = [_figure(self.plot_nf(), "nf-trajectory", "mean NF per kind against the step"),
                       _figure(self.plot_scaling(), "scaling-trajectory",
                               "scaling mean ± std per kind against the step"),
                       _figure(self.plot_nf_heatmap(), "nf-heatmap", "NF per layer over the steps")]
        subtitle = (f"base <code>{_e(self.base_model.description)}</code> against {len(self.steps)} checkpoints "
                    f"(steps {self.steps[0]} to {self.steps[-1]}); {_e(first.model_type)}, {len(first.layers)} of "
                    f"{first.num_layers} layers, {first.device} {first.dtype}")
        sections = [
            "<section id=\"trajectory\"><h2>Along the run</h2><p>NF = ‖Q<sub>1</sub><sup>T</sup>Q<sub>2</sub> − "
            "I‖<sub>F</sub>/k near 0 means the input and output singular vectors rotated together (dashed: "
            "unrelated random rotations); scaling = σ<sub>post</sub>/σ<sub>base</sub> over the top 90 % of "
            "singular values, mean (line) ± std (band).</p>" + "".join(figures) + "</section>",
            '<section id="kinds"><h2>Per step and kind</h2><table class="data"><thead><tr><th>step</th>'
            "<th>kind</th><th>scaling mean</th><th>scaling std</th><th>NF mean</th><th>NF max</th>"
            f"<th>NF unrelated</th></tr></thead><tbody>{rows}</tbody></table></section>",
            '<section id="metadata"><h2>Checkpoints</h2><table class="data"><thead><tr><th>step</th>'
            f"<th>checkpoint</th><th>compare time</th></tr></thead><tbody>{checkpoints}</tbody></table>"
            f"<p>postsvd {_e(__version__)}</p></section>"]
        if not live:
            return page(self.title, sections, subtitle=subtitle)
        return page(self.title, sections, subtitle=subtitle, head=_interactive.runtime_script(),
                    tail=_interactive.page_scripts())

    # ------------------------------------------------------------------ display

    def _headline(self) -> str:
        first = self.comparisons[0]
        return (f"{self.base_model.label} against {len(self.steps)} checkpoints (steps {self.steps[0]}..{self.steps[-1]})"
                f": {first.model_type}, {len(first.layers)} of {first.num_layers} layers x {len(self.kinds)} kinds")

    def _kind_rows(self) -> List[list]:
        """Per kind: NF mean at the first and the last step, scaling there, the last step's reading."""
        kinds = self.kind_table()
        rows = []
        for kind in self.kinds:
            part = kinds[kinds["kind"] == kind]
            first, last = part.iloc[0], part.iloc[-1]
            rows.append([kind, f"{first.nf_mean:.4f} → {last.nf_mean:.4f}", f"{last.nf_random:.4f}",
                         f"{first.scaling_mean:.4f} → {last.scaling_mean:.4f} ± {last.scaling_std:.4f}",
                         int(last.intruders), last.reading])
        return rows

    def __repr__(self) -> str:
        """A few lines: the run, per kind NF and scaling from the first to the last step, the last step's reading."""
        rows = self._kind_rows()
        width = max(len(k) for k in self.kinds)
        lines = [f"<postsvd.Trajectory {printable(self._headline())}"]
        lines += [f"  {r[0]:<{width}}  NF {r[1]} (unrelated {r[2]})  scaling {r[3]}  {r[5]}" for r in rows]
        lines.append(f"  At step {self.steps[-1]}: {self.comparisons[-1].overall()}>")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The rich display in Jupyter: the last step's reading, per kind NF and scaling from the first to the
        last step, and the trajectory figure (interactive with ``postsvd[interactive]``, else a small PNG)."""
        body = [f'<div class="pd-reading"><b>At step {self.steps[-1]}:</b> {_e(self.comparisons[-1].overall())}</div>',
                small_table(["kind", f"NF mean (step {self.steps[0]} → {self.steps[-1]})", "NF unrelated",
                             "scaling mean (→ ± std at the end)", "intruders (end)", "reading (end)"],
                            self._kind_rows()),
                display_figure(self.interactive_steps, self.plot_nf, "mean NF and scaling per kind against the step")]
        hint = ("More: <code>.kind_table()</code>, <code>.table</code>, <code>.interactive_heatmap()</code> (NF per "
                "layer over the steps), <code>.save(DIR)</code> (track.html and the tables).")
        return display("postsvd.Trajectory", self._headline(), body, hint)
