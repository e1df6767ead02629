"""postsvd's own cache of partial Hub files (postsvd.hub): layout, the fetch manifest, locks, size limit.

One entry per (repo, commit) is a model folder the C++ reader opens as it is::

    {root}/models--{org}--{name}/refs/{revision}        the commit a revision resolved to
    {root}/models--{org}--{name}/{commit}/config.json   copies of the small files
    {root}/models--{org}--{name}/{commit}/model.safetensors.index.json
    {root}/models--{org}--{name}/{commit}/<shard>       a sparse file of the shard's full size holding its
                                                        header and the fetched ranges, or a link to the
                                                        complete file in the Hugging Face cache
    {root}/models--{org}--{name}/{commit}/.postsvd-fetch.json   the manifest (MANIFEST below)
    {root}/.locks/models--{org}--{name}/{commit}/...    file locks (filelock), never deleted while held

The manifest lists, for each shard, its size, its ETag (the sha256 of an LFS file), whether it is
complete, and the byte ranges present as ``[begin, end, sha256 of the bytes]``. The C++ reader
(cpp/src/checkpoint.cpp) refuses a tensor of a partial file whose bytes are not inside a listed range,
so a range is listed only once all its bytes are written. Entries are never put among the Hugging Face
cache's blobs or snapshots (transformers would load them); a complete file already there is linked.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

MANIFEST = ".postsvd-fetch.json"  # the same name as kFetchManifest in cpp/src/checkpoint.cpp
MANIFEST_FORMAT = 1
ENV_CACHE = "POSTSVD_HUB_CACHE"
ENV_LIMIT = "POSTSVD_HUB_CACHE_LIMIT"
#: How long a run waits for another run's lock on the same file before it gives up.
LOCK_TIMEOUT_S = 3600.0


def cache_root() -> str:
    """postsvd's Hub cache: $POSTSVD_HUB_CACHE, else the folder `postsvd` in huggingface_hub's HF_HOME."""
    override = os.environ.get(ENV_CACHE)
    if override:
        return os.path.abspath(os.path.expanduser(override))
    from huggingface_hub import constants

    return os.path.join(constants.HF_HOME, "postsvd")


def repo_folder(repo_id: str) -> str:
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=repo_id, repo_type="model")


_SIZE_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
               "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str, what: str) -> int:
    """'500GB', '1.5TiB', '1000000' -> bytes; InvalidArgumentError naming `what` otherwise."""
    from .errors import InvalidArgumentError

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise InvalidArgumentError(f"{what}: expected a size such as 500GB, 1.5TiB or a number of bytes, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def cache_limit() -> Optional[int]:
    """The size limit of postsvd's Hub cache in bytes ($POSTSVD_HUB_CACHE_LIMIT), None when unset."""
    text = os.environ.get(ENV_LIMIT)
    return parse_size(text, ENV_LIMIT) if text else None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


