"""postsvd: what post-training did to an LLM's weights.

Reads a base and a post-trained Hugging Face checkpoint, takes the reduced SVD
of every attention/MLP projection pair (in the paper's orientation
``W = W_hf.T``, ``[in, out]``) and computes the measures of "Understanding
Post-Training Structural Changes in Large Language Models" (He and Cao, arXiv
2509.17866): singular value scaling (SVSM), the similarity matrices of the
singular vectors, I_orth and NF. ``postsvd.construct`` builds the paper's
modified models (Constructions 9 to 16) as new checkpoints.

Quick start::

    import postsvd
    result = postsvd.compare("base_model/", "post_model/")   # a Comparison
    print(result.summary())
    result.table                  # pandas DataFrame, a row per (layer, kind)
    result.plot_svsm()            # matplotlib Figure (the paper's Fig. 2)
    U, S, V = postsvd.svd(W)      # one matrix

Without models at hand, ``postsvd.synthetic.make_pair(...)`` (or
``postsvd make-example DIR``) writes a small pair with a known answer.
"""
from . import _preload

_preload.load_dependencies()  # the GPU build: cuBLAS, cuSOLVER, the CUDA runtime from NVIDIA's wheels
try:
    from . import _core
except ImportError as _error:  # a source tree without the compiled core, or a broken build
    raise ImportError(
        f"postsvd's compiled core (postsvd._core) could not be loaded: {_error}.{_preload.cuda_install_hint()} "
        "Install the package with `pip install postsvd` (GPU: `pip install postsvd-cu13`), or from the "
        "repository root `pip install .` (or `bash scripts/setup.sh`); for the GPU variant "
        "`POSTSVD_ENABLE_CUDA=ON pip install --no-build-isolation .`") from _error
from .checkpoint import (
    Checkpoint,
    architecture,
    describe,
    open_checkpoint,
    read_matrix,
    supported_model_types,
)
from . import interactive  # noqa: F401  (plotly figures, postsvd[interactive]; postsvd.interactive.available())
from .compare import compare
from .comparison import Comparison
from .constructions import ConstructionResult, construct
from .errors import (
    BackendError,
    BadCheckpointError,
    InvalidArgumentError,
    NotBuiltWithCudaError,
    PostsvdError,
)
from .linalg import pair_measures, svd
from .lineage import Lineage, lineage
from .readings import random_rotation_nf
from .reports import report, write_report
from .tracking import Trajectory, track
from ._validate import KIND_GROUPS, KINDS
from ._version import __version__



def has_cuda() -> bool:
    """True when ``device='cuda'`` can run: this build has the CUDA backend
    (``POSTSVD_ENABLE_CUDA=ON``) and sees at least one GPU."""
    return bool(_core.has_cuda())


def built_with_cuda() -> bool:
    """True when this build has the CUDA backend, whether or not a GPU is visible here."""
    return bool(_core.built_with_cuda())


def cuda_device_count() -> int:
    """Number of visible CUDA devices; 0 where none or in a CPU build."""
    return int(_core.cuda_device_count())


def build_info() -> str:
    """Compiler, BLAS/LAPACK and CUDA versions of this build, as text."""
    return str(_core.build_info())


__all__ = [
    "compare",
    "Comparison",
    "construct",
    "ConstructionResult",
    "report",
    "write_report",
    "track",
    "Trajectory",
    "lineage",
    "Lineage",
    "svd",
    "pair_measures",
    "open_checkpoint",
    "Checkpoint",
    "architecture",
    "describe",
    "read_matrix",
    "supported_model_types",
    "random_rotation_nf",
    "has_cuda",
    "built_with_cuda",
    "cuda_device_count",
    "build_info",
    "KINDS",
    "KIND_GROUPS",
    "PostsvdError",
    "InvalidArgumentError",
    "BadCheckpointError",
    "BackendError",
    "NotBuiltWithCudaError",
    "__version__",
]
