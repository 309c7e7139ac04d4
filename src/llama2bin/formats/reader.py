"""Read a .bin back: identify its format from the header, rebuild its layout, and expose its
tensors as `TensorRef`s (a float32 section is a `RawTensor`, a Q8_0 tensor's q and scales
sections one `Q8Tensor`), so the checks, the forward pass and the bin source read it like
any other tensor.

Opening reads the header and nothing else; a tensor's bytes are read (preadv, through the one
descriptor opened here) only when rows are asked for, so memory never grows with the file.
Every header field is checked against sane bounds before any size is computed from it, so
hostile files (dim = 2**31-1, negative layer counts, truncation, trailing bytes) are refused
cleanly. docs/formats.md gives every layout byte by byte.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import constants as C
from ..errors import Llama2binError
from ..sources.base import FilePool, RawTensor, TensorEncoding, TensorRef
from .layout import PARAM_NAMES, Q8, ROPE_COS, ROPE_SIN, SCALE, Layout
from .output import Output
from .registry import identify
from .v0 import v0_layout_without_rope


@dataclass
class Q8Tensor(TensorRef):
    """A llama2.c Q8_0 tensor of a .bin: int8 q at `offset`, float32 scales at `scales_offset`."""

    name: str
    shape: tuple[int, ...]
    path: str
    offset: int
    scales_offset: int
    group_size: int = field()  # type: ignore[assignment]  # required: always set for Q8_0
    pool: FilePool = field(repr=False, compare=False)
    encoding = TensorEncoding.Q8_0

    def read_q8(self, start: int, stop: int, q_out: np.ndarray | None = None,
                s_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) as (int8 q, float32 scales), flat; the rows must hold whole groups.
        `q_out`/`s_out` (int8, float32, at least as long) spare the allocations."""
        cols, gs = self.cols, self.group_size
        first, count = start * cols, (stop - start) * cols
        if first % gs or count % gs:
            raise ValueError(f"rows {start}:{stop} of {self.name} do not hold whole groups of {gs}")
        return self._read_groups(first // gs, (first + count) // gs, q_out, s_out)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        # Any rows: llama2.c's own export writes v2 whose groups straddle rows (hidden_dim not a
        # multiple of the group size), so read the groups that cover the rows and cut them out.
        cols, gs = self.cols, self.group_size
        first, end = start * cols, stop * cols
        g0, g1 = first // gs, -(-end // gs)
        q, s = self._read_groups(g0, g1)
        values = q.reshape(-1, gs).astype(np.float32)
        values *= s[:, None]  # float32 q * scale: what runq.c computes
        return np.ascontiguousarray(values.reshape(-1)[first - g0 * gs : end - g0 * gs]).reshape(stop - start, cols)

    def _read_groups(self, g0: int, g1: int, q_out: np.ndarray | None = None,
                     s_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        gs = self.group_size
        q = np.empty((g1 - g0) * gs, dtype=np.int8) if q_out is None else q_out[: (g1 - g0) * gs]
        s = np.empty(g1 - g0, dtype="<f4") if s_out is None else s_out[: g1 - g0]
        fd = self.pool.fd(self.path)
        for buf, offset in ((q, self.offset + g0 * gs), (s, self.scales_offset + 4 * g0)):
            if os.preadv(fd, [buf.view(np.uint8)], offset) != buf.nbytes:
                raise Llama2binError(f"{self.path}: tensor {self.name} is truncated (file too short)")
        return q, s


class BinFile(Output):
    """An opened .bin file of any version."""

    def __init__(self, path: str):
        self.path = self.hashed_path = path
        fd = self._open(path)
        try:
            self.size = os.fstat(fd).st_size
            head = os.pread(fd, C.QHEADER_SIZE, 0)
            self.spec = identify(head, path)
            self.format: str = self.spec.name  # the registered format: "0", "1", "1f", "2"
            self.version: int = self.spec.header_version  # the number the header stores (v0: none, 0)
            try:
                self.config, self.group_size = self.spec.decode_header(head, path)
            except Llama2binError as e:
                if self.spec.header is not None and not self.spec.header.has("magic"):
                    raise Llama2binError(f"{e} (no 'ak42' magic, so read as a v0 header)") from None
                raise
            self.layout: Layout = self._layout()
        except BaseException:
            os.close(fd)
            raise
        self._pool = FilePool()
        self._pool.adopt(path, fd)
        self._tensors = self._index()

    @staticmethod
    def _open(path: str) -> int:
        try:
            mode = os.stat(path).st_mode
            if stat.S_ISDIR(mode):
                raise Llama2binError(f"{path}: is a directory")
            if not stat.S_ISREG(mode):
                # a FIFO or device would block open() or never end; only regular files are .bin files
                raise Llama2binError(f"{path}: not a regular file")
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise Llama2binError(f"{path}: no such file") from None
        except OSError as e:
            raise Llama2binError(f"{path}: cannot read: {e.strerror}") from None

    def _layout(self) -> Layout:
        layout = self.spec.layout(self.config, self.group_size)
        if self.format == "0" and self.size != layout.size:
            # llama2.c's run.c never reads the rope tables, and v0 files without them exist; the
            # file size tells (issue 12.2). Such a file has no freqs_cos/freqs_sin tensors.
            without = v0_layout_without_rope(self.config)
            if self.size == without.size:
                layout = without
        if self.size != layout.size:
            what = "truncated" if self.size < layout.size else "trailing bytes"
            raise Llama2binError(
                f"{self.path}: file size {self.size} bytes does not match the {layout.size} bytes "
                f"its {self.spec.label} header implies ({what})"
            )
        return layout

    def _index(self) -> dict[str, TensorRef]:
        """Every tensor the file stores (weights and rope tables) by canonical name, file order."""
        tensors: dict[str, TensorRef] = {}
        for name, sections in self.layout.by_tensor().items():
            values = sections[0]
            if values.encoding == Q8:
                scales = sections[1]
                assert scales.encoding == SCALE and values.group_size
                tensors[name] = Q8Tensor(name, values.shape, self.path, values.offset, scales.offset,
                                         values.group_size, self._pool)
            else:
                tensors[name] = RawTensor(name, values.shape, self.path, values.offset, "F32", self._pool)
        return tensors

    @property
    def tensors(self) -> dict[str, TensorRef]:
        """Every tensor stored, by canonical name: the weights, and v0's rope tables."""
        return self._tensors

    def rope_tables(self) -> tuple[TensorRef, TensorRef] | None:
        if ROPE_COS not in self._tensors:
            return None
        return self._tensors[ROPE_COS], self._tensors[ROPE_SIN]

    @property
    def description(self) -> str:
        """Which format this is, in words (e.g. "seed v1 (Q8_0 ...)")."""
        return self.spec.description

    def header_json(self) -> dict[str, Any]:
        """The header's values (the keys reports have always carried; the format's name is `format`)."""
        return {"version": self.version, **{k: getattr(self.config, k) for k in PARAM_NAMES},
                "shared_classifier": self.config.shared_classifier, "group_size": self.group_size}

    def describe(self) -> dict[str, Any]:
        tensors = []
        for name, sections in self.layout.by_tensor().items():
            values = sections[0]
            tensors.append({
                "name": name,
                "shape": list(values.shape),
                "dtype": (f"q8_0(group_size={values.group_size})" if values.group_size else "float32"),
                "offset": values.offset,
                "nbytes": values.nbytes,
                **({"scales_offset": sections[1].offset} if len(sections) > 1 else {}),
            })
        return {"file": self.path, "format": self.format, "format_description": self.description,
                "header": self.header_json(), "size": self.size, "expected_size": self.layout.size,
                "size_matches": self.size == self.layout.size, "tensors": tensors}

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> BinFile:
        return self
