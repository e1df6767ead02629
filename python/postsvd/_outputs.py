"""Result folders written all at once: :func:`atomic_folder`.

Every folder postsvd writes (a constructed model, a comparison's tables and
plots, a report) is built in a hidden temporary folder beside its target,
``.NAME.tmp-PID-HOST-XXXXXXXX``, and moved into place only when complete, so
a failure or a kill never leaves a folder that looks finished:

* a missing (or empty) target: one rename;
* an existing target that is replaced (``construct --force``, or a folder
  holding only files a previous run of the same writer made): the new folder
  and the old one swap places in one atomic step (Linux ``renameat2``
  ``RENAME_EXCHANGE``), then the old one is deleted. Where the system lacks
  the exchange, the old folder is renamed aside (``.NAME.old-...``) first;
  a kill between the two renames leaves the old folder there, and the next
  run puts it back;
* an existing folder holding other files too: the new files are moved in one
  by one (each rename atomic), the other files are kept.

Temporary folders get normal permissions (``0o777 & ~umask``, 0755 with the
usual umask), not the 0700 of :func:`tempfile.mkdtemp`. A temporary folder
left by a killed run (its process is gone) is removed by the next run that
writes to the same target; one of a live run, or of another machine, is never
touched.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

class FileSet:
    r"""The entries one kind of result writes into its folder, declared once.

    Each entry is a fixed name (``"table.csv"``) or a template whose fields match the patterns given
    (``"matrices_layer{layer}_{kind}.png"`` with ``{"layer": r"\d+", "kind": "q|k|..."}``); a template
    ending in ``/`` is a folder, optionally holding the entries of another FileSet. Writing and owning
    both go through the declaration: :meth:`name` makes an entry's name and refuses one the set does
    not declare, :meth:`owns` tells :func:`atomic_folder` which entries of an existing folder belong
    to a previous result of the same writer, and :func:`atomic_folder` checks (:meth:`check`) that
    a finished folder holds nothing else before it is published, so the two cannot drift apart.
    """

    def __init__(self, what: str, entries: Sequence[str], fields: Optional[Mapping[str, str]] = None,
                 folders: Optional[Mapping[str, "FileSet"]] = None, literal: bool = False):
        self.what = what
        self.literal = literal  # entries are plain names (any characters), not templates
        self.entries: Tuple[str, ...] = tuple(entries)
        self.fields: Dict[str, str] = dict(fields or {})
        self.folders: Dict[str, FileSet] = dict(folders or {})
        self._patterns: List[Tuple[str, "re.Pattern[str]"]] = [(e, self._compile(e)) for e in self.entries]

    def _compile(self, template: str) -> "re.Pattern[str]":
        if self.literal:
            return re.compile(re.escape(template.rstrip("/")))
        parts, position = [], 0
        for match in re.finditer(r"\{(\w+)\}", template):
            if match.group(1) not in self.fields:
                raise ValueError(f"{self.what}: template {template!r} has the field {{{match.group(1)}}} "
                                 f"without a pattern")
            parts.append(re.escape(template[position:match.start()]))
            parts.append(f"(?:{self.fields[match.group(1)]})")
            position = match.end()
        parts.append(re.escape(template[position:].rstrip("/")))
        return re.compile("".join(parts))

    def _template_of(self, name: str) -> Optional[str]:
        for template, pattern in self._patterns:
            if pattern.fullmatch(name):
                return template
        return None

    def owns(self, name: str) -> bool:
        """True when `name` (an entry of a folder, no path) is one of the declared entries."""
        return self._template_of(name) is not None

    def name(self, template: str, **values) -> str:
        """The entry `template` (one of the declared ones) with its fields filled in."""
        if template not in self.entries:
            raise ValueError(f"{self.what}: {template!r} is not one of its declared entries")
        text = template.rstrip("/") if self.literal else template.rstrip("/").format(**values)
        if self._template_of(text) != template:
            raise ValueError(f"{self.what}: {text!r} does not match its declared entry {template!r}")
        return text

    def undeclared(self, folder: str) -> List[str]:
        """The entries of `folder` (recursively into declared sub-folders) that the set does not declare."""
        found = []
        for entry in sorted(os.listdir(folder)):
            template = self._template_of(entry)
            path = os.path.join(folder, entry)
            is_dir = os.path.isdir(path) and not os.path.islink(path)
            if template is None or template.endswith("/") != is_dir:
                found.append(entry)
            elif is_dir and template in self.folders:
                found += [os.path.join(entry, inner) for inner in self.folders[template].undeclared(path)]
        return found

    def check(self, folder: str) -> None:
        """Raises when `folder` holds an entry the set does not declare (a writer out of step with its
        declaration: a bug, never published)."""
        extra = self.undeclared(folder)
        if extra:
            raise RuntimeError(f"{self.what}: wrote {', '.join(extra)}, which its file declaration does not list")


#: Tags of the hidden folders beside a target: a folder being built, an old folder being replaced.
TEMP_TAG = "tmp"
OLD_TAG = "old"

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

# Temporary folders this process is building now: never cleaned up as stale.
_active: Set[str] = set()
_active_lock = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (os.umask sets it to
    read it, which a file created meanwhile by another thread would see)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)  # the most private value for the moment it is set
    os.umask(umask)
    return umask


def folder_mode() -> int:
    """The mode a new folder gets from the umask: 0o777 & ~umask (0o755 with umask 022)."""
    return 0o777 & ~_umask()


def apply_umask(path: str) -> None:
    """Clears the umask's bits from the modes of `path` and everything under it (a copy keeps its
    source's modes; a new file would not have them)."""
    allowed = folder_mode()
    paths = [path]
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            paths += [os.path.join(root, name) for name in dirs + files]
    for item in paths:
        mode = os.lstat(item).st_mode
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & ~allowed:
            os.chmod(item, stat.S_IMODE(mode) & allowed)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:32] or "host"


