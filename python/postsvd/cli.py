"""The ``postsvd`` command line: every subcommand lives here.

Each subcommand is a function that adds it to the subparsers (:data:`SUBCOMMANDS`)
and a ``run_*`` function that takes the parsed arguments and returns the exit
code. The options that compare, report and construct share are declared once,
in :func:`shared_options`, and reach those commands as an argparse parent. The
library modules (compare, constructions, reports, ...) never import this one.

Exit codes: 0 success, 1 a postsvd error (message on stderr, no traceback),
2 a usage error (argparse), 141 stdout closed early (``postsvd info X | head``;
the shell's code for SIGPIPE, no message).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

from ._names import distinct, short_name
from ._outputs import atomic_file
from ._terminal import printable
from ._validate import (DTYPES, GROUP_ALIASES, INTRUDER_DEFAULTS, INTRUDER_SIDES, KIND_GROUPS, KINDS,
                        WARM_START_MODES, expert_label, normalize_experts, normalize_output_file,
                        normalize_output_folder, parse_matrix_pairs)
from .errors import InvalidArgumentError, PostsvdError

PROG = "postsvd"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (unless the help already states one, or there is none) and keeps the examples' line breaks."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if "default" in help_text or action.default in (None, False, argparse.SUPPRESS):
            return help_text
        return super()._get_help_string(action)


# ---------------------------------------------------------------------- shared options

def _group_arg(text: str) -> str:
    """--group's value in its one spelling ('attn' -> 'attention'); argparse checks the choices after this."""
    name = text.strip().lower()
    return GROUP_ALIASES.get(name, name)


def shared_options(with_group: bool = False) -> argparse.ArgumentParser:
    """The parent parser of compare, report and construct: device, precision, selection, threads, factor
    cache, progress. `with_group` adds construct's --group, exclusive with --kinds."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--device", default="cpu", help="'cpu', or 'cuda' / 'cuda:N' in a CUDA build")
    parent.add_argument("--dtype", default="float32", choices=list(DTYPES), help="working precision")
    parent.add_argument("--layers", default=None, metavar="LIST", help="layers, e.g. 0,1,5-9 (default: all)")
    selection = parent.add_mutually_exclusive_group() if with_group else parent
    selection.add_argument("--kinds", default=None, metavar="LIST",
                           help=f"kinds: {','.join(KINDS)} or the groups attention / mlp (default: all)")
    if with_group:
        selection.add_argument("--group", default=None, type=_group_arg, choices=list(KIND_GROUPS),
                               help=f"instead of --kinds: attention = {','.join(KIND_GROUPS['attention'])}; "
                                    f"mlp = {','.join(KIND_GROUPS['mlp'])}; all (the kinds the model has)")
    parent.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: all cores)")
    parent.add_argument("--cache", default=None, metavar="DIR",
                        help="factor cache folder shared by compare, report and construct: each matrix is "
                             "decomposed once (a base once for all its post models) and reused later")
    parent.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parent.add_argument("--warm-start", dest="warm_start", default="auto", choices=WARM_START_MODES,
                        help="decompose post matrices from the base's factors: auto (where the backend measured "
                             "it faster; today neither backend does), always, or off (default: auto)")
    parent.add_argument("--no-warm-start", dest="warm_start", action="store_const", const="off",
                        help="the same as --warm-start off")
    parent.add_argument("--dry-run", action="store_true",
                        help="Hub models: print what would be fetched (files, byte ranges, bytes, the disk it needs "
                             "and the free space) and stop; reads only config, index and shard headers")
    parent.add_argument("--whole-files", action="store_true",
                        help="Hub models: fetch the shards holding the needed tensors complete (into the Hugging "
                             "Face cache) instead of only the tensors' byte ranges")
    parent.add_argument("--residual-base", action="store_true",
                        help="PEFT adapters whose initialization changed the base (init_lora_weights pissa, olora, "
                             "corda, loftq, lora_ga): the base named is the residual model they apply to")
    return parent


#: How a model argument may be written (the help of every model argument).
MODEL_HELP = "a folder (config.json + *.safetensors) or a Hub repo id: org/name, org/name@revision, hf://org/name"
#: The base of compare, report and track: it may be left out before one PEFT adapter.
ADAPTER_BASE_HELP = (f"the base model: {MODEL_HELP}; left out before a single PEFT adapter (a folder or a Hub repo "
                     f"with adapter_config.json) that names its base")


def _print_plans(plans) -> int:
    """--dry-run: each model's fetch plan, then the total; nothing is fetched."""
    for plan in plans:
        for line in str(plan).splitlines():
            print(printable(line))
    total = sum(plan.bytes for plan in plans)
    from ._hub_cache import human_bytes

    print(f"dry run: {human_bytes(total)} ({total:,} bytes) to fetch in all; nothing was fetched")
    return 0


