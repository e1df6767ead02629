"""One base against the checkpoints of a training run: :func:`track` and :class:`Trajectory`.

``postsvd.track(base, [ckpt, ...], out=DIR)`` compares the base with every
checkpoint (steps of an SFT or RL run) and shows how the measures move with
the step: the mean NF and the pooled scaling mean ± std per kind against the
step, and the per-layer NF over the steps as heatmaps. The base's
decompositions are computed once and reused for every checkpoint through the
factor cache (``cache=``; without one, a temporary cache for the run, removed
at the end). Steps come from the folder names (``checkpoint-1200``,
``step_300``, ``global_step40``, ``1200``) or from ``steps=``.

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

from ._html import escape as _e, figure as _figure, page
from ._names import short_name
from ._outputs import FileSet, atomic_folder
from ._validate import LayersArg, KindsArg, normalize_folder, normalize_output_folder, normalize_warm_start
from ._version import __version__
from .compare import check_compare_arguments, compare
from .comparison import COMPARISON_FILES, OUTPUT_SCHEMA_VERSION, Comparison
from .errors import InvalidArgumentError

PathLike = Union[str, "os.PathLike[str]"]

#: Folder names that carry a step: checkpoint-1200, step_300, global_step40, iter-5, ckpt7, or just 1200.
STEP_NAME = re.compile(r"(?:.*?[-_.]?)?(?:checkpoint|global_step|step|iter|ckpt)[-_]?(\d+)|(\d+)", re.IGNORECASE)
#: The page's file name inside the output folder.
TRACK_PAGE = "track.html"
#: What :meth:`Trajectory.save` writes: a folder per checkpoint (the tables of a comparison) and the run's own files.
TRACK_FILES = FileSet("a track run", ["trajectory.csv", "trajectory.json", "table.csv", "run.json", TRACK_PAGE,
                                     "nf_trajectory.png", "scaling_trajectory.png", "nf_heatmap.png", "step-{step}/"],
                      fields={"step": r"\d+"}, folders={"step-{step}/": COMPARISON_FILES})


def step_of(folder: PathLike) -> int:
    """The training step in a checkpoint folder's name (``checkpoint-1200`` -> 1200)."""
    name = short_name(os.fspath(folder))
    match = STEP_NAME.fullmatch(name)
    if match is None:
        raise InvalidArgumentError(f"checkpoint {name!r}: no step in the folder name (expected a name like "
                                   f"'checkpoint-1200' or 'step_300'); pass steps= (--steps) instead")
    return int(match.group(1) or match.group(2))


