"""Models where users have them: local folders, Hub repo ids and revisions, fetched by the byte.

A model name is a local folder (it wins when it exists), a Hub repo id ``org/name``, ``org/name@revision``
(a branch, tag or commit hash) or ``hf://org/name[@revision]``::

    resolved = postsvd.hub.resolve("Qwen/Qwen2.5-0.5B@main", "base")
    names = [...]                                    # the tensors the selected sources read
    print(postsvd.hub.plan(resolved, names))         # dry run: files, ranges, bytes, disk needed
    postsvd.hub.fetch(resolved, names)               # only those byte ranges
    postsvd.read_matrix(resolved.folder, 0, "q")     # the core reads the folder as it is

`resolve` goes through huggingface_hub and honours what it honours: the token (HF_TOKEN or the stored
login), HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE. It fetches config.json and the shard index
(into the Hugging Face cache) and each shard's safetensors header (by range); `fetch` then reads only the
byte ranges of the tensors asked for into postsvd's own cache (_hub_cache.py: a model folder per repo and
commit, sparse shards plus a manifest of the ranges present). Complete files already in the Hugging Face
cache are linked and read as they are. The C++ reader refuses a tensor whose bytes were not fetched.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _hub_cache
from ._hub_cache import MANIFEST, Entry, human_bytes, missing_spans, present_ranges
from ._hub_http import FileChanged, RangeNotHonoured, Remote, describe_error, read_range
from ._names import short_name
from ._validate import normalize_folder, path_text
from .errors import BadCheckpointError, HubError, InvalidArgumentError

__all__ = ["ModelName", "ResolvedModel", "FetchPlan", "FileFetch", "FetchReport", "parse_name", "is_hub_name", "resolve", "commit_of",
           "on_this_machine", "plan", "fetch", "source_tensors", "repo_file", "other_files", "weight_sha256",
           "cache_entries",
           "clear_cache", "cache_root"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
CONFIG = "config.json"
#: A PEFT adapter repo (docs/adapters.md): its config, and its weights, fetched whole when it is resolved (they are
#: small next to a model's, and the reader checks every factor when it opens the adapter).
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Largest safetensors header read (the C++ reader's limit, cpp/include/postsvd/limits.h kMaxHeaderBytes).
MAX_HEADER_BYTES = 100_000_000
#: Missing ranges of one file closer than this are fetched as one request (the gap's bytes come along).
MERGE_GAP = 64 << 10
#: One request reads at most this many bytes; each is recorded in the manifest once written, so an
#: interrupted fetch resumes from the last whole chunk.
CHUNK_BYTES = 64 << 20
#: Files fetched at the same time.
PARALLEL_FILES = 4
#: The manifest is rewritten at most this often while a file's chunks come in (and when the file ends).
MANIFEST_FLUSH_S = 1.0

cache_root = _hub_cache.cache_root
cache_entries = _hub_cache.entries
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------- names

@dataclass(frozen=True)
class ModelName:
    """A model argument as parsed: a local folder, or a Hub repo id and the revision asked for."""

    text: str
    local: Optional[str] = None
    repo_id: Optional[str] = None
    revision: Optional[str] = None  # None: the repo's default branch


def _looks_like_path(text: str) -> bool:
    return (text.startswith(("/", "./", "../", "~", ".\\")) or text in (".", "..") or "\\" in text
            or os.path.isabs(text))


def is_hub_name(text: str) -> bool:
    """Whether `text` is written as a Hub name (hf://..., or org/name[@revision] that is not a path); an
    existing folder of that name still wins (resolve)."""
    return text.startswith("hf://") or (not _looks_like_path(text) and text.split("@", 1)[0].count("/") == 1)


def parse_name(name: Union[str, "os.PathLike[str]"], what: str = "model") -> ModelName:
    """Parses a model argument. An existing path wins; then ``org/name[@revision]`` and
    ``hf://org/name[@revision]``; anything else is an InvalidArgumentError naming `what`."""
    try:
        text = os.fspath(name)
    except TypeError:
        raise InvalidArgumentError(f"{what}: expected a folder or a Hub repo id, got {type(name).__name__}") from None
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError(f"{what}: expected a folder or a Hub repo id, got {text!r}")
    if os.path.lexists(text):
        return ModelName(text=text, local=text)
    expected = "expected an existing folder, org/name[@revision] or hf://org/name[@revision]"
    uri = text.startswith("hf://")
    if not is_hub_name(text):
        raise InvalidArgumentError(f"{what}: '{text}' is neither an existing folder nor a Hub repo id ({expected})")
    from huggingface_hub import parse_hf_uri
    from huggingface_hub.errors import HfUriError

    try:
        parsed = parse_hf_uri(text if uri else "hf://" + text)
    except HfUriError as error:
        raise InvalidArgumentError(f"{what}: '{text}' is neither an existing folder nor a Hub repo id "
                                   f"({expected}): {str(error).splitlines()[0]}") from None
    if parsed.type != "model":
        raise InvalidArgumentError(f"{what}: '{text}' names a {parsed.type} repo; expected a model repo")
    if parsed.path_in_repo:
        raise InvalidArgumentError(
            f"{what}: '{text}' names the path '{parsed.path_in_repo}' inside repo '{parsed.id}'; postsvd reads the "
            f"weights at a repo's root ({expected})")
    return ModelName(text=text, repo_id=parsed.id, revision=parsed.revision)


# ---------------------------------------------------------------- resolving

@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for postsvd's core: `folder` opens with postsvd's reader once the tensors a command
    reads are fetched (local folders pass through as they are). `name` is the argument as written."""

    name: str
    folder: str
    repo_id: Optional[str] = None
    revision: Optional[str] = None
    commit: Optional[str] = None

    @property
    def is_local(self) -> bool:
        return self.repo_id is None

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        """How tables, progress bars and summaries name the model: a local folder by its last component (as
        postsvd always did), a Hub model as written (``org/name@revision``)."""
        return short_name(self.folder) if self.is_local else self.name

    @property
    def description(self) -> str:
        """How a page's metadata names the model: a local folder's absolute path; a Hub model as written with
        its repo id and the commit read, ``name (repo_id @ commit[:12])``."""
        if self.is_local:
            return os.path.abspath(self.folder)
        return f"{self.name} ({self.repo_id} @ {(self.commit or '')[:12]})"

    def record(self) -> Dict[str, Any]:
        """What a result should record about this model (run.json): the name as written, and for a Hub model
        the repo id, the revision asked for and the commit that was read."""
        if self.is_local:
            return {"name": self.name, "folder": os.path.abspath(self.folder)}
        return {"name": self.name, "repo_id": self.repo_id, "revision": self.revision or "main",
                "commit": self.commit}


def resolve(name: Union[str, bytes, "os.PathLike[str]", ResolvedModel], what: str = "model") -> ResolvedModel:
    """Resolves a model argument; `what` names it in errors ('base', 'post', ...).

    An existing path is a local folder (checked: a folder, not a broken link); text written as a Hub name
    (parse_name) is a Hub model; anything else is a folder that does not exist. For a Hub repo: resolves
    the revision to a commit, fetches config.json and the shard index through huggingface_hub (into its
    cache) and each shard's safetensors header (a range read) into postsvd's cache, and links the shards
    that the Hugging Face cache holds complete. Nothing more is fetched; a second call with everything
    cached makes no request when the revision is a commit hash (a branch or tag costs one request, to
    learn where it points), and none at all with HF_HUB_OFFLINE=1. A ResolvedModel is returned as it is.

    Raises:
        InvalidArgumentError: not a path, or a malformed Hub name.
        BadCheckpointError: a path that does not exist or is not a folder.
        HubError: one line: repo or revision not found, gated or private without access, offline with
            nothing cached, the server failing after the retries, weights that are not safetensors at the
            repo's root.
    """
    if isinstance(name, ResolvedModel):
        return name
    text = path_text(name, what, "a folder path")
    if os.path.lexists(text):
        return ResolvedModel(name=text, folder=normalize_folder(text, what))
    if not is_hub_name(text):
        raise BadCheckpointError(f"{what}: folder '{text}' does not exist (nor is it a Hub repo id: "
                                 f"org/name[@revision] or hf://org/name[@revision])")
    parsed = parse_name(text, what)
    assert parsed.repo_id is not None
    commit = _commit_of(parsed, what)
    entry = Entry(cache_root(), parsed.repo_id, commit)
    _prepare(entry, parsed, what)
    return ResolvedModel(name=parsed.text, folder=entry.folder, repo_id=parsed.repo_id, revision=parsed.revision,
                         commit=commit)


def commit_of(name: Union[str, "os.PathLike[str]"], what: str = "model") -> Tuple[str, str]:
    """(repo id, commit hash) of a Hub name, without preparing postsvd's copy: for loaders that download
    complete files themselves (transformers' from_pretrained(repo_id, revision=commit)). HubError as resolve."""
    parsed = parse_name(name, what)
    if parsed.repo_id is None:
        raise InvalidArgumentError(f"{what}: '{parsed.text}' is a local path, not a Hub repo id")
    return parsed.repo_id, _commit_of(parsed, what)


def on_this_machine(resolved: ResolvedModel, what: str = "model") -> ResolvedModel:
    """`resolved` where this process can open it: as it is when its folder is here (a local folder, or a Hub
    model in a cache folder this machine shares), else resolved again here by its commit (a Ray worker on a
    node with another cache path: no request when that node has it cached)."""
    if resolved.is_local or os.path.isdir(resolved.folder):
        return resolved
    here = resolve(f"{resolved.repo_id}@{resolved.commit}", what)
    return ResolvedModel(name=resolved.name, folder=here.folder, repo_id=resolved.repo_id,
                         revision=resolved.revision, commit=resolved.commit)


def repo_file(resolved: ResolvedModel, filename: str) -> Optional[str]:
    """The path of a small file of the model at its root (tokenizer.json, ...): in a local folder, or for a
    Hub model through huggingface_hub into the Hugging Face cache (offline: from that cache); None when the
    model has no such file (or, offline, it was never downloaded)."""
    if resolved.is_local:
        path = os.path.join(resolved.folder, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import RemoteEntryNotFoundError

    repo_id, commit = resolved.repo_id, resolved.commit
    assert repo_id is not None and commit is not None
    listed = (_entry_of(resolved).read_manifest() or {}).get("other_files")
    if listed is not None and filename not in listed and filename != CONFIG:
        return None
    if _offline():
        cached = try_to_load_from_cache(repo_id, filename, revision=commit)
        return cached if isinstance(cached, str) else None

    def download() -> Optional[str]:
        try:
            return hf_hub_download(repo_id, filename, revision=commit)
        except RemoteEntryNotFoundError:
            return None

    return _hub_call(download, what=resolved.name, repo_id=repo_id, revision=resolved.revision, filename=filename)


def other_files(resolved: ResolvedModel) -> Dict[str, str]:
    """The model's files besides its weights and the shard index, name -> path: config.json and, for
    instance, the tokenizer files, the generation config, a chat template (a local folder's sub-folders
    too): what a folder that loads like the model needs besides the weights (construct copies them). A Hub
    model's come through huggingface_hub into the Hugging Face cache; weights in other formats (.bin, ...)
    and sub-folders of the repo are left out.

    Raises:
        HubError: offline, a file that was never downloaded; the errors of the Hub.
    """
    if resolved.is_local:
        from . import _core

        weights = {os.path.basename(f) for f in _core.Checkpoint(resolved.folder).files()} | {INDEX, MANIFEST}
        return {name: os.path.join(resolved.folder, name) for name in sorted(os.listdir(resolved.folder))
                if name not in weights}
    entry = _entry_of(resolved)
    manifest = entry.read_manifest() or {}
    names = manifest.get("other_files")
    if names is None:  # a manifest written before postsvd listed them
        if _offline():
            raise HubError(f"{resolved.name}: HF_HUB_OFFLINE is set and the file list of '{resolved.repo_id}' at "
                           f"{(resolved.commit or '')[:12]} is not in postsvd's cache; unset HF_HUB_OFFLINE")
        listing = _hub_call(lambda: _list_root(resolved.repo_id or "", resolved.commit or ""), what=resolved.name,
                            repo_id=resolved.repo_id or "", revision=resolved.revision)
        names = sorted(name for name in listing if _other_file(name, manifest.get("files", {})))
    found = {CONFIG: entry.path(CONFIG)}
    for name in names:
        path = repo_file(resolved, name)
        if path is None:
            raise HubError(f"{resolved.name}: HF_HUB_OFFLINE is set and {name} of '{resolved.repo_id}' was never "
                           f"downloaded; unset HF_HUB_OFFLINE to fetch it")
        found[name] = path
    return dict(sorted(found.items()))


def weight_sha256(resolved: ResolvedModel) -> Dict[str, Optional[str]]:
    """A Hub model's weight files and their sha256 as the Hub lists them (an LFS file's ETag is its sha256),
    read from postsvd's manifest without reading the files; None where the Hub gave none (e.g. an entry
    prepared offline from the Hugging Face cache)."""
    if resolved.is_local:
        raise InvalidArgumentError(f"{resolved.name}: a local folder; hash its files instead")
    files = (_entry_of(resolved).read_manifest() or {}).get("files", {})
    return {name: (f.get("etag") if _SHA256.fullmatch(f.get("etag") or "") else None) for name, f in files.items()}


def _entry_of(resolved: ResolvedModel) -> Entry:
    """The cache entry of a resolved Hub model (its folder is {root}/models--org--name/{commit})."""
    assert resolved.repo_id is not None and resolved.commit is not None
    return Entry(os.path.dirname(os.path.dirname(resolved.folder)), resolved.repo_id, resolved.commit)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_call(fn: Callable[[], Any], *, what: str, repo_id: str, revision: Optional[str],
              filename: Optional[str] = None, retries: int = 5) -> Any:
    """fn() with bounded retries of 429 (Retry-After honoured) and 5xx for the calls huggingface_hub does not
    retry itself (model info, tree listing); its errors as one HubError line."""
    from huggingface_hub.errors import HfHubHTTPError

    wait = 1.0
    for attempt in range(retries + 1):
        try:
            return fn()
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status in (429, 500, 502, 503, 504) and attempt < retries:
                after = error.response.headers.get("Retry-After", "") if error.response is not None else ""
                time.sleep(float(after) + 0.1 if after.strip().isdigit() else wait)
                wait = min(8.0, wait * 2)
                continue
            raise describe_error(error, what=what, repo_id=repo_id, revision=revision, filename=filename) from None
        except Exception as error:
            line = describe_error(error, what=what, repo_id=repo_id, revision=revision, filename=filename)
            if line is None:
                raise
            raise line from None
    raise AssertionError("unreachable")


def _commit_of(parsed: ModelName, what: str) -> str:
    """The commit hash the revision points to: as given when it is one; else asked of the Hub (through
    HfApi.resolve_revision, which falls back to the Hugging Face cache's refs offline), else postsvd's refs."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RevisionResolutionError

    repo_id, revision = parsed.repo_id, parsed.revision
    assert repo_id is not None
    if revision is not None and _COMMIT.fullmatch(revision):
        return revision
    ref = revision or "main"
    root = cache_root()
    wait = 1.0
    for attempt in range(6):
        try:
            commit = HfApi().resolve_revision(repo_id, revision=revision).resolved
            break
        except RevisionResolutionError as error:
            cached = _hub_cache.read_ref(root, repo_id, ref)
            if cached is not None:
                return cached
            cause = error.__cause__
            status = getattr(getattr(cause, "response", None), "status_code", None)
            if isinstance(cause, HfHubHTTPError) and status is not None and status >= 500 and attempt < 5:
                time.sleep(wait)
                wait = min(8.0, wait * 2)
                continue
            if _offline():
                raise HubError(f"{what}: {parsed.text}: HF_HUB_OFFLINE is set and revision '{ref}' of '{repo_id}' "
                               f"was never resolved on this machine (no refs/{ref} in the Hugging Face cache nor in "
                               f"postsvd's {root}); run once online, or name a commit hash") from None
            line = describe_error(cause, what=what, repo_id=repo_id, revision=revision) if cause else None
            raise (line or HubError(f"{what}: {parsed.text}: {error}")) from None
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status == 429 and attempt < 5:
                after = error.response.headers.get("Retry-After", "")
                time.sleep(float(after) + 0.1 if after.strip().isdigit() else wait)
                wait = min(8.0, wait * 2)
                continue
            raise describe_error(error, what=what, repo_id=repo_id, revision=revision) from None
    if not _COMMIT.fullmatch(commit or ""):
        raise HubError(f"{what}: {parsed.text}: the Hub resolved revision '{ref}' to {commit!r}, not a commit hash")
    Entry(root, repo_id, commit).write_ref(ref)
    return commit


def _prepare(entry: Entry, parsed: ModelName, what: str) -> None:
    """Makes `entry.folder` a model folder the core opens: config.json, the index, every shard's header
    (or a link to the complete shard in the Hugging Face cache)."""
    manifest = entry.read_manifest()
    if manifest is not None and manifest.get("ready"):
        _link_complete_files(entry, manifest)  # may find a link gone, and unset "ready"
        manifest = entry.read_manifest()
        if manifest is not None and manifest.get("ready"):
            entry.touch()
            return
    with entry.lock("prepare"):
        manifest = entry.read_manifest()
        if manifest is not None and manifest.get("ready"):
            return
        if manifest is None or not manifest.get("files"):
            _build_manifest(entry, parsed, what)
        _link_complete_files(entry, entry.read_manifest() or {})
        manifest = entry.read_manifest() or {}
        missing = [name for name, f in manifest.get("files", {}).items()
                   if not f.get("complete") and not f.get("header_end")]
        if missing and _offline():
            _missing_offline(parsed, what, [name if manifest.get("adapter") else f"the header of {name}"
                                            for name in missing[:3]])
        if manifest.get("adapter"):  # a PEFT adapter: its weights whole (ADAPTER_WEIGHTS)
            _run_parallel([lambda name=name: _whole_file(entry, name, parsed, what, reason="") for name in missing])
        else:
            _run_parallel([lambda name=name: _fetch_header(entry, name, parsed, what) for name in missing])

        def ready(m: Dict[str, Any]) -> None:
            m["ready"] = True

        entry.update(ready)


def _build_manifest(entry: Entry, parsed: ModelName, what: str) -> None:
    """config.json and the index copied into the entry, and the manifest's table of shards (size, ETag):
    from the Hub, or with HF_HUB_OFFLINE=1 from a complete copy in the Hugging Face cache."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo_id, commit = entry.repo_id, entry.commit
    context = dict(what=what, repo_id=repo_id, revision=parsed.revision)
    offline = _offline()
    listing = {} if offline else _hub_call(lambda: _list_root(repo_id, commit), **context)
    if not offline:
        _check_weights(listing, repo_id, commit, parsed, what)
    os.makedirs(entry.folder, exist_ok=True)

    def small_file(filename: str) -> Optional[str]:
        """A small file of the repo (config, index) copied into the entry; None when the repo lacks it."""
        target = entry.path(filename)
        if offline:
            cached = try_to_load_from_cache(repo_id, filename, revision=commit)
            if not isinstance(cached, str):
                return target if os.path.exists(target) else None
            path = cached
        elif filename not in listing:
            return None
        else:
            path = _hub_call(lambda: hf_hub_download(repo_id, filename, revision=commit), filename=filename,
                             **context)
        shutil.copyfile(path, target + ".tmp")
        os.replace(target + ".tmp", target)
        return target

    adapter = small_file(CONFIG) is None
    if adapter and small_file(ADAPTER_CONFIG) is None:
        _missing_offline(parsed, what, [CONFIG])
    index = None if adapter else small_file(INDEX)
    shards = [ADAPTER_WEIGHTS] if adapter else _shards_of_index(index, repo_id, what) if index is not None else [SINGLE]
    files: Dict[str, Dict[str, Any]] = {}
    for shard in shards:
        if offline:
            cached = try_to_load_from_cache(repo_id, shard, revision=commit)
            if not isinstance(cached, str):
                _missing_offline(parsed, what, [shard if index is not None else f"{INDEX} or {SINGLE}"])
            files[shard] = {"size": os.path.getsize(cached), "etag": None, "complete": False, "ranges": []}
            continue
        if shard not in listing:
            raise HubError(f"{what}: {parsed.text}: the shard index names '{shard}', which the repo does not have at "
                           f"commit {commit[:12]}")
        size, etag = listing[shard]
        files[shard] = {"size": size, "etag": etag, "complete": False, "ranges": []}

    others = None if offline else sorted(name for name in listing if _other_file(name, files))

    def record(m: Dict[str, Any]) -> None:
        m["files"] = files
        m["adapter"] = adapter
        if others is not None:
            m["other_files"] = others

    entry.update(record)


#: Suffixes of weight files in other formats, never fetched as "other files" (they may be large).
_OTHER_WEIGHTS = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".pkl",
                  ".npz", ".tflite", ".ot")


def _other_file(name: str, shards: Dict[str, Any]) -> bool:
    """A file at the repo's root besides the weights and the index (tokenizer, generation config, ...)."""
    return (not name.endswith("/") and name not in shards and name not in (INDEX, CONFIG, ADAPTER_CONFIG, ".gitattributes")
            and not name.lower().endswith(_OTHER_WEIGHTS))


def _missing_offline(parsed: ModelName, what: str, missing: List[str]):
    raise HubError(f"{what}: {parsed.text}: HF_HUB_OFFLINE is set and {', '.join(missing)} of '{parsed.repo_id}' "
                   f"is in neither the Hugging Face cache nor postsvd's ({cache_root()}); unset HF_HUB_OFFLINE to "
                   f"fetch it")


def _list_root(repo_id: str, commit: str) -> Dict[str, Tuple[int, Optional[str]]]:
    """The files at the repo's root: name -> (size, ETag the resolve endpoint gives: the LFS sha256 or blob id)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    files: Dict[str, Tuple[int, Optional[str]]] = {}
    for item in HfApi().list_repo_tree(repo_id, revision=commit):
        if isinstance(item, RepoFile):
            if item.lfs is not None:
                files[item.path] = (int(item.lfs.size), item.lfs.sha256)
            else:
                files[item.path] = (int(item.size), item.blob_id)
        else:
            files[item.path + "/"] = (0, None)
    return files


def _check_weights(listing: Dict[str, Any], repo_id: str, commit: str, parsed: ModelName, what: str) -> None:
    """One clear line for a repo whose weights postsvd cannot read at its root."""
    if CONFIG not in listing and ADAPTER_CONFIG in listing:  # a PEFT adapter (docs/adapters.md)
        if ADAPTER_WEIGHTS in listing:
            return
        pickle = " (adapter_model.bin, a pickle, is not read)" if "adapter_model.bin" in listing else ""
        raise HubError(f"{what}: {parsed.text}: a PEFT adapter repo without {ADAPTER_WEIGHTS}{pickle} at its root "
                       f"(commit {commit[:12]}); postsvd reads adapters saved as safetensors")
    if CONFIG not in listing:
        raise HubError(f"{what}: {parsed.text}: the repo has no config.json at its root (commit {commit[:12]}); "
                       f"postsvd reads Hugging Face model folders and PEFT adapters ({ADAPTER_CONFIG})")
    if INDEX in listing or SINGLE in listing:
        return
    at_root = sorted(name for name in listing if name.endswith(".safetensors"))
    bins = sorted(name for name in listing if name.endswith(".bin") or name.endswith(".pth"))
    folders = sorted(name for name in listing if name.endswith("/"))
    if at_root:
        raise HubError(f"{what}: {parsed.text}: the repo has {', '.join(at_root[:3])} but neither {SINGLE} nor "
                       f"{INDEX}; postsvd reads one of those")
    if bins:
        raise HubError(f"{what}: {parsed.text}: the repo holds only PyTorch weights ({', '.join(bins[:3])}); "
                       f"postsvd reads safetensors")
    nested = []
    if folders:
        from huggingface_hub import HfApi

        nested = sorted(item.path for item in HfApi().list_repo_tree(repo_id, revision=commit, recursive=True)
                        if item.path.endswith(".safetensors"))
    if nested:
        raise HubError(f"{what}: {parsed.text}: the repo keeps its safetensors weights in a subfolder "
                       f"({nested[0]}); postsvd reads the weights at a repo's root")
    raise HubError(f"{what}: {parsed.text}: the repo has no safetensors weights")


def _shards_of_index(path: str, repo_id: str, what: str) -> List[str]:
    try:
        with open(path, "rb") as f:
            weight_map = json.loads(f.read())["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise HubError(f"{what}: {repo_id}: {INDEX} is not a JSON object with a weight_map") from None
    for shard in shards:
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise HubError(f"{what}: {repo_id}: {INDEX} maps tensors to {shard!r}; postsvd reads shards at the "
                           f"repo's root")
    return shards


def _link_complete_files(entry: Entry, manifest: Dict[str, Any]) -> None:
    """Links the shards the Hugging Face cache holds complete (and drops a link whose target went away)."""
    from huggingface_hub import try_to_load_from_cache

    changes: Dict[str, Dict[str, Any]] = {}
    for name, f in manifest.get("files", {}).items():
        path = entry.path(name)
        if f.get("complete"):
            if not os.path.exists(path):  # a dangling link: the Hugging Face cache was cleared
                cached = try_to_load_from_cache(entry.repo_id, name, revision=entry.commit)
                if isinstance(cached, str):
                    _link(cached, path)
                else:
                    if os.path.lexists(path):
                        os.unlink(path)
                    changes[name] = {"size": f["size"], "etag": f.get("etag"), "complete": False, "ranges": []}
            continue
        cached = try_to_load_from_cache(entry.repo_id, name, revision=entry.commit)
        if isinstance(cached, str) and os.path.getsize(cached) == f["size"]:
            with entry.lock("file-" + name):
                _link(cached, path)
            changes[name] = {"size": f["size"], "etag": f.get("etag"), "complete": True, "source": "hf-cache"}
    if changes:
        def apply(m: Dict[str, Any]) -> None:
            m["files"].update(changes)
            if any(not c["complete"] for c in changes.values()):
                m["ready"] = False

        entry.update(apply)


def _link(target: str, path: str) -> None:
    tmp = path + ".link-tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.abspath(target), tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------- writing ranges

class _Writer:
    """Writes the ranges of one partial file and records each in the manifest once all its bytes are there."""

    def __init__(self, entry: Entry, name: str, info: Dict[str, Any]):
        self.entry = entry
        self.name = name
        self.size = int(info["size"])
        self.remote = Remote(entry.repo_id, entry.commit, name, self.size, info.get("etag"))
        self.pending: List[List[Any]] = []
        self.last_flush = time.monotonic()
        path = entry.path(name)
        if os.path.islink(path) or (os.path.exists(path) and os.path.getsize(path) != self.size):
            os.unlink(path)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size != self.size:
            os.ftruncate(self.fd, self.size)  # sparse: only the written ranges take disk

    def close(self) -> None:
        try:
            self.flush()
        finally:
            os.close(self.fd)

    def fetch(self, begin: int, end: int, on_bytes: Callable[[int], None]) -> int:
        """Fetches [begin, end) in chunks of CHUNK_BYTES; returns the bytes received."""
        received = 0
        for start in range(begin, end, CHUNK_BYTES):
            stop = min(end, start + CHUNK_BYTES)
            digest = hashlib.sha256()
            expected = [start]

            def sink(offset: int, data: bytes) -> None:
                if offset != expected[0]:  # a resumed body restarts where the last one stopped
                    raise AssertionError("non-contiguous body")
                os.pwrite(self.fd, data, offset)
                digest.update(data)
                expected[0] = offset + len(data)
                on_bytes(len(data))

            received += read_range(self.remote, start, stop, sink)
            self.pending.append([start, stop, digest.hexdigest()])
            if time.monotonic() - self.last_flush > MANIFEST_FLUSH_S:
                self.flush()
        return received

    def flush(self) -> None:
        if not self.pending:
            return
        os.fsync(self.fd)
        ranges, self.pending = self.pending, []

        def add(m: Dict[str, Any]) -> None:
            f = m["files"].get(self.name)
            if f is None or f.get("complete"):
                return
            f.setdefault("ranges", []).extend(ranges)

        self.entry.update(add)
        self.last_flush = time.monotonic()


def _fetch_header(entry: Entry, name: str, parsed: ModelName, what: str) -> None:
    """Fetches the 8-byte length and the safetensors header of a partial shard (when not yet present)."""
    with entry.lock("file-" + name):
        current = (entry.read_manifest() or {}).get("files", {}).get(name)
        if current is None or current.get("complete") or current.get("header_end"):
            return
        writer = _Writer(entry, name, current)
        try:
            context = dict(what=what, repo_id=entry.repo_id, revision=parsed.revision, filename=name)
            size = writer.size
            if size < 8:
                raise HubError(f"{what}: {parsed.text}: {name} is {size} bytes; not a safetensors file")
            _hub_call(lambda: writer.fetch(0, 8, lambda n: None), retries=0, **context)
            length = int.from_bytes(os.pread(writer.fd, 8, 0), "little")
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise HubError(f"{what}: {parsed.text}: {name}: header length {length} does not fit a file of "
                               f"{size} bytes (limit {MAX_HEADER_BYTES}); not a safetensors file")
            _hub_call(lambda: writer.fetch(8, 8 + length, lambda n: None), retries=0, **context)
            whole = False
        except RangeNotHonoured:
            writer.pending.clear()
            whole = True
        except FileChanged as change:
            writer.pending.clear()
            raise HubError(f"{what}: {parsed.text}: {name} changed on the server ({change}); run again") from None
        finally:
            writer.close()
    if whole:  # outside the file's lock, which _whole_file takes
        _whole_file(entry, name, parsed, what, reason="the server ignored the range request")
        return

    def mark(m: Dict[str, Any]) -> None:
        m["files"][name]["header_end"] = 8 + length

    entry.update(mark)


def _whole_file(entry: Entry, name: str, parsed: ModelName, what: str, reason: str) -> int:
    """The complete file through hf_hub_download (into the Hugging Face cache), linked; returns its size."""
    from huggingface_hub import hf_hub_download

    if reason:
        warnings.warn(f"{entry.repo_id}: {name}: {reason}; fetching the whole file "
                      f"({human_bytes(_file_size(entry, name))}) into the Hugging Face cache", stacklevel=3)
    path = _hub_call(lambda: hf_hub_download(entry.repo_id, name, revision=entry.commit), what=what,
                     repo_id=entry.repo_id, revision=parsed.revision, filename=name)
    with entry.lock("file-" + name):
        _link(path, entry.path(name))

        def complete(m: Dict[str, Any]) -> None:
            f = m["files"][name]
            m["files"][name] = {"size": f["size"], "etag": f.get("etag"), "complete": True, "source": "hf-cache"}

        entry.update(complete)
    return os.path.getsize(path)


def _file_size(entry: Entry, name: str) -> int:
    return int(((entry.read_manifest() or {}).get("files", {}).get(name) or {}).get("size", 0))


def _run_parallel(jobs: Sequence[Callable[[], Any]]) -> List[Any]:
    if len(jobs) <= 1:
        return [job() for job in jobs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_FILES) as pool:
        futures = [pool.submit(job) for job in jobs]
        results = []
        error: Optional[BaseException] = None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as e:  # the first error, after every job has stopped
                error = error or e
        if error is not None:
            raise error
        return results


# ---------------------------------------------------------------- planning

@dataclass(frozen=True)
class FileFetch:
    """What a fetch reads from one file: byte ranges [begin, end), or the whole file."""

    filename: str
    size: int
    ranges: Tuple[Tuple[int, int], ...]
    whole: bool = False

    @property
    def bytes(self) -> int:
        return self.size if self.whole else sum(end - begin for begin, end in self.ranges)


@dataclass(frozen=True)
class FetchPlan:
    """What fetch(resolved, tensors) would read: printable as a dry run."""

    model: ResolvedModel
    tensors: int
    files: Tuple[FileFetch, ...] = ()
    disk_free: int = 0
    cache_folder: str = ""
    tensors_present: int = 0

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def disk_needed(self) -> int:
        """Disk the fetch writes: the ranges (rounded to 4 KiB blocks) and the whole files."""
        return sum(f.bytes if f.whole else sum(-(-(e - b) // 4096) * 4096 + 4096 for b, e in f.ranges)
                   for f in self.files)

    @property
    def fits(self) -> bool:
        return self.disk_needed <= self.disk_free

    def __str__(self) -> str:
        m = self.model
        if m.is_local:
            return f"{m.name}: a local folder; nothing to fetch"
        head = (f"{m.name} ({m.repo_id} at commit {m.commit}): {self.tensors} tensors, {self.tensors_present} "
                f"already here; ")
        if not self.files:
            return head + "nothing to fetch"
        lines = [head + f"fetch {human_bytes(self.bytes)} ({self.bytes:,} bytes) in "
                        f"{sum(len(f.ranges) or 1 for f in self.files)} ranges from {len(self.files)} files; needs "
                        f"{human_bytes(self.disk_needed)} of disk, {human_bytes(self.disk_free)} free in "
                        f"{self.cache_folder}" + ("" if self.fits else " (NOT ENOUGH)")]
        for f in self.files:
            what = "the whole file" if f.whole else (
                f"{len(f.ranges)} ranges: " + ", ".join(f"{b}-{e - 1}" for b, e in f.ranges[:4])
                + (", ..." if len(f.ranges) > 4 else ""))
            lines.append(f"  {f.filename} ({human_bytes(f.size)}): {human_bytes(f.bytes)}, {what}")
        return "\n".join(lines)


_HEADERS: Dict[Tuple[str, int, int], Dict[str, Any]] = {}
_HEADERS_LOCK = threading.Lock()


def _header(path: str) -> Tuple[int, Dict[str, Any]]:
    """(data start, header JSON) of a safetensors file (complete or partial with its header present)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        with _HEADERS_LOCK:
            cached = _HEADERS.get(key)
        if cached is None:
            if length > MAX_HEADER_BYTES:
                raise HubError(f"{path}: header length {length} over the limit of {MAX_HEADER_BYTES}")
            try:
                cached = json.loads(f.read(length))
            except ValueError:
                raise HubError(f"{path}: the safetensors header is not JSON") from None
            with _HEADERS_LOCK:
                _HEADERS[key] = cached
    return 8 + length, cached


def _tensor_files(entry_folder: str) -> Dict[str, str]:
    index = os.path.join(entry_folder, INDEX)
    if os.path.exists(os.path.join(entry_folder, SINGLE)) or not os.path.exists(index):
        return {}
    with open(index, "rb") as f:
        return json.loads(f.read())["weight_map"]


def _needed(resolved: ResolvedModel, tensor_names: Optional[Iterable[str]]
            ) -> Tuple[Entry, Dict[str, Any], Dict[str, List[Tuple[str, int, int]]], int]:
    """(entry, manifest, file -> [(tensor, begin, end)] absolute byte ranges, tensor count)."""
    assert resolved.repo_id is not None and resolved.commit is not None
    entry = _entry_of(resolved)
    manifest = entry.read_manifest()
    if manifest is None or not manifest.get("ready"):
        raise HubError(f"{resolved.name}: {resolved.folder} is not a prepared copy of {resolved.repo_id}; resolve "
                       f"it again (postsvd.hub.resolve)")
    weight_map = _tensor_files(resolved.folder)
    files = list(manifest["files"])
    wanted: Dict[str, List[Tuple[str, int, int]]] = {}
    count = 0
    names = None if tensor_names is None else list(dict.fromkeys(tensor_names))
    if names is None:
        names = []
        for name in files:
            _, header = _header(entry.path(name))
            names.extend(k for k in header if k != "__metadata__")
    for tensor in names:
        if not isinstance(tensor, str):
            raise InvalidArgumentError(f"tensor names: expected strings, got {type(tensor).__name__}")
        file = weight_map.get(tensor, files[0] if not weight_map and len(files) == 1 else None)
        if file is None or file not in manifest["files"]:
            raise InvalidArgumentError(f"{resolved.name}: no tensor '{tensor}' in {resolved.repo_id} at commit "
                                       f"{resolved.commit[:12]}")
        start, header = _header(entry.path(file))
        info = header.get(tensor)
        if not isinstance(info, dict) or "data_offsets" not in info:
            raise InvalidArgumentError(f"{resolved.name}: no tensor '{tensor}' in {file} of {resolved.repo_id}")
        begin, end = (int(x) for x in info["data_offsets"])
        wanted.setdefault(file, []).append((tensor, start + begin, start + end))
        count += 1
    return entry, manifest, wanted, count


def plan(resolved: ResolvedModel, tensor_names: Optional[Iterable[str]] = None, *,
         whole_files: bool = False) -> FetchPlan:
    """What fetch would read for `tensor_names` (None: every tensor) of a resolved model.

    Ranges of one file closer than MERGE_GAP are merged. `whole_files`: the files holding those tensors,
    complete (into the Hugging Face cache), instead of their ranges."""
    if resolved.is_local:
        return FetchPlan(model=resolved, tensors=0)
    entry, manifest, wanted, count = _needed(resolved, tensor_names)
    files: List[FileFetch] = []
    present_count = 0
    for name, tensors in wanted.items():
        f = manifest["files"][name]
        if f.get("complete"):
            present_count += len(tensors)
            continue
        present = present_ranges(f)
        gaps: List[List[int]] = []
        for _, begin, end in sorted(tensors, key=lambda t: t[1]):
            missing = missing_spans(present, begin, end)
            if not missing:
                present_count += 1
            gaps.extend(missing)
        if not gaps:
            continue
        if whole_files:
            files.append(FileFetch(name, int(f["size"]), (), whole=True))
            continue
        merged: List[List[int]] = []
        for begin, end in sorted(gaps):
            if merged and begin - merged[-1][1] <= MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([begin, end])
        files.append(FileFetch(name, int(f["size"]), tuple((b, e) for b, e in merged)))
    if whole_files:
        from huggingface_hub import constants

        target = constants.HF_HUB_CACHE
    else:
        target = entry.folder
    return FetchPlan(model=resolved, tensors=count, files=tuple(files), disk_free=_free_bytes(target),
                     cache_folder=target, tensors_present=present_count)


def _free_bytes(path: str) -> int:
    probe = path
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


# ---------------------------------------------------------------- fetching

@dataclass
class FetchReport:
    """What a fetch did: bytes received, ranges, whole files, ranges found corrupt and fetched again."""

    model: ResolvedModel
    bytes_fetched: int = 0
    ranges: int = 0
    whole_files: List[str] = field(default_factory=list)
    refetched: int = 0
    seconds: float = 0.0


def _verify(entry: Entry, manifest: Dict[str, Any], wanted: Dict[str, List[Tuple[str, int, int]]]) -> int:
    """Checks the checksum of every recorded range the wanted tensors read; drops (with a warning) the ranges
    whose bytes changed, so that the fetch reads them again. Returns how many it dropped."""
    bad: Dict[str, List[List[Any]]] = {}
    for name, tensors in wanted.items():
        f = manifest["files"][name]
        if f.get("complete"):
            continue
        spans = sorted((b, e) for _, b, e in tensors)
        path = entry.path(name)
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        if size != int(f["size"]):
            warnings.warn(f"{entry.repo_id}: {name}: the cached partial file is {size} bytes, expected {f['size']}; "
                          f"fetching its ranges again", stacklevel=3)
            bad[name] = list(f.get("ranges", []))
            continue
        with open(path, "rb") as handle:
            for record in f.get("ranges", []):
                begin, end, digest = int(record[0]), int(record[1]), record[2]
                if not any(b < end and begin < e for b, e in spans) and begin != 0:
                    continue
                handle.seek(begin)
                h = hashlib.sha256()
                left = end - begin
                while left:
                    block = handle.read(min(left, 8 << 20))
                    if not block:
                        break
                    h.update(block)
                    left -= len(block)
                if left or h.hexdigest() != digest:
                    bad.setdefault(name, []).append(record)
    dropped = sum(len(v) for v in bad.values())
    if dropped:
        for name, records in bad.items():
            warnings.warn(f"{entry.repo_id}: {name}: {len(records)} cached range(s) failed their checksum "
                          f"(e.g. bytes {records[0][0]}-{records[0][1] - 1}); fetching them again", stacklevel=3)

        def drop(m: Dict[str, Any]) -> None:
            for name, records in bad.items():
                f = m["files"][name]
                gone = {(r[0], r[1], r[2]) for r in records}
                f["ranges"] = [r for r in f.get("ranges", []) if (r[0], r[1], r[2]) not in gone]

        entry.update(drop)
    return dropped


def fetch(resolved: ResolvedModel, tensor_names: Optional[Iterable[str]] = None, *, whole_files: bool = False,
          progress: Union[None, bool, Callable[[int, int], Any]] = None) -> FetchReport:
    """Fetches the byte ranges of `tensor_names` (None: every tensor) that postsvd's cache lacks.

    Ranges already cached are checked against their checksums first (a corrupt one is fetched again, with
    a warning). The fetch stops before it starts when the disk (or POSTSVD_HUB_CACHE_LIMIT) cannot hold it,
    and with HF_HUB_OFFLINE=1 when anything is missing. Chunks are recorded as they complete, so an
    interrupted fetch resumes; a server that ignores ranges gets the whole shard (said in a warning).
    `progress`: True for a tqdm bar, or a callable(bytes_done, bytes_total).
    """
    report = FetchReport(model=resolved)
    if resolved.is_local:
        return report
    started = time.monotonic()
    entry, manifest, wanted, _ = _needed(resolved, tensor_names)
    report.refetched = _verify(entry, manifest, wanted)
    the_plan = plan(resolved, tensor_names, whole_files=whole_files)
    if not the_plan.files:
        entry.touch()
        return report
    what = resolved.name
    if _offline():
        first = the_plan.files[0]
        raise HubError(f"{what}: HF_HUB_OFFLINE is set and {human_bytes(the_plan.bytes)} of {resolved.repo_id} "
                       f"(commit {resolved.commit[:12]}) are not in the cache (e.g. from {first.filename}); unset "
                       f"HF_HUB_OFFLINE to fetch them")
    if not the_plan.fits:
        raise HubError(f"{what}: fetching {human_bytes(the_plan.bytes)} of {resolved.repo_id} needs "
                       f"{human_bytes(the_plan.disk_needed)} of disk but {the_plan.cache_folder} has "
                       f"{human_bytes(the_plan.disk_free)} free; nothing was fetched")
    limit = _hub_cache.cache_limit()
    if limit is not None and not whole_files:
        used = _hub_cache.disk_use(entry.root) if os.path.isdir(entry.root) else 0
        if used + the_plan.disk_needed > limit:
            raise HubError(f"{what}: fetching {human_bytes(the_plan.disk_needed)} would take postsvd's Hub cache "
                           f"({entry.root}, {human_bytes(used)} used) over its limit of {human_bytes(limit)} "
                           f"({_hub_cache.ENV_LIMIT}); free space with `postsvd cache clear [REPO]` or raise the "
                           f"limit; nothing was fetched")
    total = the_plan.bytes
    done = [0]
    lock = threading.Lock()
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"fetch {resolved.repo_id}")

    def on_bytes(n: int) -> None:
        with lock:
            done[0] += n
            if bar is not None:
                bar.update(n)
            elif callable(progress):
                progress(done[0], total)

    parsed = ModelName(text=resolved.name, repo_id=resolved.repo_id, revision=resolved.revision)

    def one_file(f: FileFetch) -> None:
        if f.whole:
            size = _whole_file(entry, f.filename, parsed, what, reason="")
            on_bytes(size)
            with lock:
                report.whole_files.append(f.filename)
                report.bytes_fetched += size
            return
        with entry.lock("file-" + f.filename):
            current = (entry.read_manifest() or {}).get("files", {}).get(f.filename)
            if current is None or current.get("complete"):
                return  # another run completed it meanwhile
            present = present_ranges(current)
            writer = _Writer(entry, f.filename, current)
            whole = False
            try:
                for begin, end in f.ranges:
                    for b, e in missing_spans(present, begin, end):  # another run may have fetched part of it
                        received = _hub_call(lambda: writer.fetch(b, e, on_bytes), retries=0, what=what,
                                             repo_id=resolved.repo_id or "", revision=resolved.revision,
                                             filename=f.filename)
                        with lock:
                            report.bytes_fetched += received
                            report.ranges += 1
            except RangeNotHonoured:
                whole = True
            except FileChanged as change:
                writer.pending.clear()
                writer.close()
                writer = None

                def discard(m: Dict[str, Any]) -> None:
                    g = m["files"][f.filename]
                    m["files"][f.filename] = {"size": g["size"], "etag": g.get("etag"), "complete": False,
                                              "ranges": []}
                    m["ready"] = False

                entry.update(discard)
                raise HubError(f"{what}: {resolved.repo_id}: {f.filename} changed on the server between its header "
                               f"and its data ({change}); its partial copy was discarded, nothing of it is used; run "
                               f"again") from None
            finally:
                if writer is not None:
                    writer.close()
        if whole:  # outside the file's lock, which _whole_file takes
            size = _whole_file(entry, f.filename, parsed, what, reason="the server ignored the range request")
            with lock:
                report.whole_files.append(f.filename)
                report.bytes_fetched += size

    try:
        _run_parallel([lambda f=f: one_file(f) for f in the_plan.files])
    finally:
        if bar is not None:
            bar.close()
    entry.touch()
    report.seconds = time.monotonic() - started
    return report


# ---------------------------------------------------------------- the tensors a selection reads

def source_tensors(folder: Union[str, Any], sources: Iterable[Dict[str, Any]]) -> List[str]:
    """The stored tensors that reading `sources` (dicts of postsvd.architecture(folder)['matrices']) touches:
    each source's tensor, its FP8 scale and its MXFP4 *_scales; in order, without repeats. Reads headers
    only, so it works on a resolved Hub model before fetch. `folder`: a folder or an open _core.Checkpoint."""
    from . import _core

    checkpoint = folder if isinstance(folder, _core.Checkpoint) else _core.Checkpoint(folder)
    names: List[str] = []
    for source in sources:
        names.extend(_core.source_tensors(checkpoint, source))
    return list(dict.fromkeys(names))


def clear_cache(repo_id: Optional[str] = None) -> List[Dict[str, Any]]:
    """Deletes postsvd's cached copies (of `repo_id`, or all); returns what it deleted. The Hugging Face cache
    is left alone."""
    return _hub_cache.clear(repo_id)
