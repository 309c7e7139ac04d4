"""Round-trip verification: read a .bin back and compare every tensor with the source.

float32 sections must be bit-identical to the float32 source; Q8_0 tensors must carry the
scales a fresh quantization gives and dequantize within scale/2 (plus float32 rounding) of
the source. Header fields must match the source config. Per-tensor error statistics are
collected on the way; they are what the quantization-error reports show.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .formats.layout import F32, ROPE_COS, ROPE_SIN
from .formats.q8_0 import quantize
from .formats.rope import rope_tables
from .progress import Progress
from .reader import BinFile, BinTensor
from .sources.base import Source, row_chunks

# |q*s - w| <= s/2 holds exactly in real arithmetic; float32 rounding of w/s and of q*s adds
# at most 127 * 2**-24 * s each. 2**-16 * s covers both with margin and is far below the
# error of a single flipped q (>= s/2 beyond the bound).
_Q8_SLACK = 2.0**-16

# Per-group max errors are summarised in this many log-spaced histogram bins (for reports).
_HIST_EDGES = np.concatenate([[0.0], np.logspace(-9, 0, 37)])


@dataclass
class TensorStats:
    name: str
    shape: list[int]
    encoding: str
    group_size: int | None
    max_abs_err: float = 0.0
    rmse: float = 0.0
    rel_err: float = 0.0
    snr_db: float | None = None  # None: exact (infinite SNR)
    group_err_hist: list[int] | None = None
    _sq_err: float = 0.0
    _sq_ref: float = 0.0
    _n: int = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        diff = got.astype(np.float64) - ref.astype(np.float64)
        self.max_abs_err = max(self.max_abs_err, float(np.abs(diff).max(initial=0.0)))
        self._sq_err += float(np.dot(diff, diff))
        self._sq_ref += float(np.dot(ref.astype(np.float64), ref.astype(np.float64)))
        self._n += ref.size

    def finish(self) -> dict[str, Any]:
        self.rmse = math.sqrt(self._sq_err / self._n) if self._n else 0.0
        self.rel_err = math.sqrt(self._sq_err / self._sq_ref) if self._sq_ref else 0.0
        if self._sq_err > 0 and self._sq_ref > 0:
            self.snr_db = 10 * math.log10(self._sq_ref / self._sq_err)
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


@dataclass
class VerifyResult:
    file: str
    version: int
    size: int
    sha256: str
    group_size: int | None
    header: dict[str, Any]
    source: dict[str, Any]
    failures: list[str] = field(default_factory=list)
    tensors: list[dict[str, Any]] = field(default_factory=list)
    # Logit-level comparison with the source (functional.FunctionalResult.to_json()); None when
    # not run. Its failures are also listed in `failures`.
    functional: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify(bin_path: str, source: Source, quiet: bool = False) -> VerifyResult:
    """Compare `bin_path` with `source`; the result lists every failure (empty = passed)."""
    with BinFile(bin_path) as bf:
        result = VerifyResult(
            file=os.path.basename(bin_path),
            version=bf.version,
            size=bf.size,
            sha256=sha256_file(bin_path),
            group_size=bf.group_size,
            header=bf.header_json(),
            source={**source.describe(), "config": source.config.to_json()},
        )
        _check_header(bf, source, result)
        if result.failures:  # a different model: comparing tensors would only add noise
            return result
        total = sum(t.values.size for t in bf.weights())
        progress = Progress(total, f"verify {result.file}", unit="el", quiet=quiet)
        for t in bf.weights():
            result.tensors.append(_check_tensor(t, source, result.failures).finish())
            bf.release(t)
            progress.update(t.values.size)
        progress.close()
        if bf.version == 0:
            _check_rope(bf, result)
    return result


def _check_header(bf: BinFile, source: Source, result: VerifyResult) -> None:
    want, got = source.config, bf.config
    for name in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len",
                 "shared_classifier"):
        if getattr(want, name) != getattr(got, name):
            result.failures.append(f"header {name} is {getattr(got, name)}, the source has {getattr(want, name)}")


def _check_tensor(t: BinTensor, source: Source, failures: list[str]) -> TensorStats:
    ref_t = source.tensor(t.name)
    stats = TensorStats(t.name, list(t.shape), "f32" if t.encoding == F32 else "q8_0", t.group_size)
    gs = t.group_size
    hist = np.zeros(len(_HIST_EDGES) - 1, dtype=np.int64) if gs else None
    for start, stop in row_chunks(ref_t, gs or 1):
        ref = ref_t.read_rows(start, stop).reshape(-1)
        first, last = start * ref_t.cols, stop * ref_t.cols
        if t.encoding == F32:
            got = np.asarray(t.values[first:last])
            if not np.array_equal(got.view(np.uint32), ref.view(np.uint32)):
                bad = int(np.flatnonzero(got.view(np.uint32) != ref.view(np.uint32))[0]) + first
                failures.append(f"tensor {t.name}: element {bad} differs from the float32 source")
                return stats
            stats.add(ref, got)
            continue
        q = np.asarray(t.values[first:last])
        scales = np.asarray(t.scales[first // gs : last // gs])
        _, fresh = quantize(ref, gs)
        if not np.array_equal(scales.view(np.uint32), fresh.view(np.uint32)):
            bad = int(np.flatnonzero(scales.view(np.uint32) != fresh.view(np.uint32))[0]) + first // gs
            failures.append(f"tensor {t.name}: scale of group {bad} differs from a fresh quantization")
            return stats
        got = (q.reshape(-1, gs).astype(np.float32) * scales[:, None]).reshape(-1)
        err = np.abs(got.astype(np.float64) - ref.astype(np.float64)).reshape(-1, gs)
        bound = scales.astype(np.float64)[:, None] * (0.5 + _Q8_SLACK)
        if (err > bound).any():
            bad = int(np.flatnonzero((err > bound).reshape(-1))[0]) + first
            failures.append(f"tensor {t.name}: element {bad} dequantizes beyond scale/2 of the source")
            return stats
        hist += np.histogram(err.max(axis=1), bins=_HIST_EDGES)[0]
        stats.add(ref, got)
    if hist is not None:
        stats.group_err_hist = hist.tolist()
    return stats


def _check_rope(bf: BinFile, result: VerifyResult) -> None:
    cos, sin = rope_tables(bf.config.head_size, bf.config.max_seq_len)
    for name, ref in ((ROPE_COS, cos), (ROPE_SIN, sin)):
        got = np.asarray(bf.tensors[name].values)
        if not np.array_equal(got.view(np.uint32), ref.reshape(-1).view(np.uint32)):
            result.failures.append(f"{name}: rotary table differs from llama2.c's")


HIST_EDGES = _HIST_EDGES.tolist()
