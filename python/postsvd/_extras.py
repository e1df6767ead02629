"""Optional dependencies: every import of a package that a postsvd extra brings goes through
:func:`require`, so a call that needs a missing one says which extra to install.

The core install (``pip install postsvd``) has numpy, pandas, matplotlib, tqdm, safetensors and scipy
(:func:`postsvd.lineage` matches units with scipy.optimize.linear_sum_assignment);
``postsvd[functional]`` adds torch, transformers, lm-eval and accelerate (the functional
experiments, :mod:`postsvd.functional`); ``postsvd[ray]`` adds Ray (``executor="ray"``); ``postsvd[interactive]`` adds plotly (the
interactive figures of :mod:`postsvd.interactive`, in notebooks and the HTML pages);
``postsvd[notebooks]`` what the example notebooks run with; ``postsvd[all]`` all of them.
"""
from __future__ import annotations

import importlib
from types import ModuleType

#: The extra that brings each optional top-level module (the names in pyproject.toml).
EXTRA_OF_MODULE = {
    "torch": "functional",
    "transformers": "functional",
    "lm_eval": "functional",
    "accelerate": "functional",
    "ray": "ray",
    "plotly": "interactive",
}


def install_hint(extra: str) -> str:
    """The pip line that installs an extra: ``pip install 'postsvd[functional]'``."""
    return f"pip install 'postsvd[{extra}]'"


def require(module: str, feature: str) -> ModuleType:
    """Imports ``module`` (a name in :data:`EXTRA_OF_MODULE`, or a submodule of one) for ``feature``,
    or raises an ImportError naming the feature, the missing package and the extra to install."""
    top = module.split(".", 1)[0]
    if top not in EXTRA_OF_MODULE:
        raise ValueError(f"module: expected one of {sorted(EXTRA_OF_MODULE)} or a submodule, got {module!r}")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = EXTRA_OF_MODULE[top]
        raise ImportError(f"{feature} needs {top}, which is not installed here ({error}); install it with: "
                          f"{install_hint(extra)}") from error
