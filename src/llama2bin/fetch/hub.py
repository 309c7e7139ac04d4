"""Hugging Face Hub sources through huggingface_hub: snapshots (repo:) and single files (a
huggingface.co /resolve/ URL). The library does the network part: the local cache first (so
``HF_HUB_OFFLINE=1`` re-runs work), ETag and commit resolution, retries of a dropped transfer
within the run (a Range request from its last whole chunk; a partial file does not survive the
process, by the library's design), and the token (HF_TOKEN or the login cache), which it sends
only to its endpoint and drops on a redirect to another host (the CDN). What stays here is what llama2bin promises on top: every
cached blob is re-hashed against the name the Hub gave it, and the files appear in DEST only
complete, as hard links into the cache (copies across file systems), renamed into place.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from ..atomic import fsync_dir
from ..errors import Llama2binError
from .record import FileRecord, git_blob_sha1
from .spec import COMMIT_RE, SHA256_RE, SNAPSHOT_DIR, FetchSpec, HubFile
from .url import reason

log = logging.getLogger(__name__)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hf_offline() -> bool:
    """Read at every call (huggingface_hub reads HF_HUB_OFFLINE once, at import)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _library() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise Llama2binError("Hub sources need huggingface_hub (pip install 'llama2bin[pipeline]')") from None
    return huggingface_hub