def add_intruder_options(parser: argparse.ArgumentParser) -> None:
    """--intruder-k, --intruder-epsilon, --intruder-side of compare, report and track (Shuttleworth et al. 2024)."""
    parser.add_argument("--intruder-k", type=int, default=INTRUDER_DEFAULTS["k"], metavar="K",
                        help="intruder dimensions: the top K singular vectors of each post matrix examined")
    parser.add_argument("--intruder-epsilon", type=float, default=INTRUDER_DEFAULTS["epsilon"], metavar="EPS",
                        help="intruder dimensions: a vector whose largest |cosine| with every base singular "
                             "vector is below EPS is one")
    parser.add_argument("--intruder-side", default=INTRUDER_DEFAULTS["side"], choices=INTRUDER_SIDES,
                        help="intruder dimensions: the singular vectors compared: output (the left singular vectors "
                             "of the stored [out, in] weight, as the paper and peft count) or input")


def _intruder_arguments(args) -> dict:
    return dict(intruder_k=args.intruder_k, intruder_epsilon=args.intruder_epsilon,
                intruder_side=args.intruder_side)


def add_models_and_out(parser: argparse.ArgumentParser, dest: str, metavar: str, help_text: str, *,
                       nargs: str = "+", out_required: bool = True, base_metavar: str = "BASE",
                       base_help: str = ADAPTER_BASE_HELP) -> None:
    """BASE, then one or more model folders (`dest`), and --out DIR: the arguments of compare, report and track
    (lineage: A and one model B, --out optional). With nargs '+', BASE may be left out before a PEFT adapter
    (models_of() sorts them out)."""
    parser.add_argument("base", metavar=base_metavar, help=base_help)
    parser.add_argument(dest, metavar=metavar, nargs="*" if nargs == "+" else nargs, help=help_text)
    parser.add_argument("--out", "-o", required=out_required, metavar="DIR",
                        help="output folder (created)" if out_required else "also write the results to this folder")


def add_ray_option(parser: argparse.ArgumentParser) -> None:
    """--ray [ADDRESS] of compare and track: run the comparisons as tasks of a Ray cluster."""
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run on a Ray cluster (pip install postsvd[ray]): ADDRESS ('auto', 'HOST:6379', "
                             "'ray://HOST:10001'), or none for a running cluster if there is one, else a local one; "
                             "put it after the folders or write --ray=ADDRESS. The folders (and --cache, and "
                             "postsvd's Hub cache for Hub models) must be on storage every node sees; --device auto "
                             "takes a GPU per task where the cluster has GPUs")


def _executor_options(args) -> dict:
    """executor / ray_address for compare and track from --ray; device 'auto' is only for Ray."""
    if args.ray is None:
        return {"executor": "local"}
    from .distributed import import_ray

    try:
        import_ray()
    except ImportError as error:  # one line on stderr, exit code 1, like any bad argument
        raise InvalidArgumentError(f"--ray: {error}") from None
    return {"executor": "ray", "ray_address": args.ray or None}


def _checked_device(args) -> str:
    """The device to check up front: on Ray the tasks pick theirs, so this process checks 'cpu'."""
    return "cpu" if args.ray is not None else args.device


# ---------------------------------------------------------------------- compare

COMPARE_EXAMPLES = """\
examples:
  postsvd compare Qwen2.5-Math-1.5B/ Qwen2.5-Math-1.5B-Instruct/ --out results/
  postsvd compare Qwen/Qwen2.5-0.5B Qwen/Qwen2.5-0.5B-Instruct --out results/ --layers 10   # Hub: one layer fetched
  postsvd compare deepseek-ai/DeepSeek-V3-Base deepseek-ai/DeepSeek-R1 --out r/ --layers 10 --kinds attention --dry-run
  postsvd compare base/ instruct/ reasoning/ --out results/     # one subfolder per post model
  postsvd compare examples/models/instruct_lora --out results/  # a PEFT adapter on the base it names
  postsvd compare base/ post/ --out results/ --layers 0,1,20-27 --kinds q,k,o --dtype float64
  postsvd compare base/ lora_merged/ --out results/ --intruder-k 20 --intruder-epsilon 0.4   # intruder dimensions
  postsvd compare base/ post/ --out results/ --device cuda --no-progress
  postsvd compare base/ instruct/ reasoning/ --out results/ --cache factors/   # base decomposed once
  postsvd construct 11 --base base/ --post instruct/ --out restored/ --cache factors/   # reuses them
  postsvd compare /shared/base /shared/instruct --out results/ --cache /shared/factors --device auto --ray

output (per post model): table.csv, table.json (a row per layer and kind), kinds.csv,
kinds.json (pooled per kind, the paper's Table 3), spectra.npz, summary.txt, run.json,
svsm.png (Fig. 2), scaling_bands.png (Fig. 8), nf.png (Fig. 3b), intruders.png,
matrices_layer<L>_<kind>[_expert<E>].png (Fig. 3a); MoE models also nf_experts.png."""


