"""The one page template of postsvd's HTML pages (report, track, lineage) and of the results' rich
display in Jupyter: escaping, the style sheets, embedded figures, tables and the run's metadata.
Pages are self-contained: CSS inline, figures as base64 PNG (or, with plotly, drawn by the inline
plotly.js that :mod:`postsvd.interactive` embeds once per page), no request to anywhere."""
from __future__ import annotations

import base64
import datetime
import html
import io
import platform
from typing import Any, Iterable, Optional, Sequence, Tuple

from . import _core
from ._version import __version__

#: Resolution of the embedded PNG figures.
FIGURE_DPI = 90


def escape(text: Any) -> str:
    """`text` as HTML text or attribute value."""
    return html.escape(str(text), quote=True)


def figure(fig, figure_id: str, alt: str, dpi: int = FIGURE_DPI) -> str:
    """A matplotlib Figure as an embedded PNG (base64 data URI) in a <figure> with a caption."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<figure id="fig-{escape(figure_id)}"><img class="plot" alt="{escape(alt)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{escape(alt)}</figcaption></figure>')


def data_table(frame, classes: str = "data layers") -> str:
    """A pandas DataFrame as a page table (no index, 4 significant digits)."""
    return frame.to_html(index=False, border=0, classes=classes, float_format=lambda x: f"{x:.4g}")


def section(section_id: str, heading: str, body: str, classes: str = "") -> str:
    """A <section> with its heading."""
    attribute = f' class="{escape(classes)}"' if classes else ""
    return f'<section id="{escape(section_id)}"{attribute}><h2>{heading}</h2>{body}</section>'


def run_metadata(rows: Iterable[Tuple[str, Any]]) -> str:
    """The "Run" section: the given rows after the version, build, date and host, as a table."""
    common = [("postsvd version", __version__), ("build", _core.build_info()),
              ("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
              ("host", f"{platform.node()} ({platform.system()} {platform.machine()}, "
                       f"Python {platform.python_version()})")]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in [*common, *rows])
    return section("metadata", "Run", f'<table class="meta"><tbody>{body}</tbody></table>')


def model_row(role: str, model) -> Tuple[str, str]:
    """The metadata row naming a model (a :class:`postsvd.hub.ResolvedModel`): a local folder by its absolute
    path; a Hub model as written, with its repo id, the revision asked for and the commit read."""
    if model.is_local:
        return f"{role} folder", model.description
    return (f"{role} model", f"{model.name} (repo {model.repo_id}, revision {model.revision or 'main'}, "
                             f"commit {model.commit})")


def page(title: str, sections: Sequence[str], *, subtitle: str = "",
         nav: Sequence[Tuple[str, str]] = (), head: Optional[str] = None, tail: str = "") -> str:
    """A whole page: `title` (escaped here), `subtitle` and `sections` (HTML), a navigation bar of
    (anchor, label) links, the one style sheet; `head`: extra HTML for the <head>; `tail`: HTML at the
    end of the <body> (scripts that run after the content has shown)."""
    links = "".join(f'<a href="#{escape(anchor)}">{escape(label)}</a>' for anchor, label in nav)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="generator" content="postsvd {escape(__version__)}">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n{head or ''}</head>\n<body>\n"
            f"<header><h1>{escape(title)}</h1>"
            + (f'<p class="subtitle">{subtitle}</p>' if subtitle else "")
            + (f"<nav>{links}</nav>" if links else "")
            + "</header>\n<main>\n" + "\n".join(sections) + "\n</main>\n" + tail + "</body>\n</html>\n")


#: The pages' one style sheet.
CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #d8dde6; --accent: #2d5fa8; --soft: #f4f6fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); }
header { padding: 20px 32px 10px; border-bottom: 1px solid var(--line); background: var(--soft); }
h1 { margin: 0 0 4px; font-size: 24px; }
.subtitle { margin: 0 0 8px; color: var(--muted); }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; font-size: 14px; }
main { padding: 8px 32px 40px; max-width: 1400px; }
section { margin-top: 26px; }
section.post { border-top: 3px solid var(--accent); padding-top: 6px; }
h2 { font-size: 20px; margin: 10px 0; }
h3 { font-size: 16px; margin: 20px 0 6px; }
p { max-width: 980px; }
code { background: var(--soft); padding: 0 3px; border-radius: 3px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
table.data th, table.data td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right; }
table.data th { background: var(--soft); }
table.data td:first-child, table.data th:first-child { text-align: left; }
table.data td:last-child { text-align: left; }
table.layers td:last-child { text-align: right; }
table.meta th { text-align: left; padding: 3px 14px 3px 0; color: var(--muted); font-weight: 600; vertical-align: top; }
table.meta td { padding: 3px 0; font-family: ui-monospace, monospace; font-size: 13px; white-space: pre-wrap; }
.verdict { background: #eef4ec; border-left: 4px solid #4a8a3c; padding: 6px 14px; max-width: 1100px; }
.verdict ul { margin: 4px 0; }
.note { color: #8a5a00; }
figure { margin: 10px 0 18px; }
img.plot { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; }
pre.summary { background: var(--soft); padding: 10px; overflow-x: auto; font-size: 12.5px; white-space: pre-wrap; }
details summary { cursor: pointer; color: var(--accent); }
div.iplot { border: 1px solid var(--line); min-height: 120px; }
.matrix-view { border: 1px solid var(--line); padding: 6px 10px; background: var(--soft); }
.matrix-view .view-caption { margin: 4px 0; font-size: 14px; }
.matrix-view code { background: #fff; }
"""


def display(heading: str, facts: str, body: Sequence[str], hint: str = "") -> str:
    """A result's rich display in Jupyter (``_repr_html_``): a bold `heading` and `facts` (escaped here),
    the `body` parts and a closing `hint` (HTML), inside one block with its own scoped styles."""
    return (f'<div class="postsvd-display"><style>{DISPLAY_CSS}</style><p class="pd-head"><b>{escape(heading)}</b> '
            f"{escape(facts)}</p>" + "".join(body)
            + (f'<p class="pd-hint">{hint}</p>' if hint else "") + "</div>")


def small_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A compact table of the display: `header` and the cells of `rows` (all escaped here)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="pd-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


#: The display's style sheet, every rule under .postsvd-display (a notebook's own styles stay as they are).
DISPLAY_CSS = """
.postsvd-display { font: 13px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1100px; }
.postsvd-display .pd-head { margin: 2px 0 6px; }
.postsvd-display .pd-reading { background: #eef4ec; border-left: 4px solid #4a8a3c; padding: 4px 10px; margin: 4px 0; }
.postsvd-display .pd-reading.pd-warn { background: #fbf3e4; border-left-color: #b07a12; }
.postsvd-display table.pd-table { border-collapse: collapse; margin: 6px 0; font-size: 12.5px; }
.postsvd-display table.pd-table th, .postsvd-display table.pd-table td { border-bottom: 1px solid #d8dde6;
  padding: 2px 8px; text-align: right; }
.postsvd-display table.pd-table th { background: #f4f6fa; }
.postsvd-display table.pd-table td:first-child, .postsvd-display table.pd-table th:first-child,
.postsvd-display table.pd-table td:last-child, .postsvd-display table.pd-table th:last-child { text-align: left; }
.postsvd-display figure { margin: 6px 0; }
.postsvd-display img.plot { max-width: 100%; height: auto; }
.postsvd-display figcaption, .postsvd-display .pd-hint, .postsvd-display .note { color: #5b6475; font-size: 12px; }
.postsvd-display .pd-hint code { background: #f4f6fa; }
"""
