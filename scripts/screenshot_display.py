"""The README's picture of a result's display in Jupyter, made from the bundled models (issue 26).

Compares examples/models/base with examples/models/instruct, puts the Comparison's rich display
(``_repr_html_``, interactive with plotly) on a page the way a notebook shows an output, opens it in headless
Chromium (networking off), hovers one point of the figure so that its values show, and saves a PNG of the
display:

    PYTHONPATH=python python scripts/screenshot_display.py [--out docs/images/display.png]

Needs plotly (postsvd[interactive]) and Chromium (scripts/setup.sh installs both). The Chromium driver is the
one of the browser tests (tests/python/browser.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

import postsvd  # noqa: E402
from browser import Chromium  # noqa: E402

#: A notebook's look around the output: the width of a JupyterLab output area, its font.
PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>
body {{ margin: 0; background: #fff; font-family: system-ui, sans-serif; }}
.cell {{ width: 1060px; padding: 14px 18px; }}
.prompt {{ color: #303f9f; font: 13px ui-monospace, monospace; margin-bottom: 6px; }}
.code {{ background: #f5f5f5; border: 1px solid #e0e0e0; padding: 6px 10px; font: 13px ui-monospace, monospace;
         margin-bottom: 10px; }}
</style></head><body><div class="cell" id="cell"><div class="prompt">[3]:</div>
<div class="code">result = postsvd.compare("models/base", "models/instruct")<br>result</div>{display}</div></body></html>"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "images", "display.png"))
    parser.add_argument("--models", default=os.path.join(ROOT, "examples", "models"))
    args = parser.parse_args()
    if not postsvd.interactive.available():
        sys.exit("needs plotly: pip install 'postsvd[interactive]'")
    result = postsvd.compare(os.path.join(args.models, "base"), os.path.join(args.models, "instruct"),
                             progress=False)
    with tempfile.TemporaryDirectory() as folder:
        page = os.path.join(folder, "display.html")
        with open(page, "w", encoding="utf-8") as f:
            f.write(PAGE.format(display=result._repr_html_()))
        with Chromium(width=1100, height=1400) as browser:
            browser.open(page)
            browser.wait_for_figures()
            if browser.errors or browser.external_requests():
                sys.exit(f"the display did not draw cleanly: {browser.errors} {browser.external_requests()}")
            div = browser.evaluate("document.querySelector('div.iplot').id")
            trace = browser.evaluate(f"document.getElementById('{div}')._fullData.findIndex(function (t) {{ "
                                     "return t.meta && t.meta.kind === 'down' && t.meta.expert === ''; })")
            browser.hover(*browser.position(div, trace, 2, 2))
            browser.wait_for(f"(document.querySelector('#{div} .hoverlayer') || {{}}).textContent")
            box = browser.evaluate("(function () { var b = document.getElementById('cell').getBoundingClientRect(); "
                                   "return [b.left, b.top + window.scrollY, b.width, b.height]; })()")
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            browser.screenshot(args.out, clip={"x": box[0], "y": box[1], "width": box[2], "height": box[3]})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
