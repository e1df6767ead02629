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

An error about bad data in one model of several (a NaN weight in the post model, a misshapen scale in
the third checkpoint of a track run) names that model as the caller wrote it, before the file and the
tensor: ``post 'org/model': tensor '...' in /path/model.safetensors: ...`` (:func:`naming_models`).
"""
import contextlib
import os
import re
from typing import Iterator, Optional, Tuple

from ._core import (
    BackendError,
    BadCheckpointError,
    InvalidArgumentError,
    NotBuiltWithCudaError,
    PostsvdError,
)



class HubError(PostsvdError, OSError):
    """A Hub repo id could not be resolved or its tensors fetched (postsvd.hub)."""


@contextlib.contextmanager
def naming_models(*models: Tuple[str, object, Optional[str]]) -> Iterator[None]:
    """Names the model in the errors of the core raised inside: an error whose message names a file or
    the folder of exactly one of `models` ((role, as the caller wrote it, the folder opened); entries
    whose folder is None are skipped) starts with ``role 'as written': ``. An error an inner block named
    already is named again by the outer one when its model is one of the outer's (the same folder or the
    same text): ``track`` calls the post model of each comparison a checkpoint, ``lineage`` calls base
    and post a and b."""
    known = [(role, _written(written), folder) for role, written, folder in models if folder]
    try:
        yield
    except PostsvdError as error:
        _name_model(error, known)
        raise


def _written(value: object) -> str:
    try:
        text = os.fspath(value)  # type: ignore[call-overload]
    except TypeError:
        return str(value)
    return os.fsdecode(text) if isinstance(text, bytes) else text


def _names_folder(message: str, folder: str) -> bool:
    """True when `message` names `folder` itself (followed by ':') or a file under it."""
    stem = folder.rstrip("/" + os.sep) or folder
    return re.search(r"(?:^|(?<=[\s'\"(]))" + re.escape(stem) + r"(?=[:" + re.escape("/" + os.sep) + "])",
                     message) is not None


def _name_model(error: PostsvdError, models) -> None:
    if isinstance(error, HubError) or not error.args or not isinstance(error.args[0], str):
        return
    named = getattr(error, "postsvd_model", None)
    if named is not None:  # named by an inner block: the outer role wins for the same model
        matches = [m for m in models if m[2] == named[2] or m[1] == named[1]]
        message = error.postsvd_unnamed_message
    else:
        message = error.args[0]
        matches = [m for m in models if _names_folder(message, m[2])]
    if len({(role, written) for role, written, _ in matches}) != 1:
        return
    role, written, folder = matches[0]
    error.postsvd_model = (role, written, folder)
    error.postsvd_unnamed_message = message
    error.args = (f"{role} '{written}': {message}",) + tuple(error.args[1:])


__all__ = [
    "PostsvdError",
    "InvalidArgumentError",
    "BadCheckpointError",
    "BackendError",
    "NotBuiltWithCudaError",
    "HubError",
    "naming_models",
]
