"""Download or locate a model's checkpoint, reproducibly, and record what was obtained.

Three kinds of source (one per model):

- ``path``: a local file or directory, used in place; only its files' sha256/size are recorded.
- ``url`` (+ ``sha256``): one file, streamed to a hidden ``.NAME.part`` beside its final name,
  resumed with an HTTP Range request after an interruption, retried on transient failures,
  checked against the pinned sha256 and only then renamed into place.
- ``repo`` + ``revision`` (+ ``files`` patterns): a Hugging Face Hub snapshot through
  huggingface_hub, which looks in the local HF cache first (so ``HF_HUB_OFFLINE=1`` re-runs work);
  the snapshot's files are hard-linked (or, across file systems, copied) into ``DEST/snapshot/``.

Every fetch ends by writing ``DEST/SOURCE.json`` atomically: what was asked for, the resolved
revision, and the sha256 and size of every file, with no absolute path unless one was given and no
timestamp, so the record is byte-identical when the same thing is fetched again.

HTTP goes through the standard library's urllib: a handful of request headers and a redirect hook
are all this needs, and ``requests`` is not a declared dependency of llama2bin (it is only present
as a dependency of other packages). Credentials come only from the environment (``HF_TOKEN``) or
huggingface_hub's login cache; they are sent only to the Hugging Face hosts, over https, never
across a redirect to another host, and never printed or recorded.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .atomic import fsync_dir, write_atomic
from .errors import Llama2binError
from .progress import Progress

SOURCE_JSON = "SOURCE.json"
SNAPSHOT_DIR = "snapshot"  # DEST/snapshot/: a repo source's files at the pinned commit
DEFAULT_CHUNK = 1 << 20
# Hosts that may receive HF_TOKEN as a bearer header. Exact names: a redirect to a CDN host
# (signed URL) must not carry it.
HF_TOKEN_HOSTS: tuple[str, ...] = ("huggingface.co", "hf.co")

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
KINDS = ("path", "url", "repo")

Warn = Callable[[str], None]


def _stderr_warn(message: str) -> None:
    print(f"llama2bin: warning: {message}", file=sys.stderr, flush=True)


def _note(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# ---- what to fetch --------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures (connection errors, timeouts, HTTP 5xx and 429) are retried with
    exponential back-off: base_delay * 2**k seconds, at most max_delay, at most `retries` times in
    a row (an attempt that added bytes to the partial file starts a new count)."""

    retries: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    timeout: float = 60.0  # seconds, for every socket operation

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        backoff = self.base_delay * (2 ** max(failures - 1, 0))
        if retry_after is not None:
            backoff = max(backoff, retry_after)
        return min(backoff, self.max_delay)


