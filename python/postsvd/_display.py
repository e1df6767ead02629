"""Interactive or static: the one choice between :mod:`postsvd.interactive` (plotly) and
:mod:`postsvd.plots` (matplotlib) of the results' rich display and of the pages.

``interactive=None`` (every page's and display's default) means plotly where it is installed (the
extra ``postsvd[interactive]``) and the static figures otherwise; True asks for plotly (an
ImportError naming the extra where it is missing); False keeps the static figures.
"""
from __future__ import annotations

import uuid
from typing import Callable, Optional

from . import interactive as _interactive
from ._extras import require
from ._html import figure as _static_figure

#: Resolution of the display's static figure (small: a notebook output, not a paper).
DISPLAY_DPI = 60


def use_interactive(interactive: Optional[bool]) -> bool:
    """Whether a page or display draws with plotly (see the module's docstring)."""
    if interactive is None:
        return _interactive.available()
    if interactive:
        require("plotly", _interactive.FEATURE)
        return True
    return False


def display_figure(interactive_figure: Callable[[], object], static_figure: Callable[[], object],
                   caption: str) -> str:
    """The one figure of a rich display: the interactive one where plotly is installed, else the static
    one as a small PNG."""
    if use_interactive(None):
        return _interactive.notebook_html(interactive_figure(), caption)
    return _static_figure(static_figure(), f"display-{uuid.uuid4().hex[:12]}", caption, dpi=DISPLAY_DPI)