def add_compare(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare a base model with one or more post-trained models", parents=[shared_options()],
        description="Decompose every attention/MLP projection pair of BASE and each POST (reduced SVD, paper "
                    "orientation W = W_hf^T) and write the paper's measures: singular value scaling (SVSM), "
                    "top-90 % scaling statistics, NF and the similarity / I_orth matrices, as tables and plots.",
        epilog=COMPARE_EXAMPLES, formatter_class=HelpFormatter)
    add_models_and_out(parser, "posts", "POST", "post-trained model(s) of the same base, named the same ways")
    parser.add_argument("--matrices", default=None, metavar="L:KIND[:EXPERT][,...]",
                        help="pairs to draw sim/difference/I_orth heatmaps for, e.g. 0:q,3:gate:17 (MoE: the expert, "
                             "an index or 'shared'; default: first layer and kind)")
    parser.add_argument("--leading-k", type=int, default=25, metavar="K",
                        help="leading singular vectors shown in the matrix heatmaps")
    parser.add_argument("--experts", default=None, metavar="LIST",
                        help="MoE models: experts to compare, e.g. 0-7 or 0-7,shared (default: all); attention "
                             "and dense MLP matrices are always compared")
    parser.add_argument("--show-experts", default=None, metavar="LIST",
                        help="MoE models: experts drawn and stored (spectra.npz) as their own series besides the "
                             "pooled routed experts and the shared one, e.g. 17 or 3,17,shared")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    add_intruder_options(parser)
    add_ray_option(parser)
    parser.set_defaults(func=run_compare)


def models_of(base: str, posts: Sequence[str], metavar: str = "POST", alternative: str = ""
              ) -> Tuple[Optional[str], List[str]]:
    """(base, posts) of compare, report and track as written: one model alone is a PEFT adapter naming its base
    (a folder or a Hub repo; resolved here to tell). `alternative`: what else the command takes instead."""
    if posts:
        return base, list(posts)
    from .adapters import CONFIG, is_adapter
    from .hub import resolve

    if is_adapter(resolve(base, metavar).folder):
        return None, [base]
    raise InvalidArgumentError(f"{metavar}: expected BASE and at least one {metavar}{alternative}; a single model "
                               f"must be a PEFT adapter ({CONFIG}) whose base_model_name_or_path names its base, and "
                               f"'{printable(base)}' is none")


def _output_dirs(out: str, posts: Sequence[str]) -> List[str]:
    """One subfolder per post model: a folder's last component; a Hub model's name and revision
    (org/name@refs/pr/1 -> name@refs-pr-1)."""
    if len(posts) == 1:
        return [out]
    from .hub import is_hub_name

    names = [p.removeprefix("hf://").split("/", 1)[1].replace("/", "-")
             if isinstance(p, str) and not os.path.lexists(p) and is_hub_name(p) else short_name(p) for p in posts]
    return [os.path.join(out, name) for name in distinct(names)]


def run_compare(args) -> int:
    from .compare import check_compare_arguments, compare, fetch_plans, resolve_models

    matrices_for = parse_matrix_pairs(args.matrices)
    shown = _shown_experts(args.show_experts)
    base, posts = models_of(args.base, args.posts)
    out_dirs = _output_dirs(args.out, posts)
    base, posts = resolve_models(base, posts)
    if args.dry_run:
        return _print_plans(fetch_plans(base, posts, layers=args.layers, kinds=args.kinds, experts=args.experts,
                                        whole_files=args.whole_files, dtype=args.dtype,
                                        residual_base=args.residual_base))
    options = dict(device=args.device, dtype=args.dtype, layers=args.layers, kinds=args.kinds,
                   num_threads=args.threads, cache=args.cache, experts=args.experts, residual_base=args.residual_base,
                   **_intruder_arguments(args))
    check_compare_arguments(base, posts, matrices_for=matrices_for, leading_k=args.leading_k,
                            outs=out_dirs, shown_experts=shown, **dict(options, device=_checked_device(args)))
    for post, out_dir in zip(posts, out_dirs):
        result = compare(base, post, progress=not args.no_progress, warm_start=args.warm_start,
                         whole_files=args.whole_files, **options, **_executor_options(args))
        written = result.save(out_dir, plots=not args.no_plots, matrices_for=matrices_for, leading_k=args.leading_k,
                              experts=shown)
        print(result.summary())
        print(printable(f"wrote {len(written)} files to {out_dir}: {', '.join(os.path.basename(p) for p in written)}"))
        if len(posts) > 1:
            print()
    return 0


def _shown_experts(text):
    """--show-experts as expert labels (checked against the comparison when it is saved)."""
    if text is None:
        return None
    return sorted((expert_label(e) for e in normalize_experts(text, "--show-experts")),
                  key=lambda e: (isinstance(e, str), str(e)))


# ---------------------------------------------------------------------- construct

CONSTRUCT_EXAMPLES = """\
constructions (paper orientation W = W_hf^T = U S V^T; Q1 = U_base^T U_post, Q2 = V_base^T V_post):
   9  U_post (alpha' S_base) V_post^T     replace singular values, scaled (Table 4 alpha' by default)
  10  U_post S_post V_base^T              ablate the output-side rotation
  11  U_post S_post (V_base Q1)^T         restore it from the input side
  12  U_post S_post (V_ref Q')^T          restore it from another post model (--ref), Q' = U_ref^T U_post
  14  U_post S_base V_post^T              replace singular values (9 with alpha' = 1)
  15  U_base S_post V_post^T              ablate the input-side rotation
  16  (U_base Q2) S_post V_post^T         restore it from the output side

examples:
  postsvd construct 9 --base Qwen2.5-Math-1.5B --post Qwen2.5-Math-1.5B-Instruct --out replaced/
  postsvd construct 9 --base B --post P --alpha q=0.9,k=0.9,v=0.9,o=1.4 --group attention --out replaced/
  postsvd construct 10 --base B --post P --group attention --out ablation_sa_out/
  postsvd construct 11 --base B --post P --group attention --out restoration_sa_out/ --cache factors/
  postsvd construct 12 --base B --post reasoning/ --ref instruct/ --out restored_from_instruct/

output: a model folder that loads like POST (transformers, vLLM) with postsvd_construction.json
beside the weights (construction, alpha', layers, kinds, source folders and their sha256, the
per-matrix table); --table FILE also writes that table as CSV."""