def track(base: Optional[PathLike], checkpoints: Sequence[PathLike], *, steps: Optional[Sequence[int]] = None,
          out: Optional[PathLike] = None, device: str = "cpu", dtype: str = "float32", layers: LayersArg = None,
          kinds: KindsArg = None, progress: bool = True, num_threads: Optional[int] = None,
          cache: Optional[PathLike] = None, executor: str = "local", ray_address: Optional[str] = None,
          title: Optional[str] = None, warm_start: Union[bool, str] = True,
          residual_base: bool = False) -> "Trajectory":
    """Compares `base` with each checkpoint of a training run; returns a :class:`Trajectory`.

    Args:
        base: the base model folder; None when the checkpoints are PEFT adapters naming their base.
        checkpoints: the checkpoint folders (same architecture as the base), in any order;
            the trajectory is ordered by step. PEFT LoRA adapter checkpoints (a LoRA run's
            checkpoint-N folders) are applied to the base (docs/adapters.md; `residual_base` as
            in :func:`postsvd.compare`).
        steps: the step of each checkpoint (None: read from the folder names).
        out: when given, :meth:`Trajectory.save` writes everything there (tables per step,
            trajectory tables, figures and ``track.html``).
        device, dtype, layers, kinds, num_threads, executor, ray_address: as in
            :func:`postsvd.compare` (``executor='ray'`` runs each comparison on a Ray cluster).
        cache: a factor cache folder; the base is decomposed once and loaded for every
            other checkpoint. None: a temporary cache, removed at the end (locally; on Ray,
            pass a folder every node sees, or each checkpoint decomposes the base again).
        title: the page's title.
        warm_start: as in :func:`postsvd.compare`; with a cache, each checkpoint starts from
            the previous checkpoint's factors (the first from the base's).
    """
    warm_start = normalize_warm_start(warm_start)
    folders = [normalize_folder(c, "checkpoint") for c in checkpoints]
    if not folders:
        raise InvalidArgumentError("checkpoints: expected at least one checkpoint folder, got none")
    if steps is None:
        step_list = [step_of(f) for f in folders]
    else:
        step_list = [_step_value(s) for s in steps]
        if len(step_list) != len(folders):
            raise InvalidArgumentError(f"steps: expected one step per checkpoint ({len(folders)}), "
                                       f"got {len(step_list)}")
    if len(set(step_list)) != len(step_list):
        raise InvalidArgumentError(f"steps: expected distinct steps, got {step_list}")
    check_compare_arguments(base, folders, device="cpu" if executor == "ray" else device, dtype=dtype,
                            layers=layers, kinds=kinds, num_threads=num_threads, cache=cache,
                            outs=[out] if out is not None else (), residual_base=residual_base)
    order = sorted(range(len(folders)), key=lambda i: step_list[i])
    comparisons = []
    with _factor_cache(cache, executor) as cache_folder:
        previous = None
        for i in order:
            comparisons.append(compare(base, folders[i], device=device, dtype=dtype, layers=layers, kinds=kinds,
                                       progress=progress, num_threads=num_threads, cache=cache_folder,
                                       executor=executor, ray_address=ray_address, warm_start=warm_start,
                                       warm_from=previous if cache_folder else None, residual_base=residual_base))
            previous = folders[i]
    trajectory = Trajectory([step_list[i] for i in order], comparisons, title=title)
    if out is not None:
        trajectory.save(out)
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
        self.title = title or f"postsvd track: {short_name(self.base)}"

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

    # ------------------------------------------------------------------ output

    def save(self, out_dir: PathLike) -> List[str]:
        """Writes the run into `out_dir` (built beside it and moved in when complete); returns the paths.

        Files (:data:`TRACK_FILES`): ``step-<N>/`` per checkpoint (the tables of :meth:`Comparison.save`,
        no plots), ``trajectory.csv`` / ``.json`` (:meth:`kind_table`), ``table.csv`` (:attr:`table`),
        ``nf_trajectory.png``, ``scaling_trajectory.png``, ``nf_heatmap.png``, ``track.html`` and ``run.json``.
        """
        out = os.fspath(out_dir)
        target = normalize_output_folder(out, "out")
        with atomic_folder(target, files=TRACK_FILES) as temp:
            return self._write_files(temp, out)

    def _write_files(self, folder: str, out: str) -> List[str]:
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
            f.write(self.render_html())
        with open(path("run.json"), "w") as f:
            json.dump({"schema_version": OUTPUT_SCHEMA_VERSION, "base": self.base, "steps": self.steps,
                       "checkpoints": [c.post for c in self.comparisons],
                       "runs": [c.run_info() for c in self.comparisons]}, f, indent=1)
        return written

    def _figures(self):
        return [("nf_trajectory.png", self.plot_nf()), ("scaling_trajectory.png", self.plot_scaling()),
                ("nf_heatmap.png", self.plot_nf_heatmap())]

    def render_html(self) -> str:
        """The page of the run as one self-contained HTML string (figures embedded, CSS inline)."""
        kinds = self.kind_table()
        rows = "".join(
            f"<tr><td>{row.step}</td><td>{_e(row.kind)}</td><td>{row.scaling_mean:.4f}</td>"
            f"<td>{row.scaling_std:.4f}</td><td>{row.nf_mean:.4f}</td><td>{row.nf_max:.4f}</td>"
            f"<td>{row.nf_random:.4f}</td></tr>" for row in kinds.itertuples())
        checkpoints = "".join(f"<tr><td>{s}</td><td>{_e(os.path.abspath(c.post))}</td>"
                              f"<td>{c.elapsed_seconds:.1f} s</td></tr>" for s, c in zip(self.steps, self.comparisons))
        first = self.comparisons[0]
        figures = [_figure(self.plot_nf(), "nf-trajectory", "mean NF per kind against the step"),
                   _figure(self.plot_scaling(), "scaling-trajectory", "scaling mean ± std per kind against the step"),
                   _figure(self.plot_nf_heatmap(), "nf-heatmap", "NF per layer over the steps")]
        subtitle = (f"base <code>{_e(os.path.abspath(self.base))}</code> against {len(self.steps)} checkpoints "
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
            f"<th>folder</th><th>compare time</th></tr></thead><tbody>{checkpoints}</tbody></table>"
            f"<p>postsvd {_e(__version__)}</p></section>"]
        return page(self.title, sections, subtitle=subtitle)

    def __repr__(self) -> str:
        return f"<postsvd.Trajectory {len(self.steps)} steps ({self.steps[0]}..{self.steps[-1]}), {len(self.kinds)} kinds>"
