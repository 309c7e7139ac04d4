"""The fetch step: obtain a model's checkpoint as its FetchSpec says, then write DEST/SOURCE.json
last and atomically: what was asked for, the resolved commit, and the sha256 and size of every
file, with no absolute path unless one was given and no timestamp, so the record is
byte-identical when the same thing is fetched again. No credential is ever recorded: tokens are
read by huggingface_hub from the environment (HF_TOKEN) or its login cache, never by this code.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ..atomic import write_atomic
from ..errors import Llama2binError
from ..progress import Progress
from . import hub
from .record import FileRecord, checkpoint_files, hash_files, open_regular, previous_record, sha256_file
from .spec import DEFAULT_RETRY, SOURCE_JSON, FetchSpec, RetryPolicy, check_model_name, default_dest
from .url import DEFAULT_CHUNK, Downloaded, Warn, download_url, log_warning

log = logging.getLogger(__name__)


@dataclass
class FetchResult:
    checkpoint: str  # the file or directory to convert, as a path usable from the working directory
    source_json: str
    record: dict[str, Any] = field(default_factory=dict)
    reused: bool = False

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.record.get("files", []))


def _note(message: str, quiet: bool) -> None:
    if not quiet:
        log.info(message)


def _fetch_path(spec: FetchSpec, quiet: bool, desc: str) -> list[FileRecord]:
    path = spec.path or ""
    if not os.path.lexists(path):
        raise Llama2binError(f"{path}: no such file or directory (the model's path: source)")
    if os.path.isdir(path):
        entries = checkpoint_files(path)
        if not entries:
            raise Llama2binError(f"{path}: the directory holds no files")
    else:
        os.close(open_regular(path))  # a FIFO, device or symlink loop is refused here, unread
        entries = [(os.path.basename(path), path)]
    return hash_files(entries, desc, quiet)


def _reuse(final: str, known: str | None, model: str, quiet: bool) -> Downloaded | None:
    """The file already in DEST, if its sha256 is the one pinned (or recorded last time)."""
    if not known or not os.path.isfile(final):
        return None
    progress = Progress(os.path.getsize(final), f"{model}: sha256", quiet=quiet)
    try:
        actual = sha256_file(final, progress)
    finally:
        progress.close()
    if actual != known:
        return None
    _note(f"{final}: already present with sha256 {actual[:16]}…, not downloaded again", quiet)
    return Downloaded(actual, os.path.getsize(final), reused=True)


def _hub_url(spec: FetchSpec, final: str, cache: str | None, offline: bool, endpoint: str | None,
             quiet: bool) -> Downloaded:
    """A huggingface.co /resolve/ URL: downloaded by huggingface_hub into its cache, checked, then
    linked to DEST/<filename>."""
    hub_file = spec.hub_file(endpoint)
    assert hub_file is not None
    where = f"{hub_file.repo}@{hub_file.revision}: {hub_file.filename}"
    pointer = hub.hub_download(hub_file, cache, offline, endpoint, quiet)
    commit = hub.commit_of(pointer, len(hub_file.filename.split("/")), where)
    real = os.path.realpath(pointer)
    [rec] = hash_files([(hub_file.filename, real)], f"{os.path.basename(final)}: sha256", quiet)
    hub.check_blob(hub_file.filename, real, rec, where)
    if spec.sha256 is not None and rec.sha256 != spec.sha256:
        raise Llama2binError(
            f"{spec.url}: checksum mismatch: expected sha256 {spec.sha256}, got {rec.sha256} (file {real} in the "
            "Hugging Face cache); nothing was written: if the file changed upstream, pin the new sha256 or a commit"
        )
    hub.place_file(real, final, quiet)
    return Downloaded(rec.sha256, rec.size, revision=commit)


def _fetch_url(spec: FetchSpec, dest: str, previous: dict[str, Any] | None, record: dict[str, Any], *, model: str,
               retry: RetryPolicy, quiet: bool, cache: str | None, offline: bool, endpoint: str | None,
               chunk_size: int, warn: Warn) -> tuple[list[FileRecord], bool]:
    url = spec.url or ""
    name = spec.target_filename()
    final = os.path.join(dest, name)
    record["url"] = url
    same = previous is not None and previous.get("url") == url and previous.get("checkpoint") == name
    prior_files = previous.get("files") if same and previous else None
    known = spec.sha256 or (prior_files[0].get("sha256") if isinstance(prior_files, list) and prior_files
                            and isinstance(prior_files[0], dict) else None)
    got = _reuse(final, known, model, quiet)
    if got is not None and same and previous:
        got.revision = previous.get("revision") if isinstance(previous.get("revision"), str) else None
    if got is None and spec.hub_file(endpoint) is not None:
        got = _hub_url(spec, final, cache, offline, endpoint, quiet)
    elif got is None:
        got = download_url(url, final, sha256=spec.sha256, retry=retry, quiet=quiet, chunk_size=chunk_size, warn=warn)
    if spec.sha256 is None:
        warn(f"{url}: no sha256 pinned; the file has sha256 {got.sha256}: pin it (sha256: {got.sha256})")
    if got.revision:
        record["revision"] = got.revision
    record["sha256_pinned"] = spec.sha256 is not None
    return [FileRecord(name, got.sha256, got.size)], got.reused


def _fetch_repo(spec: FetchSpec, dest: str, record: dict[str, Any], *, model: str, quiet: bool, cache: str | None,
                offline: bool, endpoint: str | None, warn: Warn) -> list[FileRecord]:
    where = f"{spec.repo}@{spec.revision}"
    folder = hub.snapshot(spec, cache, offline, endpoint, quiet)
    commit = hub.commit_of(folder, 0, where)
    if spec.revision != commit:
        warn(f"{where}: revision {spec.revision!r} is not a commit hash; it resolved to {commit}: "
             f"pin it (revision: {commit})")
    chosen = hub.select(hub.snapshot_files(folder), spec, where, offline)
    entries = [(rel, os.path.realpath(os.path.join(folder, *rel.split("/")))) for rel in chosen]
    for rel, real in entries:
        if not os.path.isfile(real):
            raise Llama2binError(f"{where}: {rel}: dangling link in the cached snapshot: fetch again with network")
    files = hash_files(entries, f"{model}: sha256", quiet)
    for (rel, real), rec in zip(entries, files, strict=True):
        hub.check_blob(rel, real, rec, where)
    hub.place_snapshot(entries, dest, quiet)
    record.update({"repo": spec.repo, "revision": spec.revision, "commit": commit})
    if spec.file:
        record["file"] = spec.file
    if spec.files:
        record["files_patterns"] = list(spec.files)
    return files


def fetch(
    model: str,
    spec: FetchSpec,
    dest: str | None = None,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    quiet: bool = False,
    hf_cache_dir: str | None = None,
    hf_endpoint: str | None = None,
    offline: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    warn: Warn = log_warning,
) -> FetchResult:
    """Obtain `model`'s checkpoint as `spec` says, into `dest` (default resources/checkpoints/MODEL),
    and write DEST/SOURCE.json last. `offline=None` follows HF_HUB_OFFLINE; `hf_endpoint` (default
    HF_ENDPOINT, else huggingface.co) is where Hub sources come from."""
    check_model_name(model)
    spec.validate(f"model {model}")
    dest = os.path.normpath(dest or default_dest(model))
    source_json = os.path.join(dest, SOURCE_JSON)
    cache = hf_cache_dir or os.environ.get("HF_HUB_CACHE") or None
    endpoint = hf_endpoint or os.environ.get("HF_ENDPOINT") or None  # huggingface_hub reads it only at import
    is_offline = hub.hf_offline() if offline is None else offline
    record: dict[str, Any] = {"model": model, "kind": spec.kind}
    reused = False
    if spec.kind == "path":
        files = _fetch_path(spec, quiet, f"{model}: sha256")
        record["path"] = spec.path
        path = spec.path or ""
        # relative to SOURCE.json's folder, so the record does not depend on where the project lives
        record["checkpoint"] = path if os.path.isabs(path) else os.path.relpath(path, dest).replace(os.sep, "/")
    elif spec.kind == "url":
        files, reused = _fetch_url(spec, dest, previous_record(source_json), record, model=model, retry=retry,
                                   quiet=quiet, cache=cache, offline=is_offline, endpoint=endpoint,
                                   chunk_size=chunk_size, warn=warn)
    else:
        files = _fetch_repo(spec, dest, record, model=model, quiet=quiet, cache=cache, offline=is_offline,
                            endpoint=endpoint, warn=warn)
    record.setdefault("checkpoint", spec.recorded_checkpoint())
    record["files"] = [f.to_json() for f in files]
    os.makedirs(dest, exist_ok=True)
    write_atomic(source_json, json.dumps(record, indent=1) + "\n")
    return FetchResult(checkpoint=spec.checkpoint_path(dest), source_json=source_json, record=record, reused=reused)
