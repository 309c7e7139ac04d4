"""One file from a generic http(s) URL: resumed, retried, checked, then renamed into place.

Why not huggingface_hub here: it downloads only files it can address as ORG/NAME at a revision on
a Hub endpoint (it asks that endpoint for the commit and the file's ETag and keys its cache by
them). A checkpoint on any other server (a GitHub release, a lab's web server, a bucket) is not
addressable through it, so this module keeps the three guarantees such a download needs, and
nothing more:

- resume: bytes go to a hidden ``.NAME.part`` beside the final name; after an interruption the
  next attempt asks for the rest with ``Range`` + ``If-Range`` (so a file that changed upstream
  is restarted, not spliced), and a ``.part.json`` says which URL the partial belongs to;
- sha256 checked before the final name: the ``.part`` is renamed only when its sha256 equals the
  pinned one (without a pin, the computed one is printed to pin);
- no credentials across hosts: this path sends none at all. HF_TOKEN is for the Hub, whose URLs
  go through huggingface_hub (which scopes the token to its endpoint); a URL with user:password
  is refused by the spec.

HTTP goes through the standard library's urllib: a few request headers are all this needs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..atomic import fsync_dir, write_atomic
from ..errors import Llama2binError
from ..progress import Progress
from .record import DEFAULT_CHUNK, sha256_file
from .spec import DEFAULT_RETRY, RetryPolicy

log = logging.getLogger(__name__)

Warn = Callable[[str], None]


def log_warning(message: str) -> None:
    """The default `Warn`: a warning the CLI shows as `llama2bin: warning: ...`."""
    log.warning(message)


@dataclass
class Downloaded:
    sha256: str
    size: int
    reused: bool = False  # the final file was already there with the right checksum
    revision: str | None = None  # the commit a Hub URL resolved to (hub downloads only)
    attempts: int = 1


class _Transient(Exception):
    """A failure worth retrying; `progressed` if the partial file grew during the attempt."""

    def __init__(self, reason: str, progressed: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.progressed = progressed
        self.retry_after = retry_after


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


def reason(e: BaseException) -> str:
    """One line saying what went wrong, without the exception's class noise."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    if isinstance(e, OSError) and getattr(e, "strerror", None):
        return str(e.strerror)
    text = str(e) or type(e).__name__
    return text.splitlines()[0]


class _Download:
    def __init__(self, url: str, final_path: str, expected: str | None, retry: RetryPolicy, quiet: bool,
                 chunk_size: int, warn: Warn):
        self.url, self.final_path, self.expected = url, final_path, expected
        self.retry, self.quiet, self.chunk_size, self.warn = retry, quiet, chunk_size, warn
        folder, name = os.path.split(final_path)
        self.part = os.path.join(folder, f".{name}.part")
        self.meta = self.part + ".json"  # which URL the partial belongs to, and its validator for If-Range
        self.best = 0  # the largest the partial file has been: progress means growing past it

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

    def run(self) -> Downloaded:
        os.makedirs(os.path.dirname(os.path.abspath(self.final_path)), exist_ok=True)
        self.best = self._part_size()
        failures = attempts = 0
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
                self.retry.sleep(delay)
        self._verify_and_commit(sha)
        return Downloaded(sha, size, attempts=attempts)

    def _attempt(self) -> tuple[str, int]:
        have, validator = self._resumable()
        headers = {"User-Agent": f"llama2bin/{__version__}", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            if validator:
                headers["If-Range"] = validator
        try:
            resp = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=self.retry.timeout)
        except urllib.error.HTTPError as e:
            with e:
                return self._http_error(e, have)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            cause = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(cause, ssl.SSLCertVerificationError):  # retrying cannot help
                raise Llama2binError(f"{self.url}: TLS certificate problem: {reason(cause)}") from None
            raise _Transient(f"cannot connect: {reason(e)}") from None
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
            raise Llama2binError(
                f"{self.url}: HTTP {code} {e.reason}: no credentials are sent to this host (HF_TOKEN goes only to "
                "the Hugging Face Hub, for huggingface.co/ORG/NAME/resolve/... URLs and repo: sources)"
            )
        if code == 404:
            raise Llama2binError(f"{self.url}: HTTP 404 Not Found: check the URL (and the revision or file name in it)")
        raise Llama2binError(f"{self.url}: HTTP {code} {e.reason}")

    def _receive(self, resp: http.client.HTTPResponse, have: int) -> tuple[str, int]:
        h = hashlib.sha256()
        if resp.status == 206 and have:
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != have:
                self._discard_part()
                raise _Transient(f"the server resumed at byte {start}, not {have}; starting over")
            mode = "ab"
            with open(self.part, "rb") as f:  # the hash covers the bytes we already have
                while chunk := f.read(self.chunk_size):
                    h.update(chunk)
        elif resp.status == 200:
            if have:
                if not self.quiet:
                    log.info(f"{self.url}: the server ignored the Range request; downloading from the start")
            have = 0
            mode = "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            etag = resp.headers.get("ETag")
            validator = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")
            write_atomic(self.meta, json.dumps({"url": self.url, "validator": validator}) + "\n")
        else:
            raise Llama2binError(f"{self.url}: unexpected HTTP {resp.status} {resp.reason}")

        size = have
        progress = Progress(total or 0, f"{os.path.basename(self.final_path)}: download", quiet=self.quiet or total is None)
        progress.update(have)
        try:
            with open(self.part, mode) as f:
                while True:
                    try:  # read1: write what has arrived at once, so an interruption loses nothing received
                        chunk = resp.read1(self.chunk_size)
                    except (http.client.HTTPException, OSError) as e:
                        raise self._lost(f"connection lost after {size} of {total or '?'} bytes: {reason(e)}", size) from None
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

    def _lost(self, why: str, size: int) -> _Transient:
        progressed = size > self.best
        self.best = max(self.best, size)
        return _Transient(why, progressed=progressed)

    def _verify_and_commit(self, actual: str) -> None:
        if self.expected is not None and actual != self.expected:
            self._discard_part()
            raise Llama2binError(
                f"{self.url}: checksum mismatch: expected sha256 {self.expected}, got {actual}; "
                "the download was deleted (re-run to download it again; if the file changed upstream, pin the new sha256)"
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
    retry: RetryPolicy = DEFAULT_RETRY,
    quiet: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    warn: Warn = log_warning,
) -> Downloaded:
    """Download a generic `url` to `final_path`: streamed to a hidden .part beside it, resumed
    after an interruption, retried on transient failures, verified, then renamed."""
    return _Download(url, final_path, sha256, retry, quiet, chunk_size, warn).run()
