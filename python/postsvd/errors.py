"""The exceptions postsvd raises.

Every error derives from :class:`PostsvdError`, and each also derives from the
builtin a caller would naturally catch:

* :class:`InvalidArgumentError` (``ValueError``): an argument cannot be used
  (unknown kind, layer out of range, bad dtype, NaN weight, bad shape, ...).
* :class:`BadCheckpointError` (``ValueError``): a checkpoint folder or
  safetensors file is malformed, incomplete, or does not match the other model.
* :class:`BackendError` (``RuntimeError``): LAPACK, cuSOLVER, cuBLAS or the CUDA
  runtime reported a failure.
* :class:`NotBuiltWithCudaError` (``RuntimeError``): CUDA was requested from a
  build without it.
* :class:`HubError` (``OSError``): a model named by Hub repo id could not be
  resolved or fetched (repo or revision not found, no access, offline with
  nothing cached, the server failing, not enough disk); one line, no token.
"""
from ._core import (
    BackendError,
    BadCheckpointError,
    InvalidArgumentError,
    NotBuiltWithCudaError,
    PostsvdError,
)



class HubError(PostsvdError, OSError):
    """A Hub repo id could not be resolved or its tensors fetched (postsvd.hub)."""


__all__ = [
    "PostsvdError",
    "InvalidArgumentError",
    "BadCheckpointError",
    "BackendError",
    "NotBuiltWithCudaError",
    "HubError",
]
