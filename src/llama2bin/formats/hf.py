"""Export back to a Hugging Face Llama directory (llama2.c's export "version -1").

The directory holds `config.json` (a LlamaConfig) and `model.safetensors` (float32). q_proj and
k_proj get their rows permuted from the interleaved rotary layout llama2.c/Meta use to the
half-rotation layout Hugging Face uses - the inverse of FORMATS.md's un-permutation, with
n_heads for q and n_kv_heads for k. A shared classifier is expressed as `tie_word_embeddings`
with no `lm_head` tensor.

We write safetensors ourselves instead of calling `safetensors.save_file`, which needs every
tensor in memory at once: the header depends only on names, dtypes and shapes, so it is
computed up front and the data is filled tensor by tensor, in row chunks, with positional
writes. The directory appears under its final name only when complete (temporary sibling,
fsync, rename).
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

from ..atomic import check_free_space, fsync_dir
from ..checks.tensor import TensorCheckResult as VerifyResult
from ..checks.tensor import TensorStats, sha256_file
from ..errors import Llama2binError
from ..model import ModelConfig, hf_name
from ..progress import Progress
from ..sources.base import FilePool, RawTensor, Source, row_chunks

HF_VERSION = "hf"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
OUTPUT_FILES = (CONFIG_NAME, WEIGHTS_NAME)
# The Hugging Face tokenizer convention llama2.c's own hf export writes too.
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2

def rotary_heads(cfg: ModelConfig, canonical: str) -> int | None:
    """Number of heads whose rows the HF layout permutes (q: n_heads, k: n_kv_heads), else None."""
    if canonical.endswith(".attention.wq"):
        return cfg.n_heads
    if canonical.endswith(".attention.wk"):
        return cfg.n_kv_heads
    return None


def to_hf_rows(rows: np.ndarray, head_size: int) -> np.ndarray:
    """Whole heads of canonical (interleaved-pair) rows -> HF (half-rotation) row order.

    Canonical row 2j+c of a head becomes HF row c*hd/2 + j: the inverse of FORMATS.md's
    `w.reshape(n, 2, hd // 2, dim).transpose(1, 2)`."""
    n = rows.shape[0] // head_size
    return rows.reshape(n, head_size // 2, 2, rows.shape[1]).transpose(0, 2, 1, 3).reshape(rows.shape)


def from_hf_rows(rows: np.ndarray, head_size: int) -> np.ndarray:
    """Whole heads of HF rows -> canonical row order (FORMATS.md's un-permutation)."""
    n = rows.shape[0] // head_size
    return rows.reshape(n, 2, head_size // 2, rows.shape[1]).transpose(0, 2, 1, 3).reshape(rows.shape)


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json for `cfg`, as transformers 5 writes a LlamaConfig.

    rope_theta is written both inside `rope_parameters` (transformers >= 5) and at the top
    level (what transformers 4 reads; 5 accepts it too); likewise `dtype` and `torch_dtype`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_TOKEN_ID,
        "dtype": "float32",
        "eos_token_id": EOS_TOKEN_ID,
        "head_dim": cfg.head_size,
        "hidden_act": "silu",
        "hidden_size": cfg.dim,
        "initializer_range": 0.02,
        "intermediate_size": cfg.hidden_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": cfg.n_heads,
        "num_hidden_layers": cfg.n_layers,
        "num_key_value_heads": cfg.n_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.shared_classifier,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }


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


def _pwrite(fd: int, data: np.ndarray | bytes, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


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
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".part", dir=parent)
    except OSError as e:
        raise Llama2binError(f"{out_dir}: cannot create output: {e.strerror}") from None
    try:
        _write_weights(source, os.path.join(tmp, WEIGHTS_NAME), layout, quiet)
        _write_small(os.path.join(tmp, CONFIG_NAME), config_text.encode())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a finished output has ordinary permissions
        fsync_dir(tmp)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return HfExportResult(out_dir, layout.size)


def _write_small(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        _pwrite(fd, data, 0)
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
        _pwrite(fd, layout.header, 0)
        for entry in layout.entries:
            t = source.tensor(entry.canonical)
            permuted = rotary_heads(cfg, entry.canonical) is not None
            for start, stop in _chunks(cfg, entry.canonical, t):
                rows = t.read_rows(start, stop)
                if not np.isfinite(rows).all():
                    raise Llama2binError(f"{source.path}: tensor {t.name} contains NaN or Inf")
                if permuted:
                    rows = to_hf_rows(rows, cfg.head_size)
                _pwrite(fd, rows.astype("<f4", copy=False), entry.offset + 4 * start * t.cols)
                progress.update(rows.nbytes)
        os.fsync(fd)
    finally:
        os.close(fd)
        progress.close()


# ---- verification -------------------------------------------------------------------------


def _read_safetensors_table(path: str) -> tuple[int, dict[str, Any]]:
    """(data start, header table) of a safetensors file, parsed without the safetensors package."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise Llama2binError(f"{path}: too short for safetensors")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                raise Llama2binError(f"{path}: safetensors header length {n} exceeds the file")
            table = json.loads(f.read(n))
    except OSError as e:
        raise Llama2binError(f"{path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Llama2binError(f"{path}: safetensors header is not JSON") from None
    if not isinstance(table, dict):
        raise Llama2binError(f"{path}: safetensors header is not a JSON object")
    return 8 + n, table


def verify_hf_dir(out_dir: str, source: Source, quiet: bool = False) -> VerifyResult:
    """Read an exported HF directory back and compare with `source`: config.json fields, the
    safetensors table, and every tensor (un-permuted) bit for bit. Failures are listed in the result."""
    cfg = source.config
    weights = os.path.join(out_dir, WEIGHTS_NAME)
    config_path = os.path.join(out_dir, CONFIG_NAME)
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as e:
        raise Llama2binError(f"{config_path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Llama2binError(f"{config_path}: not JSON") from None
    data_start, table = _read_safetensors_table(weights)
    result = VerifyResult(
        file=os.path.basename(os.path.normpath(out_dir)),
        version=HF_VERSION,  # type: ignore[arg-type]  # the .bin results carry an int here
        size=os.path.getsize(weights),
        sha256=sha256_file(weights),
        group_size=None,
        header=config,
        source={**source.describe(), "config": cfg.to_json()},
    )
    want = hf_config(cfg)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "max_position_embeddings", "tie_word_embeddings", "rms_norm_eps", "head_dim",
                "model_type", "hidden_act"):
        if config.get(key) != want[key]:
            result.failures.append(f"{CONFIG_NAME}: {key} is {config.get(key)!r}, the source has {want[key]!r}")
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta"))
    if theta != cfg.rope_theta:
        result.failures.append(f"{CONFIG_NAME}: rope_theta is {theta!r}, the source has {cfg.rope_theta!r}")
    if result.failures:
        return result

    expected = {hf_name(c): (c, s) for c, s in cfg.shapes().items()}
    present = {k: v for k, v in table.items() if k != "__metadata__"}
    for name in sorted(set(present) - set(expected)):
        result.failures.append(f"{WEIGHTS_NAME}: unexpected tensor {name}")
    for name in expected:
        if name not in present:
            result.failures.append(f"{WEIGHTS_NAME}: missing tensor {name}")
    if result.failures:
        return result

    pool = FilePool()
    try:
        refs = []
        spans = []
        for name, (canonical, shape) in expected.items():
            info = present[name]
            offsets = info.get("data_offsets") if isinstance(info, dict) else None
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or info.get("dtype") != "F32"
                or info.get("shape") != list(shape)
                or offsets[1] - offsets[0] != 4 * math.prod(shape)
            ):
                result.failures.append(f"{WEIGHTS_NAME}: tensor {name} is not F32 {list(shape)} ({info})")
                continue
            spans.append((offsets[0], offsets[1], name))
            refs.append((canonical, RawTensor(name, shape, weights, data_start + offsets[0], "F32", pool)))
        pos = 0
        for begin, end, name in sorted(spans):  # safetensors data: back to back, no gaps, no overlaps
            if begin != pos:
                result.failures.append(f"{WEIGHTS_NAME}: tensor {name} starts at data byte {begin}, expected {pos}")
                break
            pos = end
        if not result.failures and data_start + pos != result.size:
            result.failures.append(f"{WEIGHTS_NAME}: {result.size} bytes, the tensors account for {data_start + pos}")
        if result.failures:
            return result
        progress = Progress(sum(r.numel for _, r in refs), f"verify {result.file}", unit="el", quiet=quiet)
        for canonical, got_t in refs:
            ref_t = source.tensor(canonical)
            stats = TensorStats(canonical, list(ref_t.shape), "f32", None)
            permuted = rotary_heads(cfg, canonical) is not None
            for start, stop in _chunks(cfg, canonical, ref_t):
                ref = ref_t.read_rows(start, stop)
                got = got_t.read_rows(start, stop)
                if permuted:
                    got = from_hf_rows(got, cfg.head_size)
                got, ref = np.ascontiguousarray(got).reshape(-1), ref.reshape(-1)
                if not np.array_equal(got.view(np.uint32), ref.view(np.uint32)):
                    bad = int(np.flatnonzero(got.view(np.uint32) != ref.view(np.uint32))[0]) + start * ref_t.cols
                    result.failures.append(f"tensor {got_t.name}: element {bad} differs from the float32 source")
                    break
                stats.add(ref, got)
            stats.hf_name = got_t.name
            result.tensors.append(stats.finish())
            progress.update(got_t.numel)
        progress.close()
    finally:
        pool.close()
    return result