def _call_hub(where: str, repo: str, revision: str, cache: str | None, offline: bool, quiet: bool,
              call: Callable[[], str]) -> str:
    """Run one huggingface_hub download and turn its errors into one line that says what to do."""
    hf = _library()
    from huggingface_hub import errors as hf_errors

    cache_label = cache or "the default Hugging Face cache"
    if quiet:  # the library's bars and its retry notices ("Retrying in 2s") are progress output
        hf.utils.disable_progress_bars()
        hf.utils.logging.set_verbosity_error()
    try:
        return call()
    except getattr(hf_errors, "IncompleteSnapshotError", ()) as e:
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
            f"{where}: cannot reach the Hugging Face Hub and it is not in the cache ({cache_label}): "
            "check the network (or a proxy), then run again"
        ) from None
    except hf_errors.GatedRepoError:
        raise Llama2binError(
            f"{repo}: gated repo: accept its license on huggingface.co, then set HF_TOKEN (or log in with `hf auth login`)"
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise Llama2binError(f"{where}: revision {revision!r} not found in {repo}") from None
    except hf_errors.EntryNotFoundError:
        raise Llama2binError(f"{where}: no such file in {repo} at {revision}") from None
    except hf_errors.RepositoryNotFoundError:
        raise Llama2binError(f"{repo}: repository not found (or private: set HF_TOKEN to an account with access)") from None
    except hf_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = ": set HF_TOKEN (or log in with `hf auth login`)" if status in (401, 403) else ""
        raise Llama2binError(f"{where}: Hugging Face Hub error {status or ''}{hint}: {reason(e)}") from None
    except ValueError as e:  # HFValidationError: malformed repo id, revision or file name
        raise Llama2binError(f"{where}: {reason(e)}") from None
    except (OSError, hf_errors.RevisionResolutionError, hf_errors.XetDownloadError) as e:
        # the library's own consistency checks (size mismatch), disk full, a failed Xet transfer
        raise Llama2binError(f"{where}: {reason(e)}") from None


def snapshot(spec: FetchSpec, cache: str | None, offline: bool, endpoint: str | None, quiet: bool) -> str:
    """The cached snapshots/<commit> folder holding the repo source's files."""
    from huggingface_hub import snapshot_download

    where = f"{spec.repo}@{spec.revision}"
    return _call_hub(where, spec.repo or "", spec.revision or "", cache, offline, quiet, lambda: snapshot_download(
        spec.repo, revision=spec.revision, allow_patterns=spec.allow_patterns(), cache_dir=cache,
        local_files_only=offline, endpoint=endpoint,
    ))


def hub_download(hub: HubFile, cache: str | None, offline: bool, endpoint: str | None, quiet: bool) -> str:
    """The cached snapshots/<commit>/<file> pointer of one Hub file."""
    from huggingface_hub import hf_hub_download

    where = f"{hub.repo}@{hub.revision}: {hub.filename}"
    return _call_hub(where, hub.repo, hub.revision, cache, offline, quiet, lambda: hf_hub_download(
        hub.repo, hub.filename, repo_type=hub.repo_type, revision=hub.revision, cache_dir=cache,
        local_files_only=offline, endpoint=endpoint,
    ))


def commit_of(pointer: str, depth: int, where: str) -> str:
    """The commit of a cached snapshots/<commit>/... path, `depth` levels above `pointer`."""
    folder = os.path.normpath(pointer)
    for _ in range(depth):
        folder = os.path.dirname(folder)
    commit = os.path.basename(folder)
    if not COMMIT_RE.fullmatch(commit) or os.path.basename(os.path.dirname(folder)) != "snapshots":
        raise Llama2binError(f"{where}: huggingface_hub returned {pointer}, not a path under snapshots/<commit>")
    return commit


def snapshot_files(folder: str) -> list[str]:
    """Every file under a cached snapshot folder, relative, '/'-separated, sorted. The cache is
    the library's own layout (real directories, symlinks to blobs): not following directory
    symlinks is enough to make the walk finite."""
    found = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs.sort()
        found += [os.path.relpath(os.path.join(root, n), folder).replace(os.sep, "/") for n in names]
    return sorted(found)


def select(files: list[str], spec: FetchSpec, where: str, offline: bool) -> list[str]:
    """The snapshot files the spec's patterns ask for; each pattern must match something."""
    patterns = spec.allow_patterns()
    if not patterns:
        return files
    from huggingface_hub.utils import filter_repo_objects  # the Hub's own pattern semantics

    chosen = set()
    for pattern in patterns:
        hits = list(filter_repo_objects(files, allow_patterns=[pattern]))
        if not hits:
            hint = " (not in the cached snapshot: run once with network, or set HF_HUB_OFFLINE=0)" if offline else ""
            what = "file" if pattern == spec.file else "files pattern"
            raise Llama2binError(f"{where}: {what} {pattern!r} matches no file of the snapshot{hint}")
        chosen.update(hits)
    return sorted(chosen)


def check_blob(rel: str, real: str, record: FileRecord, where: str) -> None:
    """huggingface_hub names a cached blob after its content (sha256 for LFS files, the git object
    id otherwise) and does not re-check it: recompute it, so a damaged or truncated download is
    caught before it reaches DEST, not converted."""
    if os.path.basename(os.path.dirname(real)) != "blobs":
        return  # not a cache blob (a symlink-less cache): nothing to compare with
    blob = os.path.basename(real)
    if SHA256_RE.fullmatch(blob):
        actual = record.sha256
    elif COMMIT_RE.fullmatch(blob):
        actual = git_blob_sha1(real, record.size)
    else:
        return
    if actual != blob:
        raise Llama2binError(
            f"{where}: {rel}: the cached blob {real} is damaged (content hash {actual}, expected {blob}): "
            "delete it and fetch again"
        )


def _link_or_copy(real: str, target: str) -> bool:
    """Hard link `target` to the cached blob (no copy, and it survives the cache being pruned);
    copy when the cache is on another file system. True if copied."""
    try:
        os.link(real, target)
        return False
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    shutil.copyfile(real, target)
    with open(target, "rb") as copy:  # durable before it is renamed into place
        os.fsync(copy.fileno())
    return True


def _note_copied(where: str, copied: int, quiet: bool) -> None:
    if copied and not quiet:
        log.info(f"{where}: copied {copied} file(s) (the Hugging Face cache is on another file system)")


def place_file(real: str, final: str, quiet: bool) -> None:
    """DEST/<name> = the verified cached blob, under a hidden name first, then renamed."""
    folder = os.path.dirname(os.path.abspath(final))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(final)}.link")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        _note_copied(final, int(_link_or_copy(real, tmp)), quiet)
        os.replace(tmp, final)
        fsync_dir(folder)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def place_snapshot(entries: list[tuple[str, str]], dest: str, quiet: bool) -> None:
    """DEST/snapshot/ = the selected files, built under a hidden temporary name and renamed, so
    DEST/snapshot is never half-populated (and a re-fetch replaces it rather than merging)."""
    os.makedirs(dest, exist_ok=True)
    final = os.path.join(dest, SNAPSHOT_DIR)
    tmp = tempfile.mkdtemp(prefix=f".{SNAPSHOT_DIR}.", suffix=".part", dir=dest)
    old = None
    try:
        copied = 0
        for rel, real in entries:
            target = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            copied += _link_or_copy(real, target)
        _note_copied(final, copied, quiet)
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