@dataclass(frozen=True)
class FetchSpec:
    """One model's source: exactly one of path, url (+sha256, filename) or repo (+revision, files)."""

    kind: str
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    filename: str | None = None
    repo: str | None = None
    revision: str | None = None
    files: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, name: str, entry: Mapping[str, Any]) -> FetchSpec:
        """The fetch part of a config entry `models: {NAME: {...}}` (other keys are not ours)."""
        where = f"model {name}"
        kinds = [k for k in KINDS if k in entry]
        if "demo" in entry:
            raise Llama2binError(f"{where}: demo checkpoints are generated, not fetched")
        if len(kinds) != 1:
            raise Llama2binError(f"{where}: give exactly one of path, url (+sha256) or repo (+revision); got {kinds or 'none'}")
        kind = kinds[0]
        if kind == "path":
            spec = cls("path", path=_config_str(entry, "path", where))
        elif kind == "url":
            spec = cls(
                "url",
                url=_config_str(entry, "url", where),
                sha256=_config_str(entry, "sha256", where, optional=True),
                filename=_config_str(entry, "filename", where, optional=True),
            )
        else:
            files = entry.get("files")
            if isinstance(files, str):
                files = [files]
            if files is not None and (not isinstance(files, list) or not all(isinstance(f, str) and f for f in files)):
                raise Llama2binError(f"{where}: files must be a list of glob patterns")
            spec = cls(
                "repo",
                repo=_config_str(entry, "repo", where),
                revision=_config_str(entry, "revision", where),
                files=tuple(files) if files is not None else None,
            )
        spec.validate(where)
        return spec

    def validate(self, where: str = "source") -> None:
        if self.kind not in KINDS:
            raise Llama2binError(f"{where}: unknown source kind {self.kind!r}")
        stray = [
            k
            for k, allowed in (
                ("path", "path"), ("url", "url"), ("sha256", "url"), ("filename", "url"),
                ("repo", "repo"), ("revision", "repo"), ("files", "repo"),
            )
            if getattr(self, k) is not None and allowed != self.kind
        ]
        if stray:
            raise Llama2binError(f"{where}: {', '.join(stray)} do(es) not go with a {self.kind} source")
        if self.kind == "path" and not self.path:
            raise Llama2binError(f"{where}: path is empty")
        if self.kind == "url":
            _check_url(self.url or "", where)
            if self.sha256 is not None and not SHA256_RE.fullmatch(self.sha256):
                raise Llama2binError(f"{where}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
            _check_filename(self.target_filename(), where)
        if self.kind == "repo":
            if not self.repo or not REPO_RE.fullmatch(self.repo):
                raise Llama2binError(f"{where}: repo must look like ORG/NAME, got {self.repo!r}")
            if not self.revision:
                raise Llama2binError(f"{where}: a repo source needs a revision (a 40-hex commit hash pins it)")
            if self.files is not None and (not self.files or not all(self.files)):
                raise Llama2binError(f"{where}: files must be a non-empty list of glob patterns")

    def target_filename(self) -> str:
        """A url source's file name in DEST: --filename, else the last segment of the URL path."""
        if self.filename:
            return self.filename
        segment = urllib.parse.unquote(urllib.parse.urlsplit(self.url or "").path.rsplit("/", 1)[-1])
        if not segment:
            raise Llama2binError(f"{self.url}: the URL names no file; give a filename")
        return segment

    def checkpoint_path(self, dest: str) -> str:
        """What the converter reads once fetched (known before fetching, for a pipeline's DAG):
        path -> the path as given; url -> DEST/<filename>; repo -> DEST/snapshot."""
        if self.kind == "path":
            return self.path or ""
        if self.kind == "url":
            return os.path.join(dest, self.target_filename())
        return os.path.join(dest, SNAPSHOT_DIR)

    def cli_args(self) -> list[str]:
        """The `llama2bin fetch` flags naming this source (without --model/--dest)."""
        if self.kind == "path":
            return ["--path", self.path or ""]
        if self.kind == "url":
            args = ["--url", self.url or ""]
            if self.sha256:
                args += ["--sha256", self.sha256]
            if self.filename:
                args += ["--filename", self.filename]
            return args
        args = ["--repo", self.repo or "", "--revision", self.revision or ""]
        if self.files:
            args += ["--files", *self.files]
        return args


def _config_str(entry: Mapping[str, Any], key: str, where: str, optional: bool = False) -> str | None:
    value = entry.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise Llama2binError(f"{where}: {key} must be a non-empty string")
    return value


def _check_url(url: str, where: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Llama2binError(f"{where}: {url!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        # A credential in a URL ends up in config files, logs and SOURCE.json.
        raise Llama2binError(f"{where}: the URL carries credentials; give them through HF_TOKEN, never in the URL")


def _check_filename(name: str, where: str) -> None:
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or name == SOURCE_JSON:
        raise Llama2binError(f"{where}: {name!r} cannot be a checkpoint file name (no '/', no leading '.', not {SOURCE_JSON})")


def check_model_name(name: str) -> None:
    if not MODEL_NAME_RE.fullmatch(name):
        raise Llama2binError(f"model name {name!r}: use letters, digits, '_' and '-' (it becomes a folder name)")


def default_dest(model: str) -> str:
    return os.path.join("resources", "checkpoints", model)


# ---- hashing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the checkpoint root, '/'-separated
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


def sha256_file(path: str, progress: Progress | None = None, chunk_size: int = DEFAULT_CHUNK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return h.hexdigest()


def _git_blob_sha1(path: str, size: int) -> str:
    """Git's object id for a file (what the Hub names a non-LFS blob after)."""
    h = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(DEFAULT_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _hash_files(entries: list[tuple[str, str]], desc: str, quiet: bool) -> list[FileRecord]:
    """entries: (relative name, real path). One progress bar over all bytes."""
    sizes = [os.path.getsize(real) for _, real in entries]
    progress = Progress(sum(sizes), desc, quiet=quiet)
    try:
        return [FileRecord(rel, sha256_file(real, progress), size) for (rel, real), size in zip(entries, sizes, strict=True)]
    finally:
        progress.close()


# ---- url: one file over HTTP(S) -------------------------------------------------------------


@dataclass
class Downloaded:
    sha256: str
    size: int
    reused: bool = False  # the final file was already there with the right checksum
    revision: str | None = None  # X-Repo-Commit from huggingface.co: the commit a branch URL resolved to
    attempts: int = 1


class _Transient(Exception):
    """A failure worth retrying; `progressed` if the partial file grew during the attempt."""

    def __init__(self, reason: str, progressed: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.progressed = progressed
        self.retry_after = retry_after


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects, keep what the Hub says on its own redirect response (the resolved commit,
    the LFS sha256), and drop the bearer token when the redirect leaves the original host."""

    def __init__(self, seen: dict[str, str]):
        super().__init__()
        self.seen = seen

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        for name in ("X-Repo-Commit", "X-Linked-Etag", "X-Linked-Size"):
            value = headers.get(name)
            if value and name.lower() not in self.seen:
                self.seen[name.lower()] = value.strip()
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(new.full_url).hostname != urllib.parse.urlsplit(req.full_url).hostname:
            new.remove_header("Authorization")
        return new


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hf_token() -> str | None:
    token = os.environ.get("HF_TOKEN") or None
    if token is None:
        try:  # the `hf auth login` cache; optional dependency
            from huggingface_hub import get_token

            token = get_token() or None
        except Exception:  # no huggingface_hub, unreadable cache: no token
            token = None
    return token


def _token_for(url: str, token_hosts: Iterable[str]) -> str | None:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if host not in tuple(token_hosts):
        return None
    if parts.scheme != "https" and not _is_loopback(host):
        return None  # never a bearer token in clear text over the network
    return _hf_token()


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes START-END/TOTAL' or 'bytes */TOTAL' -> (START, TOTAL); None where absent."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own back-off


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    if isinstance(e, TimeoutError | OSError) and getattr(e, "strerror", None):
        return str(e.strerror)
    text = str(e) or type(e).__name__
    return text.splitlines()[0] if text else type(e).__name__


class _Download:
    def __init__(
        self,
        url: str,
        final_path: str,
        expected_sha256: str | None,
        retry: RetryPolicy,
        quiet: bool,
        token_hosts: Iterable[str],
        chunk_size: int,
        warn: Warn,
    ):
        self.url = url
        self.final_path = final_path
        folder, name = os.path.split(final_path)
        self.part = os.path.join(folder, f".{name}.part")
        self.meta = self.part + ".json"  # which URL the partial belongs to, and its validator for If-Range
        self.expected = expected_sha256
        self.retry = retry
        self.quiet = quiet
        self.chunk_size = chunk_size
        self.warn = warn
        self.seen: dict[str, str] = {}
        self.opener = urllib.request.build_opener(_RedirectHandler(self.seen))
        self.token = _token_for(url, token_hosts)
        self.best = 0  # the largest the partial file has been: progress means growing past it

    # -- partial file bookkeeping --

    def _part_size(self) -> int:
        try:
            return os.path.getsize(self.part)
        except FileNotFoundError:
            return 0

    def _discard_part(self) -> None:
        for p in (self.part, self.meta):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        self.best = 0

    def _resumable(self) -> tuple[int, str | None]:
        """Bytes already downloaded that can be trusted to belong to this URL, and their validator."""
        size = self._part_size()
        if not size:
            return 0, None
        try:
            with open(self.meta) as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = None
        if not isinstance(info, dict) or info.get("url") != self.url:
            self.warn(f"{self.part}: discarding a partial download of unknown origin")
            self._discard_part()
            return 0, None
        validator = info.get("validator")
        return size, validator if isinstance(validator, str) else None

    # -- the download loop --

    def run(self) -> Downloaded:
        os.makedirs(os.path.dirname(os.path.abspath(self.final_path)), exist_ok=True)
        self.best = self._part_size()
        failures = 0
        attempts = 0
        while True:
            attempts += 1
            try:
                sha, size = self._attempt()
                break
            except _Transient as e:
                # An attempt that added bytes starts a fresh count, so a long download over a flaky
                # link gets through, while a server that never makes progress is given up on.
                failures = 1 if e.progressed else failures + 1
                if failures > self.retry.retries:
                    kept = self._part_size()
                    tail = f"; {kept} bytes kept in {self.part} for the next run to resume" if kept else ""
                    tries = f"{attempts} attempt" + ("s" if attempts > 1 else "")
                    raise Llama2binError(f"{self.url}: giving up after {tries}: {e}{tail}") from None
                delay = self.retry.delay(failures, e.retry_after)
                self.warn(f"{self.url}: {e}; retry {failures} of {self.retry.retries} in {delay:.2f} s")
                time.sleep(delay)
        self._verify_and_commit(sha)
        revision = self.seen.get("x-repo-commit")
        return Downloaded(sha, size, revision=revision if revision and COMMIT_RE.fullmatch(revision) else None,
                          attempts=attempts)

    def _request(self, have: int, validator: str | None) -> urllib.request.Request:
        headers = {"User-Agent": f"llama2bin/{__version__}", "Accept-Encoding": "identity"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if have:
            headers["Range"] = f"bytes={have}-"
            if validator:
                headers["If-Range"] = validator
        return urllib.request.Request(self.url, headers=headers)

    def _attempt(self) -> tuple[str, int]:
        have, validator = self._resumable()
        try:
            resp = self.opener.open(self._request(have, validator), timeout=self.retry.timeout)
        except urllib.error.HTTPError as e:
            with e:
                return self._http_error(e, have)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, ssl.SSLCertVerificationError):  # retrying cannot help
                raise Llama2binError(f"{self.url}: TLS certificate problem: {_reason(reason)}") from None
            raise _Transient(f"cannot connect: {_reason(e)}") from None
        with resp:
            return self._receive(resp, have)

    def _http_error(self, e: urllib.error.HTTPError, have: int) -> tuple[str, int]:
        code = e.code
        if code == 416 and have:
            _, total = _parse_content_range(e.headers.get("Content-Range"))
            if total == have:  # the partial is already whole (interrupted just before the rename)
                return sha256_file(self.part), have
            self._discard_part()
            raise _Transient("the server refused to resume the partial download; starting over")
        if code == 429 or 500 <= code <= 599:
            raise _Transient(f"HTTP {code} {e.reason}", retry_after=_retry_after(e.headers))
        if code in (401, 403):
            if self.token:
                hint = ("HF_TOKEN was sent and refused: check that it is valid and that its account has accepted "
                        "the repo's license")
            else:
                hint = ("for a gated or private Hugging Face repo, accept its license on huggingface.co and set HF_TOKEN "
                        "(or log in with `hf auth login`); credentials are read only from the environment or that login cache")
            raise Llama2binError(f"{self.url}: HTTP {code} {e.reason}: {hint}")
        if code == 404:
            raise Llama2binError(f"{self.url}: HTTP 404 Not Found: check the URL (and the revision or file name in it)")
        raise Llama2binError(f"{self.url}: HTTP {code} {e.reason}")

    def _receive(self, resp: http.client.HTTPResponse, have: int) -> tuple[str, int]:
        status = resp.status
        for name in ("X-Repo-Commit", "X-Linked-Etag"):  # when the Hub answered without a redirect
            value = resp.headers.get(name)
            if value and name.lower() not in self.seen:
                self.seen[name.lower()] = value.strip()
        h = hashlib.sha256()
        if status == 206 and have:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != have:
                self._discard_part()
                raise _Transient(f"the server resumed at byte {start}, not {have}; starting over")
            mode = "ab"
            with open(self.part, "rb") as f:  # the hash covers the bytes we already have
                while chunk := f.read(self.chunk_size):
                    h.update(chunk)
        elif status == 200:
            if have:
                _note(f"{self.url}: the server ignored the Range request; downloading from the start", self.quiet)
            have = 0
            mode = "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            etag = resp.headers.get("ETag")
            validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
            write_atomic(self.meta, json.dumps({"url": self.url, "validator": validator}) + "\n")
        else:
            raise Llama2binError(f"{self.url}: unexpected HTTP {status} {resp.reason}")

        size = have
        desc = os.path.basename(self.final_path)
        progress = Progress(total or 0, f"{desc}: download", quiet=self.quiet or total is None)
        progress.update(have)
        try:
            with open(self.part, mode) as f:
                while True:
                    try:  # read1: write what has arrived at once, so an interruption loses nothing received
                        chunk = resp.read1(self.chunk_size)
                    except (http.client.HTTPException, OSError) as e:
                        raise self._lost(f"connection lost after {size} of {total or '?'} bytes: {_reason(e)}", size) from None
                    if not chunk:
                        break
                    try:
                        f.write(chunk)
                    except OSError as e:
                        raise Llama2binError(f"{self.part}: cannot write: {e.strerror}") from None
                    h.update(chunk)
                    size += len(chunk)
                    progress.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        finally:
            progress.close()
        if total is not None and size != total:
            raise self._lost(f"the server closed the connection after {size} of {total} bytes", size)
        return h.hexdigest(), size

    def _lost(self, reason: str, size: int) -> _Transient:
        progressed = size > self.best
        self.best = max(self.best, size)
        return _Transient(reason, progressed=progressed)

    def _verify_and_commit(self, actual: str) -> None:
        server_sha = (self.seen.get("x-linked-etag") or "").strip('"').lower()
        if self.expected is not None and actual != self.expected:
            self._discard_part()
            raise Llama2binError(
                f"{self.url}: checksum mismatch: expected sha256 {self.expected}, got {actual}; "
                "the download was deleted (re-run to download it again; if the file changed upstream, pin the new sha256)"
            )
        if SHA256_RE.fullmatch(server_sha) and actual != server_sha:
            self._discard_part()
            raise Llama2binError(
                f"{self.url}: checksum mismatch: the server announced sha256 {server_sha}, got {actual}; the download was deleted"
            )
        os.replace(self.part, self.final_path)
        fsync_dir(os.path.dirname(os.path.abspath(self.final_path)))
        try:
            os.unlink(self.meta)
        except FileNotFoundError:
            pass



def download_url(
    url: str,
    final_path: str,
    *,
    sha256: str | None = None,
    retry: RetryPolicy = RetryPolicy(),
    quiet: bool = False,
    token_hosts: Iterable[str] = HF_TOKEN_HOSTS,
    chunk_size: int = DEFAULT_CHUNK,
    warn: Warn = _stderr_warn,
) -> Downloaded:
    """Download `url` to `final_path`: streamed to a hidden .part beside it, resumed after an
    interruption, retried on transient failures, verified, then renamed. Without `sha256` a
    warning prints the computed one to pin."""
    _check_url(url, "url")
    result = _Download(url, final_path, sha256, retry, quiet, token_hosts, chunk_size, warn).run()
    if sha256 is None:
        warn(f"{url}: no sha256 pinned; the downloaded file has sha256 {result.sha256}: pin it (sha256: {result.sha256})")
    return result


# ---- repo: a Hugging Face Hub snapshot ------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hf_offline() -> bool:
    """Read at every call (huggingface_hub reads HF_HUB_OFFLINE once, at import)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _hf_snapshot(
    spec: FetchSpec, cache_dir: str | None, offline: bool, endpoint: str | None, quiet: bool
) -> str:
    try:
        import huggingface_hub
        from huggingface_hub import snapshot_download
    except ImportError:
        raise Llama2binError("repo: sources need huggingface_hub (pip install 'llama2bin[pipeline]')") from None
    from huggingface_hub import errors as hf_errors

    where = f"{spec.repo}@{spec.revision}"
    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or None
    cache_label = cache or "the default Hugging Face cache"
    if quiet:
        huggingface_hub.utils.disable_progress_bars()
    try:
        return snapshot_download(
            spec.repo,
            revision=spec.revision,
            allow_patterns=list(spec.files) if spec.files else None,
            cache_dir=cache,
            local_files_only=offline,
            endpoint=endpoint,
        )
    except getattr(hf_errors, "IncompleteSnapshotError", ()) as e:  # huggingface_hub >= 1.x
        missing = re.search(r"(\d+ file\(s\) are missing \([^)]*\))", str(e))
        raise Llama2binError(
            f"{where}: the cached snapshot in {cache_label} is incomplete"
            f"{': ' + missing.group(1) if missing else ''}; run once with network (HF_HUB_OFFLINE=0) to complete it"
        ) from None
    except hf_errors.LocalEntryNotFoundError:
        if offline:
            raise Llama2binError(
                f"{where}: not in the Hugging Face cache ({cache_label}) and HF_HUB_OFFLINE=1: "
                "run once with network, or set HF_HUB_OFFLINE=0"
            ) from None
        raise Llama2binError(
            f"{where}: cannot reach the Hugging Face Hub and the snapshot is not in the cache ({cache_label}): "
            "check the network (or a proxy), then run again"
        ) from None
    except hf_errors.GatedRepoError:
        raise Llama2binError(
            f"{spec.repo}: gated repo: accept its license on huggingface.co, then set HF_TOKEN (or log in with `hf auth login`)"
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise Llama2binError(f"{where}: revision {spec.revision!r} not found in {spec.repo}") from None
    except hf_errors.RepositoryNotFoundError:
        raise Llama2binError(
            f"{spec.repo}: repository not found (or private: set HF_TOKEN to an account with access)"
        ) from None
    except hf_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = ": set HF_TOKEN (or log in with `hf auth login`)" if status in (401, 403) else ""
        raise Llama2binError(f"{where}: Hugging Face Hub error {status or ''}{hint}: {_reason(e)}") from None
    except ValueError as e:  # HFValidationError: malformed repo id or revision
        raise Llama2binError(f"{where}: {_reason(e)}") from None


def _snapshot_files(folder: str) -> list[str]:
    """Every file under a snapshot folder, relative, '/'-separated, sorted."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def _select(files: list[str], patterns: tuple[str, ...] | None, where: str, offline: bool) -> list[str]:
    if not patterns:
        return files
    from huggingface_hub.utils import filter_repo_objects  # the Hub's own pattern semantics

    chosen = set()
    for pattern in patterns:
        hits = list(filter_repo_objects(files, allow_patterns=[pattern]))
        if not hits:
            hint = " (not in the cached snapshot: run once with network, or set HF_HUB_OFFLINE=0)" if offline else ""
            raise Llama2binError(f"{where}: files pattern {pattern!r} matches no file of the snapshot{hint}")
        chosen.update(hits)
    return sorted(chosen)


def _check_blob(rel: str, real: str, record: FileRecord, where: str) -> None:
    """huggingface_hub names a cached blob after its content (sha256 for LFS files, the git object
    id otherwise): recompute it, so a damaged cache is caught, not converted."""
    if os.path.basename(os.path.dirname(real)) != "blobs":
        return  # not a cache blob (a symlink-less cache): nothing to compare with
    blob = os.path.basename(real)
    if SHA256_RE.fullmatch(blob):
        actual = record.sha256
    elif COMMIT_RE.fullmatch(blob):
        actual = _git_blob_sha1(real, record.size)
    else:
        return
    if actual != blob:
        raise Llama2binError(
            f"{where}: {rel}: the cached blob {real} is damaged (content hash {actual}, expected {blob}): "
            "delete it and fetch again"
        )


def _materialize(entries: list[tuple[str, str]], dest: str, quiet: bool) -> None:
    """DEST/snapshot/ = the selected files: hard links into the cache (no copy, and the result
    survives the cache being pruned), copies when the cache is on another file system. Built
    under a hidden temporary name and renamed, so DEST/snapshot is never half-populated."""
    os.makedirs(dest, exist_ok=True)
    final = os.path.join(dest, SNAPSHOT_DIR)
    tmp = tempfile.mkdtemp(prefix=f".{SNAPSHOT_DIR}.", suffix=".part", dir=dest)
    old = None
    try:
        copied = 0
        for rel, real in entries:
            target = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                os.link(real, target)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                    raise
                shutil.copyfile(real, target)
                with open(target, "rb") as copy:  # durable before the directory is renamed into place
                    os.fsync(copy.fileno())
                copied += 1
        if copied:
            _note(f"{final}: copied {copied} file(s) (the Hugging Face cache is on another file system)", quiet)
        if os.path.lexists(final):
            old = tempfile.mkdtemp(prefix=f".{SNAPSHOT_DIR}.", suffix=".old", dir=dest)
            os.rename(final, os.path.join(old, SNAPSHOT_DIR))
        os.rename(tmp, final)
        fsync_dir(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(final):
            os.rename(os.path.join(old, SNAPSHOT_DIR), final)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ---- the fetch step -------------------------------------------------------------------------


@dataclass
class FetchResult:
    checkpoint: str  # the file or directory to convert, as a path usable from the working directory
    source_json: str
    record: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.record.get("files", []))


def _recorded_checkpoint(spec: FetchSpec, dest: str) -> str:
    """SOURCE.json names the checkpoint relative to its own folder (so the record does not depend
    on where the project lives); a path: source stays absolute only when it was given absolute."""
    if spec.kind == "url":
        return spec.target_filename()
    if spec.kind == "repo":
        return SNAPSHOT_DIR
    path = spec.path or ""
    return path if os.path.isabs(path) else os.path.relpath(path, dest).replace(os.sep, "/")


def read_source_json(source_json: str) -> dict[str, Any]:
    try:
        with open(source_json) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise Llama2binError(f"{source_json}: not found (run `llama2bin fetch` first)") from None
    except ValueError as e:
        raise Llama2binError(f"{source_json}: not valid JSON: {e}") from None
    if not isinstance(record, dict) or not isinstance(record.get("checkpoint"), str):
        raise Llama2binError(f"{source_json}: no checkpoint field: not written by llama2bin fetch")
    return record


def checkpoint_from_source_json(source_json: str) -> str:
    """The checkpoint a SOURCE.json describes, as a path usable from the working directory."""
    checkpoint = read_source_json(source_json)["checkpoint"]
    if os.path.isabs(checkpoint):
        return checkpoint
    return os.path.normpath(os.path.join(os.path.dirname(source_json), checkpoint))


def _previous_record(source_json: str) -> dict[str, Any] | None:
    try:
        with open(source_json) as f:
            record = json.load(f)
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


def _fetch_path(spec: FetchSpec, quiet: bool, desc: str) -> tuple[dict[str, Any], list[FileRecord]]:
    path = spec.path or ""
    if not os.path.exists(path):
        raise Llama2binError(f"{path}: no such file or directory (the model's path: source)")
    if os.path.isfile(path):
        entries = [(os.path.basename(path), path)]
    elif os.path.isdir(path):
        # Hidden entries (.git, .cache/huggingface, editor files) are not part of a checkpoint.
        entries = []
        for root, dirs, names in os.walk(path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                full = os.path.join(root, name)
                if not name.startswith(".") and os.path.isfile(full):
                    entries.append((os.path.relpath(full, path).replace(os.sep, "/"), full))
        entries.sort()
        if not entries:
            raise Llama2binError(f"{path}: the directory holds no files")
    else:
        raise Llama2binError(f"{path}: neither a file nor a directory")
    return {"path": path}, _hash_files(entries, desc, quiet)


def fetch(
    model: str,
    spec: FetchSpec,
    dest: str | None = None,
    *,
    retry: RetryPolicy = RetryPolicy(),
    quiet: bool = False,
    hf_cache_dir: str | None = None,
    hf_endpoint: str | None = None,
    offline: bool | None = None,
    token_hosts: Iterable[str] = HF_TOKEN_HOSTS,
    chunk_size: int = DEFAULT_CHUNK,
    warn: Warn = _stderr_warn,
) -> FetchResult:
    """Obtain `model`'s checkpoint as `spec` says, into `dest` (default resources/checkpoints/MODEL),
    and write DEST/SOURCE.json last. `offline=None` follows HF_HUB_OFFLINE."""
    check_model_name(model)
    spec.validate(f"model {model}")
    dest = os.path.normpath(dest or default_dest(model))
    source_json = os.path.join(dest, SOURCE_JSON)
    previous = _previous_record(source_json)
    checkpoint = spec.checkpoint_path(dest)
    record: dict[str, Any] = {"model": model, "kind": spec.kind}
    reused = False

    if spec.kind == "path":
        fields, files = _fetch_path(spec, quiet, f"{model}: sha256")
        record.update(fields)

    elif spec.kind == "url":
        url = spec.url or ""
        name = spec.target_filename()
        final = os.path.join(dest, name)
        record["url"] = url
        same_source = previous is not None and previous.get("url") == url and previous.get("checkpoint") == name
        previous_files = previous.get("files") if same_source and previous else None
        known = spec.sha256 or (previous_files[0].get("sha256") if isinstance(previous_files, list) and previous_files else None)
        got: Downloaded | None = None
        if known and os.path.isfile(final):
            progress = Progress(os.path.getsize(final), f"{model}: sha256", quiet=quiet)
            try:
                actual = sha256_file(final, progress)
            finally:
                progress.close()
            if actual == known:
                got = Downloaded(actual, os.path.getsize(final), reused=True,
                                 revision=previous.get("revision") if same_source and previous else None)
                reused = True
                _note(f"{final}: already present with sha256 {actual[:16]}…, not downloaded again", quiet)
                if spec.sha256 is None:
                    warn(f"{url}: no sha256 pinned; the file has sha256 {actual}: pin it (sha256: {actual})")
        if got is None:
            got = download_url(url, final, sha256=spec.sha256, retry=retry, quiet=quiet, token_hosts=token_hosts,
                               chunk_size=chunk_size, warn=warn)
        if got.revision:
            record["revision"] = got.revision
        record["sha256_pinned"] = spec.sha256 is not None
        files = [FileRecord(name, got.sha256, got.size)]

    else:
        is_offline = hf_offline() if offline is None else offline
        where = f"{spec.repo}@{spec.revision}"
        folder = _hf_snapshot(spec, hf_cache_dir, is_offline, hf_endpoint, quiet)
        commit = os.path.basename(os.path.normpath(folder))
        if not COMMIT_RE.fullmatch(commit):
            raise Llama2binError(f"{where}: huggingface_hub returned {folder}, not a snapshots/<commit> folder")
        if spec.revision != commit:
            warn(f"{where}: revision {spec.revision!r} is not a commit hash; it resolved to {commit}: "
                 f"pin it (revision: {commit})")
        chosen = _select(_snapshot_files(folder), spec.files, where, is_offline)
        entries = [(rel, os.path.realpath(os.path.join(folder, *rel.split("/")))) for rel in chosen]
        for rel, real in entries:
            if not os.path.isfile(real):
                raise Llama2binError(f"{where}: {rel}: dangling link in the cached snapshot: fetch again with network")
        files = _hash_files(entries, f"{model}: sha256", quiet)
        for (rel, real), rec in zip(entries, files, strict=True):
            _check_blob(rel, real, rec, where)
        _materialize(entries, dest, quiet)
        record.update({"repo": spec.repo, "revision": spec.revision, "commit": commit})
        if spec.files:
            record["files_patterns"] = list(spec.files)

    record["checkpoint"] = _recorded_checkpoint(spec, dest)
    record["files"] = [f.to_json() for f in files]
    os.makedirs(dest, exist_ok=True)
    write_atomic(source_json, json.dumps(record, indent=1) + "\n")
    return FetchResult(checkpoint=checkpoint, source_json=source_json, record=record, reused=reused)