def add_construct(subparsers) -> None:
    parser = subparsers.add_parser(
        "construct", help="build one of the paper's constructions 9-16 as a new checkpoint",
        parents=[shared_options(with_group=True)],
        description="Build construction NUMBER of POST relative to BASE (Sections 5.1, 5.2, Appendix C, D) as a "
                    "new model folder that loads like POST; alpha' per kind is printed and recorded.",
        epilog=CONSTRUCT_EXAMPLES, formatter_class=HelpFormatter)
    parser.add_argument("number", metavar="NUMBER", type=int, help="construction: 9, 10, 11, 12, 14, 15 or 16")
    parser.add_argument("--base", required=True, metavar="B", help=f"the base model: {MODEL_HELP}")
    parser.add_argument("--post", required=True, metavar="P",
                        help="the post-trained model (the one modified), named the same ways, or a PEFT adapter "
                             "applied to B; of a Hub model every tensor is fetched (the new folder holds them all)")
    parser.add_argument("--ref", default=None, metavar="R", help="construction 12: another post model of the base")
    parser.add_argument("--alpha", default=None, metavar="A",
                        help="construction 9: alpha' for all kinds (0.9) or per kind (q=0.9,o=1.4); "
                             "default: Table 4 rule (pooled mean scaling rounded to one decimal)")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output model folder")
    parser.add_argument("--force", action="store_true", help="replace DIR if it exists (only once the new one is "
                                                               "complete)")
    parser.add_argument("--table", default=None, metavar="FILE", help="also write the per-matrix table as CSV")
    parser.add_argument("--no-rotations", action="store_true", help="skip the Eq. 13 summary")
    parser.set_defaults(func=run_construct)


def run_construct(args) -> int:
    from .constructions import construct, parse_alpha_text

    alpha = parse_alpha_text(args.alpha) if args.alpha is not None else None
    table = normalize_output_file(args.table, "--table") if args.table is not None else None
    if args.dry_run:
        from .constructions import fetch_plans

        return _print_plans(fetch_plans(args.number, args.base, args.post, ref=args.ref, layers=args.layers,
                                        kinds=args.kinds, group=args.group, whole_files=args.whole_files,
                                        residual_base=args.residual_base))
    result = construct(args.number, args.base, args.post, args.out, ref=args.ref, alpha=alpha, layers=args.layers,
                       kinds=args.kinds, group=args.group, device=args.device, dtype=args.dtype, force=args.force,
                       progress=not args.no_progress, cache=args.cache, rotations=not args.no_rotations,
                       num_threads=args.threads, warm_start=args.warm_start, whole_files=args.whole_files,
                       residual_base=args.residual_base)
    if result.alpha:
        print("alpha' per kind (" + result.alpha_source + "): " +
              ", ".join(f"{k}={v:g}" for k, v in result.alpha.items()))
    if table is not None:
        with atomic_file(table) as temp:
            result.table.to_csv(temp, index=False)
    print(result.summary())
    return 0


# ---------------------------------------------------------------------- report

REPORT_EXAMPLES = """\
examples:
  postsvd report examples/models/base examples/models/instruct --out report/
  postsvd report base/ instruct/ reasoning/ base_alt/ --out report/ --title "What post-training did"
  postsvd report base/ post/ --out report/ --layers 0-3 --kinds attention --matrices 2:q --dtype float64

output: DIR/report.html, one self-contained page (CSS inline, no network; interactive figures with hover
values and a click that opens a matrix's sim/I_orth view where plotly is installed, PNG otherwise):
an overview, per post model a plain-language summary, the per-kind table (Table 3), the figures
(SVSM heatmaps Fig. 2, scaling bands Fig. 8, NF per layer Fig. 3b, intruder dimensions against epsilon,
sim/I_orth matrices of one pair Fig. 3a), the per-layer table; with several post models their NF side by side (Fig. 9); the run's
metadata (version, backend, date, folders)."""


def add_report(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="compare BASE with each POST and write one self-contained HTML page",
        parents=[shared_options()],
        description="Compare BASE with each POST (as `postsvd compare` does) and write DIR/report.html: tables, "
                    "figures and a plain-language summary per post model, readable offline in any browser.",
        epilog=REPORT_EXAMPLES, formatter_class=HelpFormatter)
    add_models_and_out(parser, "posts", "POST", "post-trained model(s) of the same base, named the same ways")
    parser.add_argument("--title", default=None, help="page title (default: 'postsvd report: BASE')")
    parser.add_argument("--matrices", default=None, metavar="L:KIND[:EXPERT][,...]",
                        help="the pairs whose similarity matrices are drawn (and held in the page for a click), e.g. "
                             "2:q or 2:q,3:gate:17 (default: middle layer, first kind)")
    parser.add_argument("--leading-k", type=int, default=25, metavar="K",
                        help="leading singular vectors shown in the matrix heatmaps")
    add_intruder_options(parser)
    add_static_option(parser)
    parser.set_defaults(func=run_report)


