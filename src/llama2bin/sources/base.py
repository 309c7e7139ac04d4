"""The lazy-tensor vocabulary every stage shares, and the source seam.

A `TensorRef` knows its shape, how its values are stored (`encoding`, and `group_size` for
Q8_0) and how to read a range of rows as float32 (a Q8_0 tensor also hands out its int8 q and
scales as they are, `read_q8`). Nothing is read until a writer, a verifier or the forward pass
asks for rows, and then only those rows, so each holds one chunk at a time, whatever the model
size. Checkpoint sources, outputs read back (formats/) and the forward pass (checks/) all speak
it.

A `Source` is an opened checkpoint: its config and a lazy canonical-name -> TensorRef map, plus
its `quantization` when its tensors are already quantized (a Q8_0 .bin). docs/formats.md
says what each encoding is, byte by byte.
"""

from __future__ import annotations

import math
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from ..errors import Llama2binError
from ..model import ModelConfig
from ..safe_io import open_regular

# Bytes of float32 a chunk holds. Peak memory of an export or verify is a small multiple of
# this per worker process, whatever the model size; 8 MiB makes syscall and per-chunk Python
# overhead negligible (a chunk is ~10 ms of work) while each worker's buffers stay small.
CHUNK_BYTES = 8 << 20

# Storage dtypes we can read, by the names safetensors and torch use.
DTYPE_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}


class TensorEncoding(StrEnum):
    """How a tensor's values are stored; the value is how verify JSON and reports name it."""

    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    F64 = "f64"
    # llama2.c's Q8_0: int8 q per element, one float32 scale per group of `group_size` elements
    Q8_0 = "q8_0"

    @property
    def dtype_name(self) -> str:
        """How `inspect` names it: float32, float16, bfloat16, float64 or q8_0."""
        return _DTYPE_NAMES[self]


_DTYPE_NAMES = {TensorEncoding.F32: "float32", TensorEncoding.F16: "float16", TensorEncoding.BF16: "bfloat16",
                TensorEncoding.F64: "float64", TensorEncoding.Q8_0: "q8_0"}
# A raw tensor's storage dtype (safetensors and torch names) -> its encoding.
DTYPE_ENCODING = {"F32": TensorEncoding.F32, "F16": TensorEncoding.F16, "BF16": TensorEncoding.BF16,
                  "F64": TensorEncoding.F64}


