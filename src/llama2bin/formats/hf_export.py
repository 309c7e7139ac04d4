"""Write the hf format: a Hugging Face Llama directory, streamed, all or nothing.

We write safetensors ourselves instead of calling `safetensors.save_file`, which needs every
tensor in memory at once: the header depends only on names, dtypes and shapes, so it is
computed up front and the data is filled tensor by tensor, in row chunks, with positional
writes. The directory appears under its final name only when complete (temporary sibling,
fsync, rename). What the files hold (config.json, the rotary permutation) is `formats.hf`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..atomic import check_free_space, fsync_dir, interruptions_deferred
from ..errors import Llama2binError
from ..model import ModelConfig, hf_name
from ..progress import Progress
from ..sources.base import Source, row_chunks
from .hf import CONFIG_NAME, OUTPUT_FILES, WEIGHTS_NAME, hf_config, rotary_heads, to_hf_rows
from .writer import pwrite_all


@dataclass(frozen=True)
class SafetensorsEntry:
    canonical: str
    name: str  # HF key
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    nbytes: int


@dataclass(frozen=True)
class SafetensorsLayout:
    header: bytes  # 8-byte length + JSON, padded with spaces to a multiple of 8
    entries: tuple[SafetensorsEntry, ...]
    size: int


def safetensors_layout(cfg: ModelConfig) -> SafetensorsLayout:
    """Header and offsets of model.safetensors for `cfg`: float32, in canonical (source) order."""
    table: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    placed: list[tuple[str, str, tuple[int, ...], int, int]] = []
    pos = 0
    for canonical, shape in cfg.shapes().items():
        nbytes = 4 * math.prod(shape)
        name = hf_name(canonical)
        table[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        placed.append((canonical, name, shape, pos, nbytes))
        pos += nbytes
    text = json.dumps(table, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the reference writer pads so that the data starts 8-aligned
    header = struct.pack("<Q", len(text)) + text
    entries = tuple(SafetensorsEntry(c, n, s, len(header) + off, nb) for c, n, s, off, nb in placed)
    return SafetensorsLayout(header, entries, len(header) + pos)


def _chunks(cfg: ModelConfig, canonical: str, t) -> list[tuple[int, int]]:
    # Permuted tensors are read in whole heads: the permutation never crosses a head.
    return list(row_chunks(t, cfg.head_size * t.cols if rotary_heads(cfg, canonical) else 1))


def check_hf_target(out_dir: str) -> None:
    """Refuse, before any work, an output the directory export cannot replace safely."""
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise Llama2binError(f"{out_dir}: exists and is not a directory (--version hf writes a directory)")
    if os.path.isdir(out_dir):
        foreign = sorted(set(os.listdir(out_dir)) - set(OUTPUT_FILES))
        if foreign:
            # Replacing the directory would delete these; only a previous export is ours to replace.
            raise Llama2binError(
                f"{out_dir}: directory holds {foreign[0]!r}, not only {' and '.join(OUTPUT_FILES)}; refusing to replace it"
            )


@dataclass
class HfExportResult:
    path: str
    size: int  # bytes of model.safetensors


def export_hf(source: Source, out_dir: str, quiet: bool = False) -> HfExportResult:
    """Write `source` as a Hugging Face Llama directory `out_dir`; all or nothing."""
    cfg = source.config
    check_hf_target(out_dir)
    layout = safetensors_layout(cfg)
    config_text = json.dumps(hf_config(cfg), indent=2) + "\n"
    final = os.path.abspath(out_dir)
    check_free_space({final: layout.size})  # keyed by the directory itself: checks (and creates) its parent only
    parent = os.path.dirname(final)
    tmp = None
    try:
        with interruptions_deferred():  # an interruption right after mkdtemp still finds `tmp` set
            try:
                tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".part", dir=parent)
            except OSError as e:
                raise Llama2binError(f"{out_dir}: cannot create output: {e.strerror}") from None
        _write_weights(source, os.path.join(tmp, WEIGHTS_NAME), layout, quiet)
        _write_small(os.path.join(tmp, CONFIG_NAME), config_text.encode())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a finished output has ordinary permissions
        fsync_dir(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return HfExportResult(out_dir, layout.size)


def _write_small(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        pwrite_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)



def _replace_dir(tmp: str, final: str) -> None:
    """Rename `tmp` to `final`; a previous export there (checked by check_hf_target) is replaced.

    POSIX rename cannot swap a non-empty directory, so the old one is first moved aside into a
    hidden sibling and deleted after the new one is in place (restored if that rename fails)."""
    parent = os.path.dirname(final)
    aside_root = None
    if os.path.isdir(final) and os.listdir(final):
        aside_root = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".old", dir=parent)
        aside = os.path.join(aside_root, "old")
        os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(aside, final)
            raise
    else:
        os.replace(tmp, final)  # absent, or an empty directory: one atomic rename
    fsync_dir(parent)
    if aside_root is not None:
        shutil.rmtree(aside_root, ignore_errors=True)


def _write_weights(source: Source, path: str, layout: SafetensorsLayout, quiet: bool) -> None:
    cfg = source.config
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    progress = Progress(layout.size, "export hf", quiet=quiet)
    try:
        try:
            os.posix_fallocate(fd, 0, layout.size)  # a full disk fails now, not after the work
        except OSError as e:
            raise Llama2binError(f"{path}: cannot reserve {layout.size} bytes: {e.strerror}") from None
        pwrite_all(fd, layout.header, 0)
        for entry in layout.entries:
            t = source.tensor(entry.canonical)
            permuted = rotary_heads(cfg, entry.canonical) is not None
            for start, stop in _chunks(cfg, entry.canonical, t):
                rows = t.read_rows(start, stop)
                if not np.isfinite(rows).all():
                    raise Llama2binError(f"{source.path}: tensor {t.name} contains NaN or Inf")
                if permuted:
                    rows = to_hf_rows(rows, cfg.head_size)
                pwrite_all(fd, rows.astype("<f4", copy=False), entry.offset + 4 * start * t.cols)
                progress.update(rows.nbytes)
        os.fsync(fd)
    finally:
        os.close(fd)
        progress.close()
