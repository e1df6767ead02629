"""A Hugging Face Hub stand-in for the tests of postsvd.hub: a real HTTP server on 127.0.0.1 that serves
repos the way the Hub's API serves huggingface_hub (huggingface_hub/hf_api.py, file_download.py,
utils/_http.py), plus injected faults, and counts every request and body byte it sends.

- ``GET /api/models/{repo}[/revision/{rev}]``: model info (``id``, ``sha``, ``siblings``, ``gated``).
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=``: ``{"type", "path", "size", "oid"[, "lfs"]}``.
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (the sha256 for LFS files, the git
  blob id otherwise), ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files, ``Accept-Ranges``; ``Range``
  gives 206 with ``Content-Range``.
- Errors as the Hub sends them: 404 with ``X-Error-Code`` RepoNotFound / RevisionNotFound / EntryNotFound,
  401 GatedRepo for a gated repo's files without a valid ``Authorization: Bearer`` token.
- Xet-stored repos (``add_repo(..., xet=True)``): ``resolve`` of an LFS file answers 302 with ``X-Xet-Hash``
  and a ``Location`` on a bridge (``/xet-bridge/{sha256}?range=...&sig=...``) signed for the ``Range`` of the
  resolve request that minted it, as the Hub's Xet bridge does: the bridge serves that range only (403 for
  any other), so a client must resolve every range again rather than reuse a redirect.

``shard_model`` re-saves a bundled model (examples/models) as shards, one per layer, so that fetching one
layer leaves the other shards' data unread.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")
#: The bundled models the server serves (sharded by shard_model).
MODELS = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "models")
#: The token the gated repo accepts.
TOKEN = "hf_test_valid_token"


def shard_model(src: str, dst: str) -> Dict[str, bytes]:
    """Re-saves src/model.safetensors as model-0000k-of-0000N.safetensors (embeddings; one shard per layer;
    the final norm and lm_head) with model.safetensors.index.json; copies the other files. Returns the
    folder's files by name."""
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header.pop("__metadata__", None)
    data = blob[8 + n:]
    groups: Dict[str, List[str]] = {}
    for name in sorted(header):
        m = re.match(r"model\.layers\.(\d+)\.", name)
        key = f"1-layer{int(m.group(1)):04d}" if m else ("0-embed" if "embed" in name else "2-final")
        groups.setdefault(key, []).append(name)
    keys = sorted(groups)
    weight_map = {}
    total = 0
    for k, key in enumerate(keys, start=1):
        shard = f"model-{k:05d}-of-{len(keys):05d}.safetensors"
        entries, body, offset = {}, bytearray(), 0
        for name in groups[key]:
            info = header[name]
            b, e = info["data_offsets"]
            entries[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + e - b]}
            body += data[b:e]
            offset += e - b
            weight_map[name] = shard
        head = json.dumps({"__metadata__": {"format": "pt"}, **entries}, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)
        with open(os.path.join(dst, shard), "wb") as f:
            f.write(len(head).to_bytes(8, "little") + head + bytes(body))
        total += len(body)
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    for name in os.listdir(src):
        if name != "model.safetensors" and os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    return {name: open(os.path.join(dst, name), "rb").read() for name in sorted(os.listdir(dst))}


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, gated: bool, xet: bool = False):
        self.repo_id = repo_id
        self.gated = gated
        self.xet = xet
        self.commits: Dict[str, Dict[str, bytes]] = {}
        self.refs: Dict[str, str] = {}


