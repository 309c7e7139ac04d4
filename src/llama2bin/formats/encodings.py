"""Section encodings: how a section of an output file stores (part of) a tensor, as a registry.

A layout (layout.py) is header bytes plus sections at byte offsets; every section names the
tensor it holds and its `Encoding`. `CODECS` says, per encoding, how many bytes a section of n
elements takes, where element i's bytes start, and how to encode one row chunk of the source
(`Chunk`). The writer's single positional-write pass dispatches on it and nothing else, so a
new encoding (ggml's Q8_0 blocks, float16, bfloat16 for GGUF) is one `SectionCodec` here plus
the layout that uses it. docs/formats.md gives each encoding byte by byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from ..errors import Llama2binError
from ..sources.base import TensorEncoding, TensorRef, to_float32
from . import q8_fast
from .q8_0 import Scratch, all_finite, quantize_into


class Encoding(StrEnum):
    """How a section stores its values."""

    F32 = "f32"  # float32 values
    Q8 = "q8"  # llama2.c Q8_0: the int8 values of a tensor
    SCALE = "scale"  # llama2.c Q8_0: the float32 group scales of a tensor


class Chunk:
    """Rows [start, stop) of one source tensor, as the section codecs draw on them: float32
    values read once (on first use), each Q8_0 group size quantized once however many sections
    want it, and a Q8_0 source's own q and scales carried over at its group size (a second
    quantization would change them: fl(fl(127 * s) / 127) need not equal s)."""

    def __init__(self, tensor: TensorRef, start: int, stop: int, scratch: Scratch, where: str):
        self.tensor, self.start, self.stop = tensor, start, stop
        self.first, self.count = start * tensor.cols, (stop - start) * tensor.cols
        self.scratch, self.where = scratch, where
        self.max_error = 0.0  # the seed's measure: largest |w - q*scale| of this chunk's quantizations
        self._values: np.ndarray | None = None
        self._bf16: np.ndarray | None = None  # the stored bf16 bits, when the compiled quantizer read them
        self._q8: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._finite = False  # known finite: a quantization or the source's checked scales said so
        if tensor.encoding == TensorEncoding.Q8_0:
            assert tensor.group_size
            q, s = tensor.read_q8(start, stop)
            if not all_finite(s):
                raise Llama2binError(f"{where}: tensor {tensor.name} has a NaN or Inf scale")
            self._q8[tensor.group_size] = (q, s)
            self._finite = True

    @property
    def nbytes(self) -> int:
        """Bytes of float32 the chunk stands for (what progress counts)."""
        return 4 * self.count

    @property
    def values(self) -> np.ndarray:
        """The float32 values, flat (a Q8_0 source's dequantized ones)."""
        if self._values is None:
            buf = self.scratch.get("values", self.count, np.float32)
            if self._bf16 is not None:  # already read for the compiled quantizer: widen, do not read again
                self._values = to_float32(self._bf16, "BF16", buf)
            else:
                self._values = self.tensor.read_rows_into(self.start, self.stop, buf).reshape(-1)
        return self._values

    def q8(self, group_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(int8 q, float32 scales) at `group_size`: the source's own at its group size, else a
        fresh quantization of the values (once per group size)."""
        if group_size not in self._q8:
            q = self.scratch.get(f"q{group_size}", self.count, np.int8)
            s = self.scratch.get(f"s{group_size}", self.count // group_size, np.float32)
            if q8_fast.loaded() and self._values is None and self._bf16 is None:
                # the compiled kernel widens bf16 in its own pass: read the stored bits, not float32
                self._bf16 = self.tensor.read_bf16_into(self.start, self.stop, self.scratch.get("bf16", self.count, np.uint16))
            if self._bf16 is not None:
                err = q8_fast.quantize_bits(self._bf16, group_size, q, s)
            else:
                err = quantize_into(self.values, group_size, q, s, self.scratch)
            if err is None:
                raise Llama2binError(f"{self.where}: tensor {self.tensor.name} contains NaN or Inf")
            self.max_error = max(self.max_error, err)
            self._q8[group_size] = (q, s)
            self._finite = True
        return self._q8[group_size]

    def check_finite(self) -> None:
        """Refuse NaN or Inf that no quantization has already caught (float32-only writes)."""
        if not self._finite and self._values is not None and not all_finite(self._values):
            raise Llama2binError(f"{self.where}: tensor {self.tensor.name} contains NaN or Inf")


@dataclass(frozen=True)
class SectionCodec:
    encoding: Encoding
    tensor_encoding: TensorEncoding  # how the tensor a section of this encoding belongs to is stored
    quantizes: bool  # writing it quantizes (the export reports the largest group error)
    nbytes: Callable[[int, int | None], int]  # (elements, group size) -> bytes of the section
    start: Callable[[int, int | None], int]  # (first element, group size) -> its byte offset in the section
    align: Callable[[int | None], int]  # group size -> elements a row chunk must hold whole multiples of
    encode: Callable[[Chunk, int | None], np.ndarray]  # one chunk's bytes (any dtype, C-contiguous)


def _group(gs: int | None) -> int:
    assert gs, "a Q8_0 section needs a group size"
    return gs


CODECS: dict[Encoding, SectionCodec] = {codec.encoding: codec for codec in (
    SectionCodec(Encoding.F32, TensorEncoding.F32, False, lambda n, gs: 4 * n, lambda i, gs: 4 * i, lambda gs: 1,
                 lambda chunk, gs: chunk.values),
    SectionCodec(Encoding.Q8, TensorEncoding.Q8_0, True, lambda n, gs: n, lambda i, gs: i, _group,
                 lambda chunk, gs: chunk.q8(_group(gs))[0]),
    SectionCodec(Encoding.SCALE, TensorEncoding.Q8_0, True, lambda n, gs: 4 * (n // _group(gs)),
                 lambda i, gs: 4 * (i // _group(gs)), _group, lambda chunk, gs: chunk.q8(_group(gs))[1]),
)}
