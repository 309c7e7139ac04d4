"""What to fetch: the one place a model's source is validated (CLI, library and pipeline alike).

Three kinds of source, exactly one per model:

- ``path``: a local file or directory, used in place.
- ``url`` (+ ``sha256``, ``filename``): one file. A huggingface.co ``…/resolve/REVISION/FILE``
  URL is a file of a Hub repo and goes through huggingface_hub; any other host gets the thin
  resumable downloader of ``url.py``.
- ``repo`` + ``revision`` (+ ``file``, ``files``): a Hugging Face Hub snapshot. ``file`` names the
  one file that is the checkpoint (a llama2.c ``.pt`` or a ``.bin`` hosted in a repo); without it
  the snapshot directory is the checkpoint (Meta and HF layouts). ``files`` are extra glob
  patterns (e.g. ``tokenizer.model``); without ``file`` or ``files`` the whole repo is fetched.
"""

from __future__ import annotations

import os
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import Llama2binError

SOURCE_JSON = "SOURCE.json"
SNAPSHOT_DIR = "snapshot"  # DEST/snapshot/: a repo source's files at the pinned commit
TOKENIZER_MODEL = "tokenizer.model"
# The tokenizer files a checkpoint directory may hold, in the order they are taken (tokenizer.py
# detects the kind of each by its content).
TOKENIZER_FILES = (TOKENIZER_MODEL, "tokenizer.json")
# Hosts whose /resolve/ URLs are Hub files (huggingface_hub downloads them, and only it gets
# HF_TOKEN). A mirror set with HF_ENDPOINT counts too (see hub_file_of_url).
HF_HOSTS: tuple[str, ...] = ("huggingface.co", "www.huggingface.co", "hf.co")

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
GLOB_CHARS = re.compile(r"[*?\[\]]")
KINDS = ("path", "url", "repo")


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures (connection errors, timeouts, HTTP 5xx and 429) of a generic URL are
    retried with exponential back-off: base_delay * 2**k seconds, at most max_delay, at most
    `retries` times in a row (an attempt that added bytes to the partial file starts a new count).
    `sleep` waits between attempts; tests pass one that records the delays instead of waiting."""

    retries: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    timeout: float = 60.0  # seconds, for every socket operation
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        backoff = self.base_delay * (2 ** max(failures - 1, 0))
        if retry_after is not None:
            backoff = max(backoff, retry_after)
        return min(backoff, self.max_delay)


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repo at a revision, as a huggingface.co /resolve/ URL names it."""

    repo: str
    revision: str
    filename: str
    repo_type: str = "model"


def _endpoint_netloc(endpoint: str | None) -> str | None:
    return urllib.parse.urlsplit(endpoint).netloc.lower() if endpoint else None