def add_static_option(parser) -> None:
    """--static: the page's figures as PNG only (no plotly.js; without plotly installed they are anyway)."""
    parser.add_argument("--static", action="store_true",
                        help="PNG figures only: no interactive figures and no embedded plotly.js (a smaller page; "
                             "the default draws interactive figures where plotly, postsvd[interactive], is installed)")


def _interactive_argument(args) -> Optional[bool]:
    return False if args.static else None


def run_report(args) -> int:
    from .reports import report

    pairs = parse_matrix_pairs(args.matrices)
    base, posts = models_of(args.base, args.posts)
    if args.dry_run:
        from .compare import fetch_plans

        return _print_plans(fetch_plans(base, posts, layers=args.layers, kinds=args.kinds,
                                        whole_files=args.whole_files, dtype=args.dtype,
                                        residual_base=args.residual_base))
    path = report(base, posts, args.out, device=args.device, dtype=args.dtype, layers=args.layers,
                  kinds=args.kinds, title=args.title, matrices=pairs, leading_k=args.leading_k,
                  progress=not args.no_progress, num_threads=args.threads, cache=args.cache,
                  warm_start=args.warm_start, whole_files=args.whole_files, interactive=_interactive_argument(args),
                  residual_base=args.residual_base, **_intruder_arguments(args))
    print(printable(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB); open it in a browser: "
                    f"file://{os.path.abspath(path)}"))
    return 0


# ---------------------------------------------------------------------- track

TRACK_EXAMPLES = """\
examples:
  postsvd track base/ run/checkpoint-500 run/checkpoint-1000 run/checkpoint-1500 --out track/
  postsvd track base/ run/checkpoint-* --out track/ --cache factors/ --kinds attention
  postsvd track base/ sft/ rl/ --steps 1000,2000 --out track/
  postsvd track Qwen/Qwen2.5-0.5B org/run --revisions step-500,step-1000 --out track/   # a run's Hub revisions
  postsvd track org/run@step-0 --revisions step-500,step-1000 --out track/             # base: the run's first
  postsvd track /shared/base /shared/run/checkpoint-* --out track/ --cache /shared/factors --device auto --ray

output: DIR/track.html (one self-contained page), trajectory.csv / .json (per step and kind: scaling
mean and std, NF mean and max), table.csv (every pair at every step), nf_trajectory.png,
scaling_trajectory.png, nf_heatmap.png (per-layer NF over the steps), run.json, and step-<N>/ with
each checkpoint's tables (as `postsvd compare` writes them, without plots)."""


def add_track(subparsers) -> None:
    parser = subparsers.add_parser(
        "track", help="compare a base with the checkpoints of a training run and plot the trajectory",
        parents=[shared_options()],
        description="Compare BASE with each CKPT (steps of an SFT or RL run: folder names like checkpoint-1200, "
                    "Hub revisions like org/run@step-1200 or --revisions, or --steps), decomposing the base once, "
                    "and show how NF and the singular value scaling move with the step.",
        epilog=TRACK_EXAMPLES, formatter_class=HelpFormatter)
    add_models_and_out(parser, "checkpoints", "CKPT", "the run's checkpoints, named like BASE; with --revisions: "
                       "the run's Hub repo (default: BASE's repo)", nargs="*")
    parser.add_argument("--revisions", default=None, metavar="LIST",
                        help="a run kept as revisions of one Hub repo, e.g. step-500,step-1000 (checkpoints: "
                             "REPO@step-500, ...; steps from the revision names)")
    parser.add_argument("--steps", default=None, metavar="LIST",
                        help="the step of each checkpoint, e.g. 500,1000,1500 (default: from the folder or "
                             "revision names)")
    parser.add_argument("--title", default=None, help="page title (default: 'postsvd track: BASE')")
    add_intruder_options(parser)
    add_ray_option(parser)
    add_static_option(parser)
    parser.set_defaults(func=run_track)


def _parse_steps(text: Optional[str]) -> Optional[List[int]]:
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise InvalidArgumentError(f"--steps: expected non-negative integers like 500,1000, got {text!r}")
    return [int(part) for part in parts]


