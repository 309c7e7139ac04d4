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
- `load_plain_yaml` reads a pipeline config as safe YAML without duplicate keys, and
  `check_plain_data` bounds what it holds *with its aliases expanded*: YAML anchors make a
  1 KB file stand for billions of values ("billion laughs"), which anything that walks it
  (a schema validator, or the message of its error) would take hours over. The check visits
  each distinct object once, so it never walks the expansion it is measuring.
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
# Pipeline configs (YAML): a config of a thousand models is ~100 KB and nests 5 levels deep.
# 1 MiB bounds what we parse (PyYAML's own parser, the one Snakemake uses, takes ~2 s/MB);
# the expanded bounds keep a schema validator's walk and its error message under a second.
MAX_CONFIG_YAML_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 16
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_TEXT = 4 << 20

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


# ---- YAML configs: plain data, bounded with aliases expanded ---------------------------------


class _Unbounded(ValueError):
    pass


def _expanded(node: Any, depth: int, memo: dict[int, tuple[int, int]], open_ids: set[int],
              limits: tuple[int, int, int]) -> tuple[int, int]:
    """(values, characters) of `node` as if every alias were expanded, computed once per distinct
    object (`memo`, by identity): an aliased list of 9 lists of 9 ... costs 9 visits per level,
    not 9^levels. Recursion is bounded by the depth limit."""
    if isinstance(node, str | bytes):
        return 1, len(node)
    if not isinstance(node, dict | list | tuple | set | frozenset):
        return 1, 0
    key = id(node)
    if key in memo:
        return memo[key]
    max_depth, max_values, max_text = limits
    if key in open_ids:
        raise _Unbounded("refers to itself (a recursive YAML alias)")
    if depth > max_depth:
        raise _Unbounded(f"nests deeper than {max_depth} levels")
    open_ids.add(key)
    values, text = 1, 0
    for child in (x for kv in node.items() for x in kv) if isinstance(node, dict) else node:
        v, t = _expanded(child, depth + 1, memo, open_ids, limits)
        values, text = values + v, text + t
        if values > max_values:
            raise _Unbounded(f"expands to more than {max_values} values (YAML anchors and aliases?)")
        if text > max_text:
            raise _Unbounded(f"expands to more than {max_text} characters of text (YAML anchors and aliases?)")
    open_ids.discard(key)
    memo[key] = (values, text)
    return values, text


def check_plain_data(data: Any, where: str, max_depth: int = MAX_CONFIG_DEPTH, max_values: int = MAX_CONFIG_VALUES,
                     max_text: int = MAX_CONFIG_TEXT) -> None:
    """Refuse parsed YAML/JSON data that nests deeper than `max_depth`, refers to itself, or with
    its aliases expanded holds more than `max_values` values or `max_text` characters. The
    message names the top-level key at fault. Cost: one visit per distinct object."""
    limits = (max_depth, max_values, max_text)
    memo: dict[int, tuple[int, int]] = {}
    items = list(data.items()) if isinstance(data, dict) else [(None, data)]
    values, text, sizes = 1, 0, {}
    for key, value in items:
        try:
            v, t = _expanded(value, 2, memo, set(), limits)
        except _Unbounded as e:
            raise Llama2binError(f"{where}: " + (f"key {key!r:.80} " if key is not None else "") + str(e)) from None
        k = _expanded(key, 1, memo, set(), limits)[1] if key is not None else 0
        values, text = values + v + 1, text + t + k
        sizes[key] = v
        if values > max_values or text > max_text:
            largest = max(sizes, key=lambda name: sizes[name])
            what = f"{max_values} values" if values > max_values else f"{max_text} characters of text"
            raise Llama2binError(f"{where}: expands to more than {what} (YAML anchors and aliases?); "
                                 f"the largest key is {largest!r:.80}")


def _plain_yaml_loader() -> type:
    """Safe YAML (no Python tags) that refuses a duplicate key: YAML silently keeps the last one.
    libyaml's parser when PyYAML has it (5x faster, and it bounds nesting itself)."""
    import yaml

    class PlainLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        pass

    def unique_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key (a list or mapping): construct_mapping says so
                break
            if duplicate:
                raise _JsonRefusal(f"duplicate key {key!r:.100} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return loader.construct_mapping(node, deep)

    PlainLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, unique_mapping)
    return PlainLoader


def load_plain_yaml(path: str, what: str = "config", max_bytes: int = MAX_CONFIG_YAML_BYTES) -> Any:
    """A YAML (or JSON) config from regular file `path` as plain data: at most `max_bytes`, UTF-8,
    safe YAML without duplicate keys, and bounded by `check_plain_data`. Errors are one line."""
    import yaml

    raw = read_capped(path, max_bytes, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Llama2binError(f"{path}: not valid YAML: not UTF-8 at byte {e.start}") from None
    try:
        data = yaml.load(text, Loader=_plain_yaml_loader())
    except RecursionError:
        raise Llama2binError(f"{path}: not valid YAML: nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    except (ValueError, yaml.YAMLError) as e:  # ValueError: a duplicate key, an int of 5000 digits
        if "maximum nesting depth" in str(e):  # libyaml's own bound (1000 levels), before ours
            raise Llama2binError(f"{path}: not valid YAML: nested deeper than {MAX_CONFIG_DEPTH} levels") from None
        raise Llama2binError(f"{path}: not valid YAML: {' '.join(str(e).split()):.300}") from None
    check_plain_data(data, path)
    return data


__all__ = [
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_JSON_BYTES",
    "MAX_CONFIG_TEXT",
    "MAX_CONFIG_VALUES",
    "MAX_CONFIG_YAML_BYTES",
    "MAX_JSON_DEPTH",
    "check_plain_data",
    "file_size",
    "load_json",
    "load_plain_yaml",
    "open_regular",
    "parse_json",
    "read_capped",
    "read_fd_capped",
]
