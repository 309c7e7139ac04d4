"""An existing llama2.c `.bin` (any version the reader knows) as a checkpoint (issue 12.2).

The source's tensors are the reader's own `TensorRef`s: float32 tensors are read as they are;
Q8_0 tensors (v1, v2) dequantize on `read_rows` (q * scale in float32, as runq.c does) and hand
out the stored q and scales on `read_q8`, so that a writer targeting the same group size copies
them instead of quantizing a second time (dequantize + requantize is not guaranteed to give
the same scales: fl(fl(127 * s) / 127) need not equal s). Verification compares against these
tensors: bit for bit, q and scales included, where they were carried over. The source states
this as its `quantization`.

It lives in formats/ beside reader.py, not in sources/: it reads a .bin through the reader and
the format registry, a later stage than the checkpoint sources (tests/test_formats.py keeps
sources/ free of them). The source registry (source_registry.py) opens it for `bin`.

Like every source, nothing is read until rows are asked for, and then only those rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import Llama2binError
from ..model import ModelConfig
from ..sources.base import Source, SourceQuantization, TensorRef
from ..sources.policy import rope_theta_departure
from .reader import BinFile
from .rope import stored_rope_theta


class BinSource(Source):
    """A .bin file as a checkpoint. A v0 file's rope tables state its rope_theta (10000 unless
    --allow-rope-theta accepts another); the other versions store none, so 10000 is assumed."""

    kind = "bin"

    def __init__(self, path: str, max_seq_len: int | None = None, allow_rope_theta: bool = False):
        self.path = path
        self._file = BinFile(path)  # header, size and layout checks; its descriptor serves every read
        try:
            self._open(max_seq_len, allow_rope_theta)
        except BaseException:
            self._file.close()
            raise

    def _open(self, max_seq_len: int | None, allow_rope_theta: bool) -> None:
        bf = self._file
        self.version = bf.format  # the registered name: "0", "1", "1f", "2"
        if bf.group_size is not None:
            self.quantization = SourceQuantization(bf.format, bf.group_size)
        cfg = bf.config
        rope = bf.rope_tables()
        if rope is not None:  # v0: the tables are how the file states its rope_theta
            theta, departures = rope_theta_departure(f"{self.path}: freqs_cos", "rope_theta",
                                                     self._stored_theta(cfg, *rope), allow_rope_theta)
            cfg = dataclasses.replace(cfg, rope_theta=theta, accepted_departures=departures)
        if max_seq_len is not None:
            cfg = dataclasses.replace(cfg, max_seq_len=max_seq_len)
            cfg.validate(self.path)
        self.config = cfg
        self._refs: dict[str, TensorRef] = {name: bf.tensors[name] for name in cfg.shapes()}

    def _stored_theta(self, cfg: ModelConfig, cos: TensorRef, sin: TensorRef) -> float:
        theta = stored_rope_theta(lambda a, b: (cos.read_rows(a, b), sin.read_rows(a, b)), cfg.head_size,
                                  cfg.max_seq_len)
        if theta is None:
            raise Llama2binError(f"{self.path}: freqs_cos/freqs_sin are not llama2.c's rotary tables for any rope_theta")
        return theta

    def close(self) -> None:
        self._file.close()

    def describe(self) -> dict[str, Any]:
        described = {**super().describe(), "format": str(self.version)}
        if self.quantization is not None:
            described["source_quantized"] = self.quantization.to_json()
        return described