def run_track(args) -> int:
    from .tracking import TRACK_PAGE, checkpoint_list, track

    revisions = None
    base, checkpoints = args.base, args.checkpoints
    if args.revisions is not None:
        revisions = [part.strip() for part in args.revisions.split(",")]
    else:
        base, checkpoints = models_of(args.base, args.checkpoints, "CKPT", alternative=" (or --revisions)")
    if args.dry_run:
        from .compare import fetch_plans

        return _print_plans(fetch_plans(base, checkpoint_list(base, checkpoints, revisions), layers=args.layers,
                                        kinds=args.kinds, whole_files=args.whole_files, dtype=args.dtype,
                                        residual_base=args.residual_base))
    trajectory = track(base, checkpoints, revisions=revisions, steps=_parse_steps(args.steps),
                       out=args.out, device=args.device, dtype=args.dtype, layers=args.layers, kinds=args.kinds,
                       progress=not args.no_progress, num_threads=args.threads, cache=args.cache, title=args.title,
                       warm_start=args.warm_start, whole_files=args.whole_files,
                       interactive=_interactive_argument(args), residual_base=args.residual_base,
                       **_intruder_arguments(args), **_executor_options(args))
    kinds = trajectory.kind_table()
    print(kinds.pivot(index="step", columns="kind", values="nf_mean")[trajectory.kinds]
          .to_string(float_format=lambda v: f"{v:.4f}", header=["NF mean " + k for k in trajectory.kinds]))
    path = os.path.join(args.out, TRACK_PAGE)
    print(printable(f"wrote {args.out}: {len(trajectory.steps)} steps; open file://{os.path.abspath(path)}"))
    return 0


# ---------------------------------------------------------------------- lineage

LINEAGE_EXAMPLES = """\
examples:
  postsvd lineage examples/models/base examples/models/instruct
  postsvd lineage Llama-3.1-8B/ suspect-release/ --out lineage/ --level 0.001
  postsvd lineage base/ other/ --layers 0-7 --no-paper-nf
  postsvd lineage meta-llama/Llama-3.1-8B org/suspect --layers 0-3     # Hub: only what the test reads

verdict: derived (p < level), independent (the test could have reached the level and did not),
inconclusive (it could not: too few units; or the pair is out of scope: tokens at other ids,
another depth, width or residual-stream layout). Exit code 0 whatever the verdict.

output (--out DIR): lineage.json (verdict, p-value, alignments, tables), lineage.csv (a row per
layer and block), lineage.html (one self-contained page). Method and limits: docs/lineage.md."""


def add_lineage(subparsers) -> None:
    parser = subparsers.add_parser(
        "lineage", help="test whether model B was trained from model A (a calibrated verdict)",
        parents=[shared_options()],
        description="Test whether B derives from A (fine-tuned, post-trained, or disguised by function-preserving "
                    "changes: permuted units or heads, a rotated residual stream, rescaled heads or matrices) "
                    "against the null of independently trained models: MLP units matched on gate and on up rows "
                    "agree beyond chance only in a derived pair; p-values per layer, Fisher's method over layers. "
                    "--device, --dtype, --kinds and --cache apply to the paper's NF table.",
        epilog=LINEAGE_EXAMPLES, formatter_class=HelpFormatter)
    add_models_and_out(parser, "model", "B", "the model that may derive from A (a PEFT adapter: applied to A)",
                       nargs=None, out_required=False,
                       base_metavar="A", base_help=f"the possible ancestor: {MODEL_HELP}")
    parser.add_argument("--level", type=float, default=0.01, help="significance level of the verdict")
    parser.add_argument("--no-paper-nf", action="store_true",
                        help="skip the paper's NF table (App. F's fingerprint, not robust to disguises)")
    add_static_option(parser)
    parser.set_defaults(func=run_lineage)


def run_lineage(args) -> int:
    from .lineage import lineage

    if args.dry_run:
        from .lineage import fetch_plans

        return _print_plans(fetch_plans(args.base, args.model, layers=args.layers, whole_files=args.whole_files,
                                        residual_base=args.residual_base))
    if args.out is not None:
        normalize_output_folder(args.out, "--out")  # a bad --out fails before anything is computed
    result = lineage(args.base, args.model, level=args.level, layers=args.layers, paper_nf=not args.no_paper_nf,
                     device=args.device, dtype=args.dtype, kinds=args.kinds, num_threads=args.threads,
                     cache=args.cache, progress=not args.no_progress, whole_files=args.whole_files,
                     residual_base=args.residual_base)
    for line in result.summary().splitlines():  # names come from the files: escaped, one line each
        print(printable(line))
    if args.out is not None:
        written = result.save(args.out, interactive=_interactive_argument(args))
        print(printable(f"wrote {args.out}: {', '.join(os.path.basename(p) for p in written)}"))
    return 0


# ---------------------------------------------------------------------- info

INFO_EXAMPLES = """\
examples:
  postsvd info Qwen2.5-Math-1.5B/
  postsvd info Qwen/Qwen2.5-0.5B@main      # a Hub model: config, index and shard headers only
  postsvd info base/ --json
  postsvd info examples/models/instruct_lora   # a PEFT adapter, applied to the base its config names"""


def add_info(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="describe and check a model (architecture, layers, files, dtypes, projection shapes)",
        description="Open and validate a Hugging Face model folder and print its architecture, layer count, "
                    "files, stored dtypes and the shape of every projection kind (paper orientation [in, out]), "
                    "then every problem for which compare would refuse it (the same checks, without decomposing: "
                    "tensors and their shapes, quantization scales, NaN/Inf weights). Exit code 1 when there is one.",
        epilog=INFO_EXAMPLES, formatter_class=HelpFormatter)
    parser.add_argument("folder", metavar="MODEL", help=f"{MODEL_HELP}; or a PEFT adapter (adapter_config.json)")
    parser.add_argument("--base", default=None, metavar="B",
                        help="with an adapter MODEL: the base it applies to (default: its base_model_name_or_path)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--headers-only", action="store_true",
                        help="check names, shapes, dtypes and scales only, not the weights' values (reading every "
                             "projection takes as long as reading the model once)")
    parser.set_defaults(func=run_info)