def _prefix(target: str, tag: str) -> str:
    return f".{os.path.basename(target)}.{tag}-"


def _owner_of(entry: str, prefix: str):
    """(pid, host) from a hidden folder name ``<prefix>PID-HOST-XXXXXXXX``; None when it is not ours."""
    match = re.fullmatch(r"(\d+)-(.+)-[A-Za-z0-9_]+", entry[len(prefix):])
    return (int(match.group(1)), match.group(2)) if match else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _is_stale(path: str, pid: int, host: str) -> bool:
    if host != _host():
        return False  # another machine's run (a shared file system): its pid says nothing here
    if pid == os.getpid():
        with _active_lock:
            return path not in _active
    return not _process_alive(pid)


def remove_stale(target: str, parent: Optional[str] = None) -> None:
    """Removes the hidden temporary folders of killed runs into `target` from `parent`
    (default: the folder holding `target`); an old folder renamed aside by a run
    killed before the new one was in place is put back first when the target is missing."""
    parent = parent or os.path.dirname(target) or "."
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for tag in (OLD_TAG, TEMP_TAG):  # restore an old folder before anything else
        prefix = _prefix(target, tag)
        for entry in sorted(e for e in entries if e.startswith(prefix)):
            owner = _owner_of(entry, prefix)
            path = os.path.join(parent, entry)
            if owner is None or os.path.islink(path) or not os.path.isdir(path) or not _is_stale(path, *owner):
                continue
            if tag == OLD_TAG and not os.path.lexists(target):
                with contextlib.suppress(OSError):  # kept aside where it cannot go back
                    os.rename(path, target)
                continue
            shutil.rmtree(path, ignore_errors=True)


