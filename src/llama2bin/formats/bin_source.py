"""An existing llama2.c `.bin` (any version the reader knows) as a checkpoint (issue 12.2).

Float32 tensors are read as they are. Q8_0 tensors (v1, v2) are exposed twice: `read_rows`
dequantizes (q * scale in float32, as the reader and runq.c do), and `read_q8` hands out the
stored q and scales so that a writer targeting the same group size copies them instead of
quantizing a second time (dequantize + requantize is not guaranteed to give the same scales:
fl(fl(127 * s) / 127) need not equal s). Verification compares against these tensors: bit for
bit, q and scales included, where they were carried over.

It lives in formats/ beside reader.py, not in sources/: it reads a .bin through the reader and
the format registry, a later stage than the checkpoint sources (tests/test_formats.py keeps sources/ free
of them). The CLI opens it for --bin.

Like every source, nothing is read until rows are asked for, and then only those rows (preadv,
no memory map held), so memory does not grow with the file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import Llama2binError
from ..model import ModelConfig
from ..sources.base import FilePool, RawTensor, Source, TensorRef
from ..sources.policy import rope_theta_departure
from .layout import F32, Q8
from .reader import BinFile
from .rope import stored_rope_theta


@dataclass
class Q8Tensor(TensorRef):
    """A Q8_0 tensor of a .bin: int8 q at `offset`, float32 scales at `scales_offset`."""

    name: str
    shape: tuple[int, ...]
    path: str
    offset: int
    scales_offset: int
    group_size: int
    pool: FilePool = field(repr=False, compare=False)

    def read_q8(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) as (int8 q, float32 scales), flat; the rows must hold whole groups."""
        cols, gs = self.cols, self.group_size
        first, count = start * cols, (stop - start) * cols
        if first % gs or count % gs:
            raise ValueError(f"rows {start}:{stop} of {self.name} do not hold whole groups of {gs}")
        return self._read_groups(first // gs, (first + count) // gs)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        # Any rows: llama2.c's own export writes v2 whose groups straddle rows (hidden_dim not a
        # multiple of the group size), so read the groups that cover the rows and cut them out.
        cols, gs = self.cols, self.group_size
        first, end = start * cols, stop * cols
        g0, g1 = first // gs, -(-end // gs)
        q, s = self._read_groups(g0, g1)
        values = q.reshape(-1, gs).astype(np.float32)
        values *= s[:, None]  # float32 q * scale: what reader.BinTensor.read and runq.c compute
        return np.ascontiguousarray(values.reshape(-1)[first - g0 * gs : end - g0 * gs]).reshape(stop - start, cols)

    def _read_groups(self, g0: int, g1: int) -> tuple[np.ndarray, np.ndarray]:
        gs = self.group_size
        q = np.empty((g1 - g0) * gs, dtype=np.int8)
        s = np.empty(g1 - g0, dtype="<f4")
        fd = self.pool.fd(self.path)
        for buf, offset in ((q, self.offset + g0 * gs), (s, self.scales_offset + 4 * g0)):
            if os.preadv(fd, [buf.view(np.uint8)], offset) != buf.nbytes:
                raise Llama2binError(f"{self.path}: tensor {self.name} is truncated (file too short)")
        return q, s


class BinSource(Source):
    """A .bin file as a checkpoint. A v0 file's rope tables state its rope_theta (10000 unless
    --allow-rope-theta accepts another); the other versions store none, so 10000 is assumed."""

    kind = "bin"

    def __init__(self, path: str, max_seq_len: int | None = None, allow_rope_theta: bool = False):
        self.path = path
        self._pool = FilePool()
        with BinFile(path) as bf:  # header, size and layout checks; then only offsets are kept
            self.version = bf.format  # the registered name: "0", "1", "1f", "2"
            cfg = bf.config
            self.group_size = bf.group_size
            self.has_rope_tables = any(name.startswith("freqs_") for name in bf.tensors)
            refs: dict[str, TensorRef] = {}
            for name in cfg.shapes():
                t = bf.tensors[name]
                if t.encoding == F32:
                    refs[name] = RawTensor(name, t.shape, path, t.offset, "F32", self._pool)
                elif t.encoding == Q8:
                    assert t.scales_offset is not None and t.group_size
                    refs[name] = Q8Tensor(name, t.shape, path, t.offset, t.scales_offset, t.group_size, self._pool)
            rope = (bf.tensors["freqs_cos"].offset, bf.tensors["freqs_sin"].offset) if self.has_rope_tables else None
        if rope is not None:  # v0: the tables are how the file states its rope_theta
            theta, departures = rope_theta_departure(f"{path}: freqs_cos", "rope_theta", self._stored_theta(cfg, *rope),
                                                     allow_rope_theta)
            cfg = dataclasses.replace(cfg, rope_theta=theta, accepted_departures=departures)
        if max_seq_len is not None:
            cfg = dataclasses.replace(cfg, max_seq_len=max_seq_len)
            cfg.validate(path)
        self.config = cfg
        self._refs = refs

    def _stored_theta(self, cfg: ModelConfig, cos_offset: int, sin_offset: int) -> float:
        half = cfg.head_size // 2
        tables = [RawTensor(name, (cfg.max_seq_len, half), self.path, offset, "F32", self._pool)
                  for name, offset in (("freqs_cos", cos_offset), ("freqs_sin", sin_offset))]
        theta = stored_rope_theta(lambda a, b: (tables[0].read_rows(a, b), tables[1].read_rows(a, b)),
                                  cfg.head_size, cfg.max_seq_len)
        if theta is None:
            raise Llama2binError(f"{self.path}: freqs_cos/freqs_sin are not llama2.c's rotary tables for any rope_theta")
        return theta

    @property
    def quantized(self) -> dict[str, Any] | None:
        """{"format", "group_size"} when the file is already Q8_0 (recorded by verify), else None."""
        if self.group_size is None:
            return None
        return {"format": str(self.version), "group_size": self.group_size}

    def describe(self) -> dict[str, Any]:
        described = {**super().describe(), "format": str(self.version)}
        if self.quantized:
            described["source_quantized"] = self.quantized
        return described