class FakeHub:
    """The server. `add_repo` / `add_commit` fill it; `faults` are applied to matching requests in order;
    `log` holds (method, path, range, status, body bytes sent, started and ended: time.monotonic()) for every
    request."""

    def __init__(self, tokens=(TOKEN,), rate: Optional[float] = None):
        self.repos: Dict[str, Repo] = {}
        self.tokens = set(tokens)
        self.rate = rate  # bytes per second per response body (a throttled link, for benchmarks/bench_hub.py)
        self.faults: List[Dict[str, Any]] = []
        self.log: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server: Optional[ThreadingHTTPServer] = None
        self.thread: Optional[threading.Thread] = None
        self.bridge: Optional[ThreadingHTTPServer] = None
        self.blobs: Dict[str, bytes] = {}  # Xet repos' LFS files by sha256 (the bridge's content)
        self._secret = os.urandom(16)

    # ------------------------------------------------------------ content

    def add_repo(self, repo_id: str, files: Dict[str, bytes], *, gated: bool = False, branch: str = "main",
                 xet: bool = False) -> str:
        self.repos[repo_id] = Repo(repo_id, gated, xet)
        return self.add_commit(repo_id, files, branch=branch)

    def add_commit(self, repo_id: str, files: Dict[str, bytes], *, branch: str = "main") -> str:
        repo = self.repos[repo_id]
        digest = hashlib.sha1(repo_id.encode() + str(len(repo.commits)).encode())
        for name in sorted(files):
            digest.update(name.encode() + hashlib.sha256(files[name]).digest())
        commit = digest.hexdigest()
        repo.commits[commit] = dict(files)
        repo.refs[branch] = commit
        return commit

    def tag(self, repo_id: str, tag: str, commit: str) -> None:
        self.repos[repo_id].refs[tag] = commit

    def sign(self, digest: str, ranged: str) -> str:
        """The bridge URL's signature of a blob and a Range header."""
        return hashlib.sha256(self._secret + digest.encode() + b"|" + ranged.encode()).hexdigest()[:32]

    # ------------------------------------------------------------ accounting

    def reset(self) -> None:
        with self.lock:
            self.log.clear()
            self.faults.clear()

    def requests(self, method: Optional[str] = None, contains: str = "") -> List[Dict[str, Any]]:
        with self.lock:
            return [r for r in self.log if (method is None or r["method"] == method) and contains in r["path"]]

    def sent(self, contains: str = "") -> int:
        """Body bytes sent by requests whose path contains `contains`."""
        return sum(r["sent"] for r in self.requests(contains=contains))

    # ------------------------------------------------------------ lifetime

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        # The Xet bridge on a port of its own: another origin than the endpoint, as the Hub's bridge is another
        # host, so that clients treat its redirects as leaving the Hub (no Authorization header sent there).
        self.bridge = _Server(("127.0.0.1", 0), Handler)
        self.bridge.daemon_threads = True
        threading.Thread(target=self.bridge.serve_forever, daemon=True).start()
        return self

    @property
    def bridge_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.bridge.server_address[1]}"

    def stop(self) -> None:
        for server in (self.server, self.bridge):
            if server is not None:
                server.shutdown()
                server.server_close()
        self.server = self.bridge = None

    # ------------------------------------------------------------ faults

    def take_fault(self, method: str, path: str, ranged: bool) -> Optional[Dict[str, Any]]:
        with self.lock:
            for fault in self.faults:
                if fault.get("times", 1) <= 0:
                    continue
                if fault.get("method", method) != method or fault.get("contains", "") not in path:
                    continue
                if fault.get("ranged") is not None and fault["ranged"] != ranged:
                    continue
                fault["times"] = fault.get("times", 1) - 1
                return fault
        return None


