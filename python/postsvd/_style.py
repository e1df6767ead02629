"""The look shared by the static figures (:mod:`postsvd.plots`) and the interactive ones
(:mod:`postsvd.interactive`): one color per kind, as hex so that matplotlib and plotly read it alike."""
from __future__ import annotations

#: One color per kind, stable across figures (matplotlib's tab10 and a few more).
KIND_COLORS = {
    "q": "#1f77b4", "k": "#ff7f0e", "v": "#2ca02c", "o": "#d62728",
    "gate": "#9467bd", "up": "#8c564b", "down": "#e377c2",
    "q_a": "#17becf", "q_b": "#bcbd22", "kv_a": "#7f7f7f", "kv_b_k": "#ffd700", "kv_b_v": "#008080",
}
