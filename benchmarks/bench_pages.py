"""Size and time to first render of the interactive pages at DeepSeek-V3 size (issue 26, item 3).

A synthetic comparison shaped like DeepSeek-V3 against a post-trained copy is built directly from records
(no checkpoint, no decomposition): 61 layers, the MLA kinds q_a, q_b, kv_a, kv_b_k, kv_b_v and o in every
layer, dense gate/up/down in the first 3 layers and 256 routed experts plus the shared expert of
gate/up/down in the other 58 (45,093 matrix pairs), with the release's k per kind (o 7168, q_a and q_b 1536,
kv_a 576, kv_b 512, experts 2048, dense MLP 7168). Records of one (layer, kind) share their spectra (the
page draws per-matrix scalars: NF, scaling mean and std, intruders, which differ per matrix).

Measured, each in a fresh headless Chromium with networking off (tests/python/browser.py):
the report page (interactive, and --static for comparison) and a track page of 5 steps of it: bytes,
first contentful paint and the time until every interactive figure has drawn (ms from navigation start;
median of --repeat loads), console errors and requests to anything but the page; and in Python the time
to render each page and the Jupyter display (``_repr_html_``).

    PYTHONPATH=python python benchmarks/bench_pages.py [--wait-load 1.5] [--out DIR] [--repeat 3]

``--wait-load`` waits (up to --max-wait seconds) until the 1-minute load average is below the value, as the
figures are only comparable on an idle machine. Prints one JSON object (the figures) on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))  # the Chromium driver of the browser tests

import postsvd  # noqa: E402
from postsvd import _core, hub, reports  # noqa: E402
from postsvd.comparison import Comparison  # noqa: E402
from postsvd.tracking import Trajectory  # noqa: E402

#: (kind, in_features, out_features) of DeepSeek-V3's attention (MLA) in every layer.
ATTENTION = [("q_a", 7168, 1536), ("q_b", 1536, 24576), ("kv_a", 7168, 576), ("kv_b_k", 512, 16384),
             ("kv_b_v", 512, 16384), ("o", 16384, 7168)]
DENSE_MLP = [("gate", 7168, 18432), ("up", 7168, 18432), ("down", 18432, 7168)]
EXPERT_MLP = [("gate", 7168, 2048), ("up", 7168, 2048), ("down", 2048, 7168)]
LAYERS, DENSE_LAYERS, EXPERTS = 61, 3, 256
INTRUDER_K = 10


class _Comparator:
    """What :class:`postsvd.Comparison` reads of its comparator, for records made here."""

    def __init__(self, matrices, rng):
        self.architecture = {"model_type": "deepseek_v3", "num_layers": LAYERS, "matrices": matrices}
        self.base = type("Folder", (), {"folder": "/models/DeepSeek-V3-Base"})()
        self.post = type("Folder", (), {"folder": "/models/DeepSeek-V3"})()
        self.device, self.precision, self.backend_name, self.factor_cache = "cpu", "float32", "synthetic", ""
        self.intruder_options = {"k": INTRUDER_K, "epsilon": 0.5, "side": "output"}
        self.cache_counts = {"computed": 0, "loaded": 0}
        self._rng = rng

    def compare(self, indices, full, leading_k):
        """The matrices of a held pair: a near-identity leading block, as a post-trained pair shows."""
        out = []
        for _ in indices:
            k = leading_k or 25
            rotation = np.linalg.qr(np.eye(k) + 0.05 * self._rng.standard_normal((k, k)))[0]
            sim = np.abs(rotation)
            out.append({"sim_u": sim, "sim_v": sim * 0.98, "q1": rotation, "q2": rotation, "iorth": np.eye(k),
                        "nf": 0.003, "k": 2048, "sigma_base": np.ones(k), "sigma_post": np.ones(k),
                        "scaling": np.ones(k)})
        return out


class SyntheticComparison(Comparison):
    """A Comparison of records made here (no checkpoint behind it: no stored formats to read)."""

    def _quantization_note(self):
        return None


def deepseek_comparison(seed: int = 0) -> SyntheticComparison:
    rng = np.random.default_rng(seed)
    records, matrices = [], []
    spectra = {}

    def add(layer, kind, rows, cols, expert):
        k = min(rows, cols)
        key = (layer, kind, k)
        if key not in spectra:  # shared by the records of one (layer, kind): the page reads per-matrix scalars
            sigma = np.sort(rng.gamma(2.0, 1.0, k))[::-1]
            scaling = 0.97 + 0.01 * rng.standard_normal(k)
            spectra[key] = (sigma, sigma * scaling, scaling, 1.0 - 1e-3 * rng.random(k),
                            np.clip(0.9 - 0.1 * rng.random(INTRUDER_K), 0, 1))
        sigma_base, sigma_post, scaling, iorth_diag, cosines = spectra[key]
        index = len(matrices)
        tensor = f"model.layers.{layer}.{kind}" + ("" if expert == -1 else f".experts.{expert}")
        matrices.append({"layer": layer, "kind": kind, "expert": expert, "tensor": tensor})
        records.append({"index": index, "layer": layer, "kind": kind, "expert": expert, "tensor": tensor,
                        "rows": rows, "cols": cols, "k": k, "sigma_base": sigma_base, "sigma_post": sigma_post,
                        "scaling": scaling, "scaling_mean": float(0.97 + 0.002 * rng.standard_normal()),
                        "scaling_std": float(0.01 + 0.001 * rng.random()), "scaling_count": int(0.9 * k),
                        "nf": float(0.002 + 0.001 * rng.random() + (0.02 if expert == 17 else 0.0)),
                        "iorth_diag": iorth_diag, "warm_sweeps": -1,
                        "intruders": int(rng.random() < 0.02), "intruder_cosines": cosines})

    for layer in range(LAYERS):
        for kind, rows, cols in ATTENTION:
            add(layer, kind, rows, cols, -1)
        if layer < DENSE_LAYERS:
            for kind, rows, cols in DENSE_MLP:
                add(layer, kind, rows, cols, -1)
            continue
        for kind, rows, cols in EXPERT_MLP:
            for expert in list(range(EXPERTS)) + [_core.SHARED_EXPERT]:
                add(layer, kind, rows, cols, expert)
    kinds = [k for k in postsvd.KINDS if any(r["kind"] == k for r in records)]
    comparator = _Comparator(matrices, rng)
    models = tuple(hub.ResolvedModel(name=side.folder, folder=side.folder)  # no folder behind them to resolve
                   for side in (comparator.base, comparator.post))
    return SyntheticComparison(comparator, records, list(range(LAYERS)), kinds, 1.0, models=models)


def wait_for_idle(limit: float, max_wait: float) -> float:
    """Waits until the 1-minute load average is below `limit` (at most `max_wait` s); the load then."""
    deadline = time.monotonic() + max_wait
    while True:
        load = os.getloadavg()[0]
        if load < limit or time.monotonic() > deadline:
            return load
        time.sleep(20)


def timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def browser_figures(path: str, repeat: int):
    """Median first contentful paint and time until every figure drew (ms from navigation start), errors,
    requests to anything but the page, over `repeat` loads in fresh browsers."""
    from browser import Chromium

    paints, drawn, errors, external, figures = [], [], [], [], 0
    for _ in range(repeat):
        with Chromium() as browser:
            browser.open(path)
            figures = browser.wait_for_figures(timeout=120)
            drawn.append(browser.evaluate("window.postsvdDrawnAt"))
            paints.append(browser.evaluate("(performance.getEntriesByName('first-contentful-paint')[0] || "
                                           "{startTime: null}).startTime"))
            errors += browser.errors
            external += browser.external_requests()
    return {"figures": figures, "first_contentful_paint_ms": round(statistics.median(paints)),
            "all_figures_drawn_ms": round(statistics.median(drawn)), "loads": repeat,
            "console_errors": errors, "external_requests": external}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="keep the pages here (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=3, help="browser loads per page (the median is kept)")
    parser.add_argument("--wait-load", type=float, default=None, metavar="LOAD",
                        help="wait until the 1-minute load average is below LOAD before measuring")
    parser.add_argument("--max-wait", type=float, default=3600.0, help="seconds to wait for that at most")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="postsvd-bench-pages-")
    os.makedirs(out, exist_ok=True)
    load_before = wait_for_idle(args.wait_load, args.max_wait) if args.wait_load else os.getloadavg()[0]

    comparison, build_s = timed(deepseek_comparison)
    figures = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} ({os.cpu_count()} cores, "
               f"{platform.machine()})", "load_before": round(load_before, 2),
               "matrices": len(comparison.records), "build_records_s": round(build_s, 2)}
    html, seconds = timed(comparison._repr_html_)  # the first display of the process carries plotly.js
    figures["display_first"] = {"bytes": len(html), "seconds": round(seconds, 2)}
    html, seconds = timed(comparison._repr_html_)
    figures["display"] = {"bytes": len(html), "seconds": round(seconds, 2)}
    pages = {}
    for name, interactive in (("report", True), ("report_static", False)):
        text, seconds = timed(lambda: reports.render_html(comparison, interactive=interactive,
                                                          matrices=[(30, "gate", 17), (30, "q_a")]))
        pages[name] = os.path.join(out, f"{name}.html")
        with open(pages[name], "w", encoding="utf-8") as f:
            f.write(text)
        figures[name] = {"bytes": len(text.encode()), "render_seconds": round(seconds, 2)}
    trajectory = Trajectory([100, 200, 300, 400, 500], [comparison] * 5)
    text, seconds = timed(lambda: trajectory.render_html(interactive=True))
    pages["track"] = os.path.join(out, "track.html")
    with open(pages["track"], "w", encoding="utf-8") as f:
        f.write(text)
    figures["track"] = {"bytes": len(text.encode()), "render_seconds": round(seconds, 2)}
    for name in ("report", "track"):
        figures[name].update(browser_figures(pages[name], args.repeat))
    figures["load_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures, indent=1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