#: Problems `postsvd info` prints as text (--json lists them all).
INFO_PROBLEMS_SHOWN = 20


def run_info(args) -> int:
    """Exit code 0 when the folder compares, 1 when info found a problem (each listed)."""
    from .checkpoint import describe

    info = describe(args.folder, values=not args.headers_only, base=args.base)
    problems = info["problems"]
    if args.json:
        print(json.dumps(info, indent=1))  # ensure_ascii: control characters come out as \uXXXX
        return 1 if problems else 0
    files = sorted(info["files"])
    shown = ", ".join(files if len(files) <= 4 else files[:3] + ["...", files[-1]])
    model = info["model"]
    hub_lines = [] if "repo_id" not in model else [
        f"model:        {model['name']} (repo {model['repo_id']}, revision {model['revision']}, commit "
        f"{model['commit']})"]
    lines = [*hub_lines,
             f"folder:       {info['folder']}",
             f"model_type:   {info['model_type']}",
             f"layers:       {info['num_layers']}",
             *(f"warning:      {warning}" for warning in info.get("warnings", [])),
             *(f"problem:      {problem}" for problem in problems[:INFO_PROBLEMS_SHOWN]),
             *([f"problem:      ... and {len(problems) - INFO_PROBLEMS_SHOWN} more (--json lists them all)"]
               if len(problems) > INFO_PROBLEMS_SHOWN else []),
             f"files:        {len(files)} ({'sharded, ' if info['sharded'] else ''}{shown})",
             f"tensors:      {info['num_tensors']} ({info['parameters']:,} parameters)",
             f"dtypes:       {', '.join(f'{k} x{v}' for k, v in sorted(info['dtypes'].items()))}",
             "projections (paper orientation [in, out]):"]
    for kind, entry in info["kinds"].items():
        lines.append(f"  {kind:<5} [{entry['in_features']}, {entry['out_features']}] x{entry['count']}   "
                     f"e.g. {entry['tensor']}")
    adapter = info["adapter"]
    if adapter:
        base = info["base_model"]["name"] if info["base_model"] else adapter["base_folder"]
        lines.append(f"adapter:      PEFT LoRA r {adapter['r']}, alpha {adapter['lora_alpha']:g} on base {base}: "
                     f"{adapter['adapted']} projections adapted, {adapter['replaced']} replaced, "
                     f"{len(adapter['skipped'])} tensors not projections")
    not_fetched = (f"; {info['not_fetched']} projections not fetched (a Hub model): checked from the headers, "
                   f"their scales and values when a command fetches them" if info["not_fetched"] else "")
    lines.append(f"checks:       {len(problems)} problem{'s' if len(problems) != 1 else ''} "
                 f"({'headers only' if args.headers_only else 'headers and values'}{not_fetched}); "
                 + ("analysis commands refuse this folder" if problems else "the folder compares"))
    for line in lines:  # names come from the files: escaped, one line each
        print(printable(line))
    return 1 if problems else 0


# ---------------------------------------------------------------------- cache

CACHE_EXAMPLES = """\
examples:
  postsvd cache list                 # postsvd's partial copies of Hub repos, by repo and commit
  postsvd cache clear Qwen/Qwen2.5-0.5B
  postsvd cache clear                # everything (the Hugging Face cache is left alone)"""