def to_float32(raw: np.ndarray, dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """Convert raw little-endian storage to float32 (bf16/f16 -> f32 are exact), into `out`
    (float32, as many elements as raw holds values) when given."""
    if dtype not in DTYPE_ITEMSIZE:
        raise Llama2binError(f"unsupported dtype {dtype}")
    if out is None:
        if dtype == "F32":
            return raw.view("<f4")
        out = np.empty(raw.size // DTYPE_ITEMSIZE[dtype], dtype=np.float32)
    if dtype == "BF16":
        # bf16 is the top half of a float32: widen the bits, then shift them into the high 16. Two
        # plain passes beat one shift that casts as it goes (0.33 vs 0.50 ns per value measured)
        bits = out.view(np.uint32)
        np.copyto(bits, raw.view("<u2"))
        np.left_shift(bits, 16, out=bits)
    else:
        np.copyto(out, raw.view({"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype]), casting="unsafe")
    return out


_thread_local = threading.local()


def thread_buffer(name: str, n: int, dtype: type) -> np.ndarray:
    """This thread's reusable buffer `name` of at least `n` elements (no page faults per read):
    storage that needs converting, whole heads of rows to un-permute."""
    buf = getattr(_thread_local, name, None)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = np.empty(max(n, 1 << 20), dtype=dtype)
        setattr(_thread_local, name, buf)
    return buf[:n]


class TensorRef(ABC):
    """A tensor not yet read. 1-D tensors count as one row.

    `encoding` and `group_size` say how its values are stored (float32 unless a subclass says
    otherwise); a Q8_0 tensor (`encoding` Q8_0, `group_size` set) also serves `read_q8`."""

    name: str
    shape: tuple[int, ...]
    encoding: TensorEncoding = TensorEncoding.F32
    group_size: int | None = None

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else math.prod(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @abstractmethod
    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a C-contiguous float32 array of shape (stop - start, cols)."""

    def read_rows_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """`read_rows(start, stop)`, possibly stored in `out` (a flat float32 buffer of at least
        (stop - start) * cols elements) to spare an allocation: use the returned array, which
        may or may not share memory with `out`. The default simply calls read_rows."""
        return self.read_rows(start, stop)

    def read_bf16_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray | None:
        """Rows [start, stop) as their stored bfloat16 bit patterns (uint16, flat, in `out` when it
        is used), or None if the tensor is not stored as bfloat16. The compiled quantizer widens
        them itself, in the same pass (formats/q8_fast.py); read_rows_into gives their values."""
        return None

    def read_q8(self, start: int, stop: int, q_out: np.ndarray | None = None,
                s_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) of a Q8_0 tensor as stored: (int8 q, float32 scales), flat; the
        rows must hold whole groups (`q_out`/`s_out` spare the allocations). Only tensors whose
        encoding is Q8_0 have them."""
        raise TypeError(f"tensor {self.name} is stored as {self.encoding}, not Q8_0")

    def read_all(self) -> np.ndarray:
        """The whole tensor as float32 in its shape (allocates it: tests and tiny models)."""
        return self.read_rows(0, self.rows).reshape(self.shape)

    def identity(self) -> Any:
        """A key equal for two refs that certainly hold the same bytes (tied weights), else None."""
        return None


class FilePool:
    """Keeps one read-only descriptor per file so that many small reads cost no re-opens."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            # Regular files only: a FIFO would block reads, a device (/dev/zero) never ends.
            fd = open_regular(path, "weight file")
            self._fds[path] = fd
        return fd

    def adopt(self, path: str, fd: int) -> None:
        """Use `fd`, already open on `path` (and checked by the caller), for its reads; closed with the pool."""
        self._fds[path] = fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


@dataclass
class RawTensor(TensorRef):
    """A contiguous tensor stored at a byte offset of a file (torch zip member, safetensors)."""

    name: str
    shape: tuple[int, ...]
    path: str
    offset: int
    dtype: str
    pool: FilePool = field(repr=False, compare=False)
    key: Any = None

    @property  # type: ignore[override]
    def encoding(self) -> TensorEncoding:
        return DTYPE_ENCODING[self.dtype]

    @property
    def nbytes(self) -> int:
        """Bytes it occupies in its file."""
        return self.numel * DTYPE_ITEMSIZE[self.dtype]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self.read_rows_into(start, stop, np.empty((stop - start) * self.cols, dtype=np.float32))

    def read_rows_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        itemsize = DTYPE_ITEMSIZE[self.dtype]
        cols = self.cols
        count = (stop - start) * cols
        dst = out[:count]
        # preadv fills the buffer straight from the page cache: one copy, no mmap'd pages
        # accumulating in this process's RSS. float32 lands in `out` directly; other dtypes
        # go through this thread's reusable raw buffer and are widened into `out`.
        raw = dst.view(np.uint8) if self.dtype == "F32" else thread_buffer("raw", count * itemsize, np.uint8)
        got = os.preadv(self.pool.fd(self.path), [raw], self.offset + start * cols * itemsize)
        if got != raw.size:
            raise Llama2binError(f"{self.path}: tensor {self.name} is truncated (file too short)")
        if self.dtype != "F32":
            to_float32(raw, self.dtype, dst)
        return dst.reshape(stop - start, cols)

    def read_bf16_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray | None:
        if self.dtype != "BF16":
            return None
        raw = out[: (stop - start) * self.cols]
        got = os.preadv(self.pool.fd(self.path), [raw], self.offset + 2 * start * self.cols)
        if got != 2 * raw.size:
            raise Llama2binError(f"{self.path}: tensor {self.name} is truncated (file too short)")
        return raw

    def identity(self) -> Any:
        return None if self.key is None else (self.path, self.key, self.offset)


@dataclass(frozen=True)
class SourceQuantization:
    """A source whose tensors are already quantized (a Q8_0 .bin): its format and group size.

    The writer carries its q and scales over to an output of the same group size instead of
    quantizing twice; verify records it, since a float32 output then holds dequantized values."""

    format: str  # the registered format it was read from ("1", "2")
    group_size: int
    encoding: TensorEncoding = TensorEncoding.Q8_0

    def to_json(self) -> dict[str, Any]:
        """What verify JSON and the reports record (`source_quantized`)."""
        return {"format": self.format, "group_size": self.group_size}


class Source(ABC):
    """An opened checkpoint: its config and a lazy canonical-name -> TensorRef map.

    A subclass's constructor opens its files through `self._pool` and fills `self._refs` with
    one TensorRef per canonical tensor (checked with `check_tensors`)."""

    kind: str  # its name in the source registry (formats/source_registry.py)
    path: str
    config: ModelConfig
    # Files that came with the checkpoint and other outputs may use (e.g. tokenizer.model).
    tokenizer_path: str | None = None
    # Set when the tensors are already quantized (they are then Q8_0 TensorRefs at its group size).
    quantization: SourceQuantization | None = None
    _refs: dict[str, TensorRef]
    _pool: FilePool

    @abstractmethod
    def __init__(self, path: str, max_seq_len: int | None = None) -> None: ...

    def tensor(self, name: str) -> TensorRef:
        return self._refs[name]

    @property
    def tensors(self) -> dict[str, TensorRef]:
        """Every canonical weight, in canonical order (`output` only when unshared)."""
        return {name: self._refs[name] for name in self.config.shapes()}

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What verification and reports record about the source (no absolute paths)."""
        return {"kind": self.kind, "name": os.path.basename(os.path.normpath(self.path))}


def row_chunks(t: TensorRef, align_elems: int = 1, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """Row ranges of about `chunk_bytes` of float32 whose element counts are multiples of
    `align_elems` (a Q8_0 group must never straddle two chunks)."""
    rows, cols = t.rows, t.cols
    step_unit = align_elems // math.gcd(cols, align_elems)  # rows per aligned unit
    step = max(step_unit, (chunk_bytes // 4 // max(cols, 1)) // step_unit * step_unit)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def split_classifier(refs: dict[str, TensorRef]) -> bool:
    """Whether the classifier is shared with the embeddings: no `output`, or one equal to them.
    A shared `output` is removed from `refs` (it is written once); a separate one stays."""
    output = refs.pop("output", None)
    if output is None or tensors_equal(output, refs["tok_embeddings"]):
        return True
    refs["output"] = output
    return False


def tensors_equal(a: TensorRef, b: TensorRef) -> bool:
    """Chunked comparison, so checking for a tied classifier never loads two whole tensors."""
    if a.shape != b.shape:
        return False
    ida = a.identity()
    if ida is not None and ida == b.identity():
        return True
    for start, stop in row_chunks(a):
        if not np.array_equal(a.read_rows(start, stop), b.read_rows(start, stop)):
            return False
    return True


def check_tensors(
    path: str,
    config: ModelConfig,
    refs: dict[str, TensorRef],
    display: Callable[[str], str] = str,
    implied_by: str = "the config",
) -> None:
    """Every canonical tensor present with the shape the config implies, and nothing else:
    a tensor we would not write is refused, never dropped. `display` names tensors as the
    checkpoint does (e.g. Hugging Face keys), so messages point at what the user can find."""
    expected = config.shapes()
    for name, shape in expected.items():
        ref = refs.get(name)
        if ref is None:
            raise Llama2binError(f"{path}: missing tensor {display(name)}")
        if tuple(ref.shape) != shape:
            raise Llama2binError(
                f"{path}: tensor {display(name)} has shape {list(ref.shape)}, {implied_by} implies {list(shape)}"
            )
    extra = sorted(set(refs) - set(expected))
    if extra:
        raise Llama2binError(
            f"{path}: unexpected tensor {display(extra[0])}: not part of the LLaMA model {implied_by} describes"
        )