def hub_file_of_url(url: str, endpoint: str | None = None) -> HubFile | None:
    """The Hub file a URL names, or None for a URL on another host. `endpoint` (default
    HF_ENDPOINT) is a mirror or test server whose URLs count as Hub URLs."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.lower()
    mirror = _endpoint_netloc(endpoint or os.environ.get("HF_ENDPOINT"))
    if (parts.hostname or "") not in HF_HOSTS and netloc != mirror:
        return None
    segments = parts.path.strip("/").split("/")
    repo_type = "model"
    if segments and segments[0] in ("datasets", "spaces"):
        repo_type, segments = segments[0][:-1], segments[1:]
    if len(segments) < 5 or segments[2] != "resolve":
        raise Llama2binError(
            f"{url}: not a Hub file download URL: use https://huggingface.co/ORG/NAME/resolve/REVISION/FILE "
            "(the /blob/ address is a web page)"
        )
    repo = f"{segments[0]}/{segments[1]}"
    revision = urllib.parse.unquote(segments[3])
    filename = urllib.parse.unquote("/".join(segments[4:]))
    if not REPO_RE.fullmatch(repo) or not revision or not _is_repo_relative(filename):
        raise Llama2binError(f"{url}: cannot read ORG/NAME, revision and file from this Hub URL")
    return HubFile(repo, revision, filename, repo_type)


def _is_repo_relative(name: str) -> bool:
    """A file path inside a repo: relative, '/'-separated, no '.', '..' or hidden components."""
    parts = name.split("/")
    return bool(name) and "\\" not in name and all(p and not p.startswith(".") for p in parts)


@dataclass(frozen=True)
class FetchSpec:
    """One model's source: exactly one of path, url (+sha256, filename) or repo (+revision, file,
    files)."""

    kind: str
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    filename: str | None = None
    repo: str | None = None
    revision: str | None = None
    file: str | None = None
    files: tuple[str, ...] | None = None

    @classmethod
    def from_config(cls, name: str, entry: Mapping[str, Any], single_file: bool | None = None) -> FetchSpec:
        """The fetch part of a config entry `models: {NAME: {...}}` (other keys are not ours).

        `single_file`: whether the entry's `source:` kind is one file (the source registry says,
        formats.source_registry.single_file); a repo source must then name it with `file:`, and a
        directory kind takes the snapshot instead. None: not known, not checked."""
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
                file=_config_str(entry, "file", where, optional=True),
                files=tuple(files) if files is not None else None,
            )
            source = entry.get("source")
            if single_file is True and spec.file is None:
                raise Llama2binError(
                    f"{where}: a {source} checkpoint is one file: name it inside the repo with file: (e.g. file: stories15M.pt)"
                )
            if single_file is False and spec.file is not None:
                raise Llama2binError(f"{where}: a {source} checkpoint is the snapshot directory: use files: patterns, not file:")
        spec.validate(where)
        return spec

    def validate(self, where: str = "source") -> None:
        if self.kind not in KINDS:
            raise Llama2binError(f"{where}: unknown source kind {self.kind!r}")
        owner = {"path": "path", "url": "url", "sha256": "url", "filename": "url",
                 "repo": "repo", "revision": "repo", "file": "repo", "files": "repo"}
        stray = [k for k, kind in owner.items() if getattr(self, k) is not None and kind != self.kind]
        if stray:
            raise Llama2binError(f"{where}: {stray[0]} goes with a {owner[stray[0]]} source, not a {self.kind} source")
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
            if self.file is not None and (not _is_repo_relative(self.file) or GLOB_CHARS.search(self.file)):
                raise Llama2binError(
                    f"{where}: file must be one file's path inside the repo (no glob characters, no '..' or hidden "
                    f"parts), got {self.file!r}"
                )
            if self.files is not None and (not self.files or not all(self.files)):
                raise Llama2binError(f"{where}: files must be a non-empty list of glob patterns")

    def hub_file(self, endpoint: str | None = None) -> HubFile | None:
        """For a url source on the Hub (or on `endpoint`), the repo file it names."""
        return hub_file_of_url(self.url or "", endpoint) if self.kind == "url" else None

    def allow_patterns(self) -> list[str] | None:
        """A repo source's patterns for the Hub: the checkpoint file and the extra files."""
        patterns = ([self.file] if self.file else []) + list(self.files or ())
        return patterns or None

    def target_filename(self) -> str:
        """A url source's file name in DEST: --filename, else the last segment of the URL path."""
        if self.filename:
            return self.filename
        segment = urllib.parse.unquote(urllib.parse.urlsplit(self.url or "").path.rsplit("/", 1)[-1])
        if not segment:
            raise Llama2binError(f"{self.url}: the URL names no file; give a filename")
        return segment

    def recorded_checkpoint(self) -> str | None:
        """The checkpoint relative to DEST for fetched sources (None for path: sources)."""
        if self.kind == "url":
            return self.target_filename()
        if self.kind == "repo":
            return f"{SNAPSHOT_DIR}/{self.file}" if self.file else SNAPSHOT_DIR
        return None

    def checkpoint_path(self, dest: str) -> str:
        """What the converter reads once fetched (known before fetching, for a pipeline's DAG):
        path -> the path as given; url -> DEST/<filename>; repo -> DEST/snapshot[/<file>]."""
        recorded = self.recorded_checkpoint()
        return os.path.join(dest, *recorded.split("/")) if recorded else self.path or ""

    def snapshot_tokenizer(self, dest: str) -> str | None:
        """DEST/snapshot/tokenizer.model (else tokenizer.json) when a repo source is sure to bring
        one, i.e. `files` names it literally (a pattern that matches nothing fails the fetch).
        Known before the fetch, so a pipeline can plan tokenizer.bin; a glob or the whole repo
        cannot promise it."""
        for name in TOKENIZER_FILES:
            if self.kind == "repo" and name in (self.files or ()):
                return os.path.join(dest, SNAPSHOT_DIR, name)
        return None

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
        if self.file:
            args += ["--file", self.file]
        if self.files:
            args += ["--files", *self.files]
        return args


def config_source(name: str, entry: Mapping[str, Any], single_file: bool | None = None) -> FetchSpec | None:
    """A pipeline config entry's checkpoint source, checked: exactly one of path, url, repo or
    demo; None for demo (generated by the pipeline, not fetched), else its FetchSpec. The
    pipeline calls this before its schema, so a wrong source gets one plain sentence."""
    given = [k for k in (*KINDS, "demo") if k in entry]
    if len(given) != 1:
        raise Llama2binError(
            f"model {name}: give exactly one of path, url (+sha256), repo (+revision) or demo; got {given or 'none'}"
        )
    return None if given == ["demo"] else FetchSpec.from_config(name, entry, single_file)


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
    hub_file_of_url(url)  # a huggingface.co URL that names no file is refused here, before any network


def _check_filename(name: str, where: str) -> None:
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or name == SOURCE_JSON:
        raise Llama2binError(f"{where}: {name!r} cannot be a checkpoint file name (no '/', no leading '.', not {SOURCE_JSON})")


def check_model_name(name: str) -> None:
    if not MODEL_NAME_RE.fullmatch(name):
        raise Llama2binError(f"model name {name!r}: use letters, digits, '_' and '-' (it becomes a folder name)")


def default_dest(model: str) -> str:
    return os.path.join("resources", "checkpoints", model)