class _Server(ThreadingHTTPServer):
    """A client that drops a connection mid-body (a fetch stopped by an error elsewhere) is not the server's error:
    no traceback on stderr, where a test reads the command's own output."""

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_GET(self) -> None:
        self._serve("GET")

    # ------------------------------------------------------------ responses

    def _send(self, status: int, headers: Dict[str, str], body: bytes, method: str, record: Dict[str, Any],
              fault: Optional[Dict[str, Any]] = None) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        record["status"] = status
        if method == "HEAD":
            return
        if fault and fault.get("kind") == "drop":
            cut = min(len(body), fault.get("after", len(body) // 2))
            self.wfile.write(body[:cut])
            self.wfile.flush()
            record["sent"] += cut
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault and fault.get("kind") == "slow":
            step = max(1, len(body) // 4)
            for i in range(0, len(body), step):
                time.sleep(fault.get("delay", 0.2))
                self.wfile.write(body[i:i + step])
                self.wfile.flush()
                record["sent"] += len(body[i:i + step])
            return
        if self.fake.rate:
            # Each chunk waits for its time on the link before it is written, none after the last, so that a
            # request's "ended" is when its last byte went out, not a pause later.
            started, step = time.monotonic(), 64 << 10
            for i in range(0, len(body), step):
                ahead = started + record["sent"] / self.fake.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                self.wfile.write(body[i:i + step])
                record["sent"] += len(body[i:i + step])
            return
        self.wfile.write(body)
        record["sent"] += len(body)

    def _error(self, status: int, code: Optional[str], message: str, method: str, record: Dict[str, Any],
               extra: Optional[Dict[str, str]] = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, headers, json.dumps({"error": message}).encode(), method, record)

    def _json(self, data: Any, method: str, record: Dict[str, Any]) -> None:
        self._send(200, {"Content-Type": "application/json"}, json.dumps(data).encode(), method, record)

    def _authorized(self, repo: Repo) -> bool:
        if not repo.gated:
            return True
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[len("Bearer "):] in self.fake.tokens

    # ------------------------------------------------------------ routing

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        record = {"method": method, "path": url.path, "range": self.headers.get("Range"), "status": None, "sent": 0,
                  "authorized": "Authorization" in self.headers, "started": time.monotonic(), "ended": None}
        with self.fake.lock:
            self.fake.log.append(record)
        try:
            self._route(method, url, record)
        finally:
            record["ended"] = time.monotonic()  # the response sent (or the connection dropped)

    def _route(self, method: str, url, record: Dict[str, Any]) -> None:
        path = url.path
        fault = self.fake.take_fault(method, path, self.headers.get("Range") is not None)
        if fault and fault.get("kind") == "status":
            extra = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
            self._error(fault["code"], None, f"injected {fault['code']}", method, record, extra)
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            self._model_info(m.group(1), unquote(m.group(2) or "main"), method, record)
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m:
            recursive = parse_qs(url.query).get("recursive", ["False"])[0].lower() == "true"
            self._tree(m.group(1), unquote(m.group(2)), unquote(m.group(3) or ""), recursive, method, record)
            return
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            self._resolve(m.group(1), unquote(m.group(2)), unquote(m.group(3)), method, record, fault)
            return
        m = re.fullmatch(r"/xet-bridge/([0-9a-f]{64})", path)
        if m:
            query = parse_qs(url.query)
            self._bridge(m.group(1), query.get("range", [""])[0], query.get("sig", [""])[0], method, record, fault)
            return
        self._error(404, None, "Not Found", method, record)

    def _lookup(self, repo_id: str, revision: str, method: str, record: Dict[str, Any]):
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", method, record)
            return None, None
        commit = revision if revision in repo.commits else repo.refs.get(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + revision, method, record)
            return repo, None
        return repo, commit

    def _model_info(self, repo_id: str, revision: str, method: str, record: Dict[str, Any]) -> None:
        repo, commit = self._lookup(repo_id, revision, method, record)
        if commit is None:
            return
        files = repo.commits[commit]
        self._json({"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "gated": repo.gated and "auto",
                    "siblings": [{"rfilename": name} for name in sorted(files)]}, method, record)

    def _tree(self, repo_id: str, revision: str, folder: str, recursive: bool, method: str,
              record: Dict[str, Any]) -> None:
        repo, commit = self._lookup(repo_id, revision, method, record)
        if commit is None:
            return
        prefix = folder + "/" if folder else ""
        entries, folders = [], set()
        for name, data in sorted(repo.commits[commit].items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            for i in range(rest.count("/")):
                folders.add(prefix + "/".join(rest.split("/")[:i + 1]))
            entry = {"type": "file", "path": name, "size": len(data), "oid": _git_blob_id(data)}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
                    for f in sorted(folders)]
        self._json(entries, method, record)

    def _resolve(self, repo_id: str, revision: str, filename: str, method: str, record: Dict[str, Any],
                 fault: Optional[Dict[str, Any]]) -> None:
        repo, commit = self._lookup(repo_id, revision, method, record)
        if commit is None:
            return
        if not self._authorized(repo):
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it and "
                                          f"be authenticated to access it. Please log in.", method, record)
            return
        data = repo.commits[commit].get(filename)
        if data is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist on \"{revision}\"", method, record,
                        {"X-Repo-Commit": commit})
            return
        lfs = filename.endswith(LFS_SUFFIXES)
        etag = hashlib.sha256(data).hexdigest() if lfs else _git_blob_id(data)
        if fault and fault.get("kind") == "etag":
            etag = "0" * 64
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if lfs:
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(data))
        if lfs and repo.xet:  # a redirect to the bridge, signed for this request's Range
            ranged = self.headers.get("Range", "")
            self.fake.blobs[hashlib.sha256(data).hexdigest()] = data
            headers.update({"X-Xet-Hash": hashlib.sha256(data).hexdigest(), "Location":
                            f"{self.fake.bridge_endpoint}/xet-bridge/{hashlib.sha256(data).hexdigest()}?range={quote(ranged)}"
                            f"&sig={self.fake.sign(hashlib.sha256(data).hexdigest(), ranged)}"})
            self._send(302, headers, b"", method, record)
            return
        self._bytes(data, headers, method, record, fault)

    def _bytes(self, data: bytes, headers: Dict[str, str], method: str, record: Dict[str, Any],
               fault: Optional[Dict[str, Any]]) -> None:
        """`data`, or the part the request's Range asks for (206), unless a no_range fault makes it answer 200."""
        ranged = self.headers.get("Range")
        if ranged and not (fault and fault.get("kind") == "no_range"):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged.strip())
            if not m or int(m.group(1)) >= len(data):
                self._error(416, None, "Range Not Satisfiable", method, record,
                            {"Content-Range": f"bytes */{len(data)}"})
                return
            begin = int(m.group(1))
            end = min(len(data) - 1, int(m.group(2))) if m.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {begin}-{end}/{len(data)}"
            self._send(206, headers, data[begin:end + 1], method, record, fault)
            return
        self._send(200, headers, data, method, record, fault)

    def _bridge(self, digest: str, signed_range: str, signature: str, method: str, record: Dict[str, Any],
                fault: Optional[Dict[str, Any]]) -> None:
        """The Xet bridge: the bytes of a blob, for the Range its URL was signed for and no other."""
        data = self.fake.blobs.get(digest)
        ranged = self.headers.get("Range", "")
        if data is None or signature != self.fake.sign(digest, signed_range):
            self._error(403, None, "Forbidden: bad signature", method, record)
            return
        if ranged != signed_range:
            self._error(403, None, f"Forbidden: the URL was signed for range {signed_range!r}, not {ranged!r}",
                        method, record)
            return
        headers = {"ETag": f'"{digest}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        self._bytes(data, headers, method, record, fault)


def set_offline(monkeypatch, offline: bool) -> None:
    """HF_HUB_OFFLINE on or off, in the environment and in what huggingface_hub read of it at import."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