def disk_use(path: str) -> int:
    """Bytes the files under `path` occupy on disk (sparse files count their written blocks; links count 0)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(folder, name)):
                total += st.st_blocks * 512
    return total


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Entry:
    """One (repo, commit) of the cache: its model folder, manifest and locks."""

    root: str
    repo_id: str
    commit: str

    @property
    def repo_dir(self) -> str:
        return os.path.join(self.root, repo_folder(self.repo_id))

    @property
    def folder(self) -> str:
        return os.path.join(self.repo_dir, self.commit)

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.folder, MANIFEST)

    def path(self, filename: str) -> str:
        return os.path.join(self.folder, filename)

    def _lock_path(self, name: str) -> str:
        return os.path.join(self.root, ".locks", repo_folder(self.repo_id), self.commit, name + ".lock")

    def lock(self, name: str, timeout: float = LOCK_TIMEOUT_S):
        """An inter-process lock (fcntl through filelock) on `name` of this entry."""
        from filelock import FileLock

        path = self._lock_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return FileLock(path, timeout=timeout, thread_local=False, is_singleton=False)

    # ------------------------------------------------------------ manifest

    def read_manifest(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.manifest_path, "rb") as f:
                manifest = json.loads(f.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable: treated as absent, rebuilt by the next resolve
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            return None
        return manifest

    def new_manifest(self) -> Dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "repo_id": self.repo_id, "commit": self.commit, "ready": False,
                "last_used": time.time(), "files": {}}

    @contextlib.contextmanager
    def editing(self) -> Iterator[Dict[str, Any]]:
        """The manifest under its lock; written back (atomically) when the block ends without error."""
        with self.lock("manifest", timeout=600):
            manifest = self.read_manifest() or self.new_manifest()
            yield manifest
            os.makedirs(self.folder, exist_ok=True)
            _atomic_write(self.manifest_path, json.dumps(manifest, separators=(",", ":")).encode())

    def update(self, change: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
        with self.editing() as manifest:
            change(manifest)
        return manifest

    def write_ref(self, revision: str) -> None:
        path = os.path.join(self.repo_dir, "refs", *revision.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _atomic_write(path, self.commit.encode())

    def touch(self) -> None:
        def stamp(manifest: Dict[str, Any]) -> None:
            manifest["last_used"] = time.time()

        with contextlib.suppress(OSError):
            self.update(stamp)


def read_ref(root: str, repo_id: str, revision: str) -> Optional[str]:
    path = os.path.join(root, repo_folder(repo_id), "refs", *revision.split("/"))
    try:
        with open(path) as f:
            commit = f.read().strip()
    except OSError:
        return None
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def present_ranges(file_entry: Dict[str, Any]) -> List[List[int]]:
    """[begin, end] pairs of the ranges present in a manifest file entry, sorted and merged."""
    spans = sorted((int(r[0]), int(r[1])) for r in file_entry.get("ranges", []))
    merged: List[List[int]] = []
    for begin, end in spans:
        if merged and begin <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    return merged


def missing_spans(present: List[List[int]], begin: int, end: int) -> List[List[int]]:
    """The parts of [begin, end) that `present` (sorted, merged) does not cover."""
    gaps: List[List[int]] = []
    cursor = begin
    for b, e in present:
        if e <= cursor:
            continue
        if b >= end:
            break
        if b > cursor:
            gaps.append([cursor, min(b, end)])
        cursor = max(cursor, e)
        if cursor >= end:
            break
    if cursor < end:
        gaps.append([cursor, end])
    return gaps


# ---------------------------------------------------------------- listing and clearing

def entries(root: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every entry of the cache: repo_id, commit, revisions, folder, files (complete / partial), bytes present,
    disk use, last use."""
    root = root or cache_root()
    found: List[Dict[str, Any]] = []
    if not os.path.isdir(root):
        return found
    for repo_name in sorted(os.listdir(root)):
        repo_dir = os.path.join(root, repo_name)
        if repo_name.startswith(".") or not os.path.isdir(repo_dir):
            continue
        refs = _refs(os.path.join(repo_dir, "refs"))
        for commit in sorted(os.listdir(repo_dir)):
            folder = os.path.join(repo_dir, commit)
            if not re.fullmatch(r"[0-9a-f]{40}", commit) or not os.path.isdir(folder):
                continue
            manifest = _read_manifest_at(folder)
            files = (manifest or {}).get("files", {})
            present = sum(e - b for f in files.values() if not f.get("complete")
                          for b, e in present_ranges(f))
            found.append({
                "repo_id": (manifest or {}).get("repo_id", repo_name),
                "commit": commit,
                "revisions": sorted(r for r, c in refs.items() if c == commit),
                "folder": folder,
                "complete_files": sum(1 for f in files.values() if f.get("complete")),
                "partial_files": sum(1 for f in files.values() if not f.get("complete")),
                "bytes_present": present,
                "disk_bytes": disk_use(folder),
                "last_used": (manifest or {}).get("last_used"),
            })
    return found


def _read_manifest_at(folder: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(folder, MANIFEST), "rb") as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _refs(refs_dir: str) -> Dict[str, str]:
    refs: Dict[str, str] = {}
    for folder, _, files in os.walk(refs_dir):
        for name in files:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                with open(path) as f:
                    refs[os.path.relpath(path, refs_dir).replace(os.sep, "/")] = f.read().strip()
    return refs


def clear(repo_id: Optional[str] = None, root: Optional[str] = None) -> List[Dict[str, Any]]:
    """Deletes every entry (or those of `repo_id`) with their refs; returns what it deleted.

    Each entry is deleted under its manifest lock, so a run of postsvd that is fetching into it finishes its
    manifest write first; the HubError names an entry whose lock another run holds for over a minute."""
    from .errors import HubError

    root = root or cache_root()
    removed = []
    for entry in entries(root):
        if repo_id is not None and entry["repo_id"] != repo_id:
            continue
        handle = Entry(root, entry["repo_id"], entry["commit"])
        try:
            with handle.lock("manifest", timeout=60):
                shutil.rmtree(entry["folder"], ignore_errors=True)
        except Exception as error:  # filelock.Timeout
            if type(error).__name__ != "Timeout":
                raise
            raise HubError(f"cannot clear {entry['repo_id']}@{entry['commit'][:12]}: another postsvd run is "
                           f"fetching into it (lock held for over 60 s)") from None
        removed.append(entry)
    for repo_name in os.listdir(root) if os.path.isdir(root) else []:
        repo_dir = os.path.join(root, repo_name)
        if repo_name.startswith(".") or not os.path.isdir(repo_dir):
            continue
        if not any(re.fullmatch(r"[0-9a-f]{40}", c) for c in os.listdir(repo_dir)):
            shutil.rmtree(repo_dir, ignore_errors=True)  # refs of deleted commits
    return removed
