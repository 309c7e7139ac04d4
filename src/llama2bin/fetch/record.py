"""What was obtained: sha256 of regular files only, directory walks that cannot loop, SOURCE.json.

A checkpoint directory is someone else's: it may hold a FIFO (reading it blocks forever), a
symlink to /dev/zero (reading it never ends), or symlinks that form a loop (following them
never ends). Every file is therefore opened without blocking and checked to be a regular file
before a byte is read, and the walk follows a symlinked directory only if it is not one of the
directories it is already inside.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Any

from .. import safe_io
from ..errors import Llama2binError
from ..progress import Progress

DEFAULT_CHUNK = 1 << 20
MAX_SOURCE_JSON_BYTES = 64 << 20  # one line per file: far above any checkpoint's record


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the checkpoint root, '/'-separated
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


def open_regular(path: str) -> int:
    """A descriptor of `path`, refused at once unless it is a regular file (safe_io's check on
    the descriptor itself: a FIFO, a device or a symlink loop is never read)."""
    return safe_io.open_regular(path, "checkpoint file")


def sha256_file(path: str, progress: Progress | None = None, chunk_size: int = DEFAULT_CHUNK) -> str:
    h = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return h.hexdigest()


def git_blob_sha1(path: str, size: int) -> str:
    """Git's object id for a file (what the Hub names a non-LFS blob after)."""
    h = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with os.fdopen(open_regular(path), "rb") as f:
        while chunk := f.read(DEFAULT_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_files(entries: list[tuple[str, str]], desc: str, quiet: bool) -> list[FileRecord]:
    """entries: (relative name, real path). One progress bar over all bytes."""
    sizes = [os.stat(real).st_size for _, real in entries]
    progress = Progress(sum(sizes), desc, quiet=quiet)
    try:
        return [FileRecord(rel, sha256_file(real, progress), size) for (rel, real), size in zip(entries, sizes, strict=True)]
    finally:
        progress.close()


def checkpoint_files(root: str) -> list[tuple[str, str]]:
    """(relative '/'-separated name, path) of every regular file under directory `root`, sorted.
    Hidden entries (.git, .cache/huggingface, editor files) are not part of a checkpoint. A
    symlink to a file counts (a Hugging Face cache snapshot is made of them); a symlinked
    directory is followed unless it leads back into the walk (a loop), which is refused, as is
    anything that is not a regular file or directory (FIFO, device, socket, dangling link)."""
    found: list[tuple[str, str]] = []
    root_st = os.stat(root)
    _walk(root, "", [(root_st.st_dev, root_st.st_ino)], found)
    return sorted(found)


def _walk(folder: str, prefix: str, inside: list[tuple[int, int]], found: list[tuple[str, str]]) -> None:
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise Llama2binError(f"{folder}: cannot list: {e.strerror}") from None
    for name in names:
        if name.startswith("."):
            continue
        full = os.path.join(folder, name)
        rel = prefix + name
        try:
            st = os.stat(full)  # follows a symlink: what the converter would read
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Llama2binError(f"{full}: symlink loop") from None
            if e.errno == errno.ENOENT and os.path.islink(full):
                raise Llama2binError(f"{full}: dangling symlink (to {os.readlink(full)})") from None
            raise Llama2binError(f"{full}: cannot stat: {e.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in inside:
                raise Llama2binError(f"{full}: symlink loop (leads back to a directory that contains it)")
            _walk(full, rel + "/", [*inside, key], found)
        else:
            os.close(open_regular(full))  # a FIFO, device or socket is refused here, unread
            found.append((rel, full))


def read_source_json(source_json: str) -> dict[str, Any]:
    if not os.path.lexists(source_json):
        raise Llama2binError(f"{source_json}: not found (run `llama2bin fetch` first)")
    record = safe_io.load_json(source_json, "fetch record", MAX_SOURCE_JSON_BYTES)
    if not isinstance(record, dict) or not isinstance(record.get("checkpoint"), str):
        raise Llama2binError(f"{source_json}: no checkpoint field: not written by llama2bin fetch")
    return record


def checkpoint_from_source_json(source_json: str) -> str:
    """The checkpoint a SOURCE.json describes, as a path usable from the working directory."""
    checkpoint = read_source_json(source_json)["checkpoint"]
    if os.path.isabs(checkpoint):
        return checkpoint
    return os.path.normpath(os.path.join(os.path.dirname(source_json), checkpoint))


def previous_record(source_json: str) -> dict[str, Any] | None:
    """The record an earlier fetch left, or None (missing, damaged or not ours: simply redone)."""
    try:
        return read_source_json(source_json)
    except Llama2binError:
        return None