def _renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange(first: str, second: str) -> bool:
    """Swaps two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE).

    Returns False where the system or file system cannot (the caller then falls back to two renames)."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), second)


def _replace_folder(temp: str, target: str) -> None:
    """Puts the complete folder `temp` at `target`, which holds an old folder; deletes the old one."""
    if exchange(temp, target):
        shutil.rmtree(temp, ignore_errors=True)  # `temp` now names the old folder
        return
    parent = os.path.dirname(target) or "."
    old = tempfile.mkdtemp(prefix=_prefix(target, OLD_TAG) + f"{os.getpid()}-{_host()}-", dir=parent)
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(temp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _move_entries(temp: str, target: str) -> None:
    """Moves each entry of `temp` into the existing folder `target` (one atomic rename each)."""
    for entry in sorted(os.listdir(temp)):
        os.replace(os.path.join(temp, entry), os.path.join(target, entry))
    os.rmdir(temp)


def publish(temp: str, target: str, owned: Optional[Callable[[str], bool]] = None) -> None:
    """Moves the finished folder `temp` to `target` (see the module docstring).

    Args:
        owned: None: an existing target is replaced whatever it holds. Otherwise an
            existing target whose every entry satisfies `owned` (a previous result
            of the same writer) is replaced, and one holding other entries keeps
            them and receives the new files one by one.
    """
    if not os.path.lexists(target):
        os.rename(temp, target)
        return
    entries = os.listdir(target)
    if not entries:
        os.rename(temp, target)  # rename replaces an empty folder
    elif owned is None or all(owned(entry) for entry in entries):
        _replace_folder(temp, target)
    else:
        _move_entries(temp, target)


def make_parents(target: str) -> None:
    """Creates the folders above `target` that are missing."""
    parent = os.path.dirname(target)
    if parent:
        os.makedirs(parent, exist_ok=True)


def cannot_replace(target: str) -> Optional[str]:
    """Why the existing folder `target` cannot be swapped for a new one (None when it can): the
    folder above is not writable (``--out .`` in a read-only parent) or is another file system
    (`target` is a mount point), where no rename moves a folder in."""
    if not os.path.isdir(target):
        return None
    parent = os.path.dirname(target)
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its parent folder '{parent}' is not writable"
    if os.stat(parent).st_dev != os.stat(target).st_dev:
        return "it is a mount point"
    return None


def _build_inside(target: str) -> bool:
    """True when the temporary folder must go inside the existing folder `target`, not beside
    it: :func:`cannot_replace`, or `target` is the current folder (swapping it would leave this
    process, and the shell that started it, in a deleted folder)."""
    if not os.path.isdir(target):
        return False
    return cannot_replace(target) is not None or os.path.samefile(target, os.getcwd())


@contextlib.contextmanager
def atomic_folder(target: str, owned: Optional[Callable[[str], bool]] = None, *,
                  files: Optional[FileSet] = None, replace_all: bool = False) -> Iterator[str]:
    """Yields a new temporary folder beside `target` to write into; on success it is moved
    to `target` (:func:`publish`), on any error or interrupt it is deleted.

    Stale temporary folders of killed runs into `target` are removed first. The
    folders above `target` are created when missing. A symbolic link at `target`
    is followed: the folder it points to is the one replaced. Where the folder
    above cannot take the temporary folder, or `target` is the current folder
    (see :func:`_build_inside`), a writer with `owned` gets the temporary folder
    inside the existing `target`, and the new files are moved in one by one;
    without `owned` (replace everything) the swap is tried and fails with the
    system's error (check :func:`cannot_replace` first).

    `files`: the writer's :class:`FileSet`; the finished folder must hold only its entries
    (:meth:`~FileSet.check`) to be published, and its :meth:`~FileSet.owns` is `owned` unless
    `replace_all` (an existing target is replaced whatever it holds, as with ``owned=None``)."""
    if files is not None and owned is None and not replace_all:
        owned = files.owns
    target = os.path.realpath(target) if os.path.islink(target) else os.path.abspath(target)
    make_parents(target)
    inside = owned is not None and _build_inside(target)  # replacing everything needs the swap
    where = target if inside else os.path.dirname(target)
    remove_stale(target, where)
    temp = tempfile.mkdtemp(prefix=_prefix(target, TEMP_TAG) + f"{os.getpid()}-{_host()}-", dir=where)
    with _active_lock:
        _active.add(temp)
    try:
        os.chmod(temp, folder_mode())
        yield temp
        if files is not None:
            files.check(temp)
        if inside:
            _move_entries(temp, target)
        else:
            publish(temp, target, owned)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        with _active_lock:
            _active.discard(temp)


@contextlib.contextmanager
def atomic_file(target: str) -> Iterator[str]:
    """Yields a temporary file path beside `target` to write; on success it is renamed over
    `target` with normal permissions (0o666 & ~umask), on any error deleted."""
    target = os.path.abspath(target)
    handle, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                                    dir=os.path.dirname(target))
    os.close(handle)
    try:
        yield temp
        os.chmod(temp, 0o666 & folder_mode())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