def add_cache(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache", help="list or clear postsvd's cache of tensors fetched from the Hub",
        description="postsvd keeps the byte ranges it fetched from Hub repos in its own cache ($POSTSVD_HUB_CACHE, "
                    "else HF_HOME/postsvd), one model folder per repo and commit. Files complete in the Hugging "
                    "Face cache are only linked from there; `clear` never touches the Hugging Face cache.",
        epilog=CACHE_EXAMPLES, formatter_class=HelpFormatter)
    actions = parser.add_subparsers(dest="cache_action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="list the cached repos and commits")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    clearing = actions.add_parser("clear", help="delete the cached copies of REPO, or all")
    clearing.add_argument("repo", nargs="?", default=None, metavar="REPO", help="a repo id, org/name")
    parser.set_defaults(func=run_cache)


def run_cache(args) -> int:
    from . import hub
    from ._hub_cache import cache_limit, human_bytes

    root = hub.cache_root()
    if args.cache_action == "clear":
        removed = hub.clear_cache(args.repo)
        for entry in removed:
            print(printable(f"removed {entry['repo_id']}@{entry['commit'][:12]} ({human_bytes(entry['disk_bytes'])})"))
        if not removed:
            print(printable(f"nothing cached{' for ' + args.repo if args.repo else ''} in {root}"))
        return 0
    entries = hub.cache_entries()
    limit = cache_limit()
    if args.json:
        print(json.dumps({"root": root, "limit_bytes": limit, "entries": entries}, indent=1))
        return 0
    used = sum(e["disk_bytes"] for e in entries)
    print(printable(f"{root}: {len(entries)} cached commit(s), {human_bytes(used)} on disk"
                    + (f" (limit {human_bytes(limit)})" if limit else "")))
    for e in entries:
        revisions = ", ".join(e["revisions"]) or "-"
        print(printable(f"  {e['repo_id']}@{e['commit'][:12]}  revisions: {revisions}  files: "
                        f"{e['partial_files']} partial, {e['complete_files']} linked complete  "
                        f"{human_bytes(e['bytes_present'])} fetched, {human_bytes(e['disk_bytes'])} on disk"))
    return 0


# ---------------------------------------------------------------------- make-example

EXAMPLE_EXAMPLES = """\
examples:
  postsvd make-example example/ && postsvd compare example/base example/post --out results/
  postsvd make-example example/ --unrelated        # two unrelated models: NF far from 0
  postsvd make-example example/ --alpha 0.9 --dtype float32 --sharded"""


def add_make_example(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-example", help="write a small synthetic base/post pair with a known answer",
        description="Write DIR/base and DIR/post, two small llama-style Hugging Face folders. Each projection of "
                    "post is (U Q)(alpha S)(V Q)^T of base's W = U S V^T with a random rotation Q, so `postsvd "
                    "compare` should report scaling = alpha and NF ~ 0 (bf16 storage adds a little noise).",
        epilog=EXAMPLE_EXAMPLES, formatter_class=HelpFormatter)
    parser.add_argument("dir", metavar="DIR", help="output folder; base/ and post/ are written inside")
    parser.add_argument("--model-type", default="llama", choices=["llama", "qwen2", "mistral"])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.9, help="singular value scaling of post")
    parser.add_argument("--rotation-angle", type=float, default=0.3, help="largest angle of each rotation Q (rad)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="storage dtype")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sharded", action="store_true", help="write 3 shards with an index")
    parser.add_argument("--unrelated", action="store_true", help="make post an unrelated random model")
    parser.set_defaults(func=run_make_example)


def run_make_example(args) -> int:
    from .synthetic import make_pair

    pair = make_pair(os.path.join(args.dir, "base"), os.path.join(args.dir, "post"), model_type=args.model_type,
                     layers=args.layers, hidden=args.hidden, intermediate=args.intermediate, heads=args.heads,
                     kv_heads=args.kv_heads, alpha=args.alpha, rotation_angle=args.rotation_angle, dtype=args.dtype,
                     seed=args.seed, sharded=args.sharded, related=not args.unrelated)
    relation = (f"post = (U Q)({args.alpha} S)(V Q)^T of base" if pair.related else "post unrelated to base")
    print(f"wrote {pair.base} and {pair.post} ({pair.model_type}, {pair.layers} layers, {pair.dtype}; {relation})")
    print(f"next: postsvd compare {pair.base} {pair.post} --out {os.path.join(args.dir, 'results')}")
    return 0


# ---------------------------------------------------------------------- build-info

def add_build_info(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-info", help="print the build (compiler, BLAS, CUDA) and the visible GPUs",
        description="Print postsvd's version, build details and CUDA availability.",
        epilog="examples:\n  postsvd build-info", formatter_class=HelpFormatter)
    parser.set_defaults(func=run_build_info)


def run_build_info(args) -> int:
    from . import _core
    from ._version import __version__

    print(f"postsvd {__version__}")
    print(_core.build_info())
    print(f"built with CUDA: {bool(_core.built_with_cuda())}, has_cuda: {bool(_core.has_cuda())}, "
          f"cuda devices: {int(_core.cuda_device_count())}")
    return 0


# ---------------------------------------------------------------------- main

#: The subcommands, in the order of the help: (name, function that adds it to the subparsers).
SUBCOMMANDS: List[Tuple[str, Callable]] = [
    ("compare", add_compare),
    ("construct", add_construct),
    ("report", add_report),
    ("track", add_track),
    ("lineage", add_lineage),
    ("info", add_info),
    ("cache", add_cache),
    ("make-example", add_make_example),
    ("build-info", add_build_info),
]

MAIN_EXAMPLES = """\
examples:
  postsvd make-example example/                                   # a small synthetic pair
  postsvd compare example/base example/post --out results/        # tables, plots, summary
  postsvd info example/base
  postsvd compare --help

Python: import postsvd; r = postsvd.compare(base, post); print(r.summary())"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every subcommand included."""
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="postsvd: what post-training did to an LLM's weights. Compares a base and a post-trained "
                    "Hugging Face checkpoint through the SVD of every attention/MLP projection (arXiv 2509.17866).",
        epilog=MAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subparsers.required = True
    for _, add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit code (0 ok, 1 postsvd error, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    format_warning, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except (PostsvdError, OSError) as error:  # messages name files and tensors: escaped
        print(f"{PROG}: error: {printable(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = format_warning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one escaped line, `postsvd: warning: ...` (its text may name files and tensors)."""
    return f"{PROG}: warning: {printable(message)}\n"


#: Exit code when stdout was closed early: 128 + SIGPIPE, what a shell reports for a process SIGPIPE ended.
CLOSED_PIPE_EXIT = 141


def _closed_pipe() -> int:
    """stdout's reader went away (`postsvd info X | head -1`): stop quietly, as a SIGPIPE would."""
    try:  # point stdout at /dev/null so that Python's final flush does not report the pipe again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (captured, replaced)
        pass
    return CLOSED_PIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
