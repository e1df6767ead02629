"""HTTP for postsvd.hub: byte-range reads of Hub files through huggingface_hub's session, and every
huggingface_hub / network error turned into one HubError line (never a token).

The requests go through huggingface_hub (`get_session`, `build_hf_headers`, `http_stream_backoff`), so they
honour what it honours: HF_ENDPOINT, the token from HF_TOKEN or the stored login, HF_HUB_OFFLINE, proxies
and its retries of 429 (with Retry-After) and 5xx. What it does not retry is added here: a connection that
drops in the middle of a body is resumed from the last byte received, a bounded number of times.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import HubError

#: Tries of one range after the connection dropped in its body (each resumes where the last stopped).
BODY_RETRIES = 5
#: Seconds before the first resume; doubled each time, at most 8.
BODY_BACKOFF_S = 0.5
#: Read size of a body.
STREAM_CHUNK = 1 << 20


class RangeNotHonoured(Exception):
    """The server answered a range request with the whole file (200)."""


class FileChanged(Exception):
    """The server's ETag / commit / size of a file differs from the one recorded with its header."""


@dataclass(frozen=True)
class Remote:
    """One file of a repo at a commit, as recorded when the entry was prepared."""

    repo_id: str
    commit: str
    filename: str
    size: int
    etag: Optional[str]  # the sha256 of an LFS file, the git blob id otherwise

    @property
    def url(self) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, self.filename, revision=self.commit)


def _normalized_etag(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    return value.strip().removeprefix("W/").strip('"')


def _check_identity(remote: Remote, response) -> None:
    """The responses of the request (redirects included) describe the file recorded in `remote`."""
    from huggingface_hub import constants

    for r in [*response.history, response]:
        commit = r.headers.get(constants.HUGGINGFACE_HEADER_X_REPO_COMMIT)
        if commit is not None and commit != remote.commit:
            raise FileChanged(f"the server now serves commit {commit[:12]}")
        linked = r.headers.get(constants.HUGGINGFACE_HEADER_X_LINKED_ETAG)
        etag = _normalized_etag(linked) if linked is not None else (
            _normalized_etag(r.headers.get("ETag")) if "/resolve/" in str(r.url) else None)
        if etag is not None and remote.etag is not None and etag != remote.etag:
            raise FileChanged(f"its ETag is now {etag[:16]}, was {remote.etag[:16]}")
        linked_size = r.headers.get(constants.HUGGINGFACE_HEADER_X_LINKED_SIZE)
        if linked_size is not None and linked_size.isdigit() and int(linked_size) != remote.size:
            raise FileChanged(f"its size is now {linked_size} bytes, was {remote.size}")


_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*")


def read_range(remote: Remote, begin: int, end: int, sink: Callable[[int, bytes], None]) -> int:
    """Streams bytes [begin, end) of `remote` into sink(offset, data); returns the bytes received.

    Raises RangeNotHonoured (200 instead of 206), FileChanged, or a huggingface_hub / httpx2 error that
    describe_error turns into a line. A body cut short is resumed from its last byte (BODY_RETRIES times)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff

    received = 0
    offset = begin
    failures = 0
    while offset < end:
        headers = build_hf_headers()
        headers["Range"] = f"bytes={offset}-{end - 1}"
        headers["Accept-Encoding"] = "identity"
        try:
            # huggingface_hub retries 429 (Retry-After) and 5xx; network errors, before or in the body, are
            # retried below (its own retry of those cannot resume a body: retry_on_exceptions=()).
            with http_stream_backoff("GET", remote.url, headers=headers, retry_on_exceptions=(),
                                     timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
                hf_raise_for_status(response)
                _check_identity(remote, response)
                if response.status_code == 200:
                    raise RangeNotHonoured()
                match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
                if response.status_code != 206 or not match:
                    raise HubError(f"{remote.repo_id}: {remote.filename}: the server answered a range request with "
                                   f"HTTP {response.status_code} and Content-Range "
                                   f"{response.headers.get('Content-Range')!r}")
                first, last, total = int(match.group(1)), int(match.group(2)), match.group(3)
                if total != "*" and int(total) != remote.size:
                    raise FileChanged(f"its size is now {total} bytes, was {remote.size}")
                if first != offset or last != end - 1:
                    raise HubError(f"{remote.repo_id}: {remote.filename}: asked for bytes {offset}-{end - 1}, the "
                                   f"server sent {first}-{last}")
                for data in response.iter_bytes(STREAM_CHUNK):
                    if offset + len(data) > end:
                        raise HubError(f"{remote.repo_id}: {remote.filename}: the server sent more than the "
                                       f"{end - begin} bytes asked for")
                    sink(offset, data)
                    offset += len(data)
                    received += len(data)
                if offset < end:
                    raise httpx2.RemoteProtocolError("body ended early")
        except (httpx2.TransportError, httpx2.StreamError):  # dropped mid-body (or before)
            failures += 1
            if failures > BODY_RETRIES:
                raise
            time.sleep(min(8.0, BODY_BACKOFF_S * 2 ** (failures - 1)))
    return received


def describe_error(error: BaseException, *, what: str, repo_id: str, revision: Optional[str],
                   filename: Optional[str] = None) -> Optional[HubError]:
    """One line for a huggingface_hub or network error about `repo_id`; None when it is not one of those."""
    import httpx2
    from huggingface_hub import constants, errors as hf_errors
    from huggingface_hub.utils import get_token

    where = f"{what}: {repo_id}" + (f"@{revision}" if revision else "")
    if filename:
        where += f": {filename}"
    token = get_token()
    login = ("the token in use (HF_TOKEN or the stored login) has no access to it; request access on the "
             "repo's page or use another token") if token else (
        "no token is set: log in with `hf auth login` or set HF_TOKEN")
    endpoint = constants.ENDPOINT
    if isinstance(error, hf_errors.GatedRepoError):
        return HubError(f"{where}: the repo is gated; {login}")
    if isinstance(error, hf_errors.RepositoryNotFoundError):
        return HubError(f"{where}: repo '{repo_id}' not found on {endpoint} (if it is private or gated: {login})")
    if isinstance(error, hf_errors.RevisionNotFoundError):
        return HubError(f"{where}: revision '{revision or 'main'}' not found in repo '{repo_id}' (a branch, tag or commit "
                        f"hash)")
    if isinstance(error, hf_errors.RemoteEntryNotFoundError):
        return HubError(f"{where}: the repo has no file '{filename}'")
    if isinstance(error, (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError)):
        if constants.HF_HUB_OFFLINE:
            return HubError(f"{where}: HF_HUB_OFFLINE is set and this is not in the cache; unset HF_HUB_OFFLINE "
                            f"to fetch it")
        return HubError(f"{where}: cannot reach {endpoint} and this is not in the cache ({_first_line(error)})")
    if isinstance(error, hf_errors.HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        if status == 429:
            return HubError(f"{where}: {endpoint} kept answering 429 Too Many Requests after the retries; "
                            f"wait and run again")
        if status is not None and status >= 500:
            return HubError(f"{where}: {endpoint} kept failing with HTTP {status} after the retries; run again "
                            f"later")
        if status in (401, 403):
            return HubError(f"{where}: access denied (HTTP {status}); {login}")
        return HubError(f"{where}: {_first_line(error)}")
    if isinstance(error, httpx2.TransportError):
        return HubError(f"{where}: cannot reach {endpoint}: {type(error).__name__}: {_first_line(error)} "
                        f"(set HF_HUB_OFFLINE=1 to run from the cache only)")
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
