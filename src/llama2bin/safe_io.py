"""Reading input files that may be hostile: regular files only, sizes capped, JSON strict.

Why we write this ourselves rather than use `open()` + `json.load`: safety. `open()` on a FIFO
blocks forever, and a symlink to /dev/zero reads until memory runs out; `json.load` accepts
NaN and Infinity, keeps the last of two duplicate keys without a word, and recurses into
100,000 nested brackets. No well-kept library bounds all of that for us, and the checks are
a few lines each. Every reader of a checkpoint, config or tokenizer goes through here:

- `open_regular` opens with O_NONBLOCK and checks the type with fstat on the *same*
  descriptor (no race with a rename), so FIFOs, devices, sockets and directories fail at
  once, naming the file. Symlinks to regular files are followed (the Hugging Face cache is
  made of them); a symlink to /dev/zero is a character device and is refused.
- `read_capped` refuses a file larger than its cap before allocating anything.
- `parse_json` refuses NaN/Infinity (and literals like 1e999 that overflow to infinity),
  duplicate keys, invalid UTF-8 and nesting deeper than `MAX_JSON_DEPTH`.
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

from .errors import Llama2binError

# Config files (config.json, params.json, shard indexes) are kilobytes; a 70B model's
# safetensors index is ~70 KB. 16 MiB is far above any real one and bounds what we parse.
MAX_CONFIG_JSON_BYTES = 16 << 20
# No LLaMA config nests deeper than 3; safetensors headers nest 3 deep.
MAX_JSON_DEPTH = 64

_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _FILE_KINDS:
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, what: str = "file") -> int:
    """A read-only descriptor for `path`, which must be (or link to) a regular file.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; it has
    no effect on reads of regular files. The caller owns (and closes) the descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Llama2binError(f"{path}: no such file ({what})") from None
    except OSError as e:
        raise Llama2binError(f"{path}: cannot open ({what}): {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise Llama2binError(f"{path}: cannot stat ({what}): {e.strerror}") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Llama2binError(f"{path}: is {_kind(mode)}; a {what} must be a regular file")
    return fd


def file_size(fd: int) -> int:
    return os.fstat(fd).st_size


def read_fd_capped(fd: int, path: str, max_bytes: int, what: str) -> bytes:
    """All of an open regular file, refused before reading if it is larger than `max_bytes`."""
    size = file_size(fd)
    if size > max_bytes:
        raise Llama2binError(f"{path}: {size} bytes is too large for a {what} (limit {max_bytes})")
    chunks: list[bytes] = []
    got = 0
    # Read one byte past the size fstat gave, so a file that grows while we read is noticed
    # instead of read without bound.
    while got <= size:
        try:
            block = os.pread(fd, size + 1 - got, got)
        except OSError as e:
            raise Llama2binError(f"{path}: cannot read ({what}): {e.strerror}") from None
        if not block:
            break
        chunks.append(block)
        got += len(block)
    if got != size:
        raise Llama2binError(f"{path}: changed size while being read ({what})")
    return b"".join(chunks)


def read_capped(path: str, max_bytes: int, what: str) -> bytes:
    """The bytes of regular file `path`, at most `max_bytes` of them (else refused)."""
    fd = open_regular(path, what)
    try:
        return read_fd_capped(fd, path, max_bytes, what)
    finally:
        os.close(fd)


class _JsonRefusal(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _JsonRefusal(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonRefusal(f"{text} overflows to infinity")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _JsonRefusal(f"duplicate key {key!r:.100} (which value is meant?)")
        obj[key] = value
    return obj


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether containers nest deeper than `limit` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json(raw: bytes, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Strict JSON from `raw`: UTF-8, finite numbers, unique keys, at most `max_depth` deep."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Llama2binError(f"{where}: not valid JSON: not UTF-8 at byte {e.start}") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys)
    except RecursionError:
        # CPython's decoder recurses per bracket; past the interpreter's limit it raises this.
        raise Llama2binError(f"{where}: not valid JSON: nested deeper than {max_depth} levels") from None
    except _JsonRefusal as e:
        raise Llama2binError(f"{where}: not valid JSON: {e}") from None
    except json.JSONDecodeError as e:
        raise Llama2binError(f"{where}: not valid JSON: {e}") from None
    except ValueError as e:  # e.g. an integer literal of more than 4300 digits
        raise Llama2binError(f"{where}: not valid JSON: {e}") from None
    if _depth_exceeds(value, max_depth):
        raise Llama2binError(f"{where}: not valid JSON: nested deeper than {max_depth} levels")
    return value


def load_json(path: str, what: str, max_bytes: int = MAX_CONFIG_JSON_BYTES) -> Any:
    """Strict JSON from regular file `path` of at most `max_bytes`."""
    return parse_json(read_capped(path, max_bytes, what), path)


__all__ = [
    "MAX_CONFIG_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "file_size",
    "load_json",
    "open_regular",
    "parse_json",
    "read_capped",
    "read_fd_capped",
]
