"""Read a .bin back: identify its format from the header, rebuild its layout, expose tensors
as memmap views.

Nothing is copied on open; a tensor's bytes are touched only when asked for. Every header
field is checked against sane bounds before any size is computed from it, so hostile files
(dim = 2**31-1, negative layer counts, truncation, trailing bytes) are refused cleanly.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import constants as C
from ..errors import Llama2binError
from .layout import DIRECTORY, F32, PARAM_NAMES, Q8, SCALE, Encoding, FormatSpec, Layout
from .registry import FORMATS, identify
from .v0 import v0_layout_without_rope


@dataclass(frozen=True)
class BinTensor:
    """One tensor of a .bin file: float32 values, or int8 q plus float32 group scales."""

    name: str
    shape: tuple[int, ...]
    encoding: Encoding  # F32 or Q8
    offset: int  # of the values (q for Q8)
    values: np.ndarray  # memmap view, flat: float32 or int8
    scales: np.ndarray | None  # memmap view, flat float32 (Q8 only)
    scales_offset: int | None
    group_size: int | None

    @property
    def dtype(self) -> str:
        name = self.encoding.dtype_name
        return f"{name}(group_size={self.group_size})" if self.group_size else name

    @property
    def cols(self) -> int:
        return self.shape[-1] if len(self.shape) > 1 else self.shape[0]

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Flat float32 elements [start, stop) (dequantized for Q8_0)."""
        stop = self.values.size if stop is None else stop
        if self.encoding == F32:
            return np.asarray(self.values[start:stop])
        gs = self.group_size
        assert gs and start % gs == 0 and stop % gs == 0
        q = self.values[start:stop].reshape(-1, gs).astype(np.float32)
        return (q * self.scales[start // gs : stop // gs, None]).reshape(-1)

    def dequantize(self) -> np.ndarray:
        """The whole tensor as float32 in its canonical shape (allocates the tensor)."""
        return self.read().reshape(self.shape)


class BinFile:
    """An opened .bin file of any version."""

    def __init__(self, path: str):
        self.path = path
        try:
            if not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path):
                # a FIFO or device would block open() or never end; only regular files are .bin files
                raise Llama2binError(f"{path}: not a regular file")
            with open(path, "rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                head = f.read(C.QHEADER_SIZE)
        except FileNotFoundError:
            raise Llama2binError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise Llama2binError(f"{path}: is a directory") from None
        except OSError as e:
            raise Llama2binError(f"{path}: cannot read: {e.strerror}") from None
        self.spec: FormatSpec = identify(head, path)
        self.format: str = self.spec.name  # the registered format: "0", "1", "1f", "2"
        self.version: int = self.spec.header_version  # the number the header stores (v0: none, 0)
        try:
            self.config, self.group_size = self.spec.decode_header(head, path)
        except Llama2binError as e:
            if self.spec.header is not None and not self.spec.header.has("magic"):
                raise Llama2binError(f"{e} (no 'ak42' magic, so read as a v0 header)") from None
            raise
        self.layout: Layout = self.spec.layout(self.config, self.group_size)
        if self.format == "0" and self.size != self.layout.size:
            # llama2.c's run.c never reads the rope tables, and v0 files without them exist; the
            # file size tells (issue 12.2). Such a file has no freqs_cos/freqs_sin tensors.
            without = v0_layout_without_rope(self.config)
            if self.size == without.size:
                self.layout = without
        if self.size != self.layout.size:
            what = "truncated" if self.size < self.layout.size else "trailing bytes"
            raise Llama2binError(
                f"{path}: file size {self.size} bytes does not match the {self.layout.size} bytes "
                f"its {self.spec.label} header implies ({what})"
            )
        self._file = open(path, "rb")
        self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = np.frombuffer(self._mmap, dtype=np.uint8)
        self.tensors: dict[str, BinTensor] = self._index()

    # ---- tensors ----------------------------------------------------------------------

    def _index(self) -> dict[str, BinTensor]:
        values: dict[str, tuple] = {}
        scales: dict[str, tuple] = {}
        for sec in self.layout.sections:
            if sec.encoding == F32:
                values[sec.tensor] = (sec, self._buf[sec.offset : sec.offset + sec.nbytes].view("<f4"))
            elif sec.encoding == Q8:
                values[sec.tensor] = (sec, self._buf[sec.offset : sec.offset + sec.nbytes].view(np.int8))
            elif sec.encoding == SCALE:
                scales[sec.tensor] = (sec, self._buf[sec.offset : sec.offset + sec.nbytes].view("<f4"))
        tensors = {}
        for name, (sec, view) in values.items():
            scale_sec, scale_view = scales.get(name, (None, None))
            tensors[name] = BinTensor(
                name=name,
                shape=sec.shape,
                encoding=sec.encoding,
                offset=sec.offset,
                values=view,
                scales=scale_view,
                scales_offset=scale_sec.offset if scale_sec else None,
                group_size=self.group_size if sec.encoding == Q8 else None,
            )
        return tensors

    def weights(self) -> Iterator[BinTensor]:
        """The model's weights in canonical order (rope tables excluded)."""
        for name in self.config.shapes():
            yield self.tensors[name]

    def release(self, t: BinTensor) -> None:
        """Drop a tensor's pages from this process (they stay in the page cache), so reading a
        file front to back keeps RSS at one tensor's worth, not the file's."""
        page = mmap.PAGESIZE
        for offset, nbytes in ((t.offset, t.values.nbytes), (t.scales_offset, 0 if t.scales is None else t.scales.nbytes)):
            if offset is None or nbytes == 0:
                continue
            start = offset // page * page
            self._mmap.madvise(mmap.MADV_DONTNEED, start, offset + nbytes - start)

    @property
    def description(self) -> str:
        """Which format this is, in words (e.g. "seed v1 (Q8_0 ...)")."""
        return self.spec.description

    def header_json(self) -> dict:
        """The header's values (the keys reports have always carried; the format's name is `format`)."""
        return {"version": self.version, **{k: getattr(self.config, k) for k in PARAM_NAMES},
                "shared_classifier": self.config.shared_classifier, "group_size": self.group_size}

    def close(self) -> None:
        self._buf = None  # type: ignore[assignment]
        self.tensors = {}
        try:
            self._mmap.close()
        except BufferError:  # a caller still holds a view; the OS unmaps at exit
            pass
        self._file.close()

    def __enter__(self) -> BinFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def output_format(path: str) -> FormatSpec:
    """The format of an existing output: a directory is the directory format (hf); a file is
    identified from its header (refused like any unreadable .bin)."""
    if os.path.isdir(path):
        return next(spec for spec in FORMATS.values() if spec.kind == DIRECTORY)
    with BinFile(path) as bf:
        return bf.spec


def open_output(spec: FormatSpec, path: str) -> Any:
    """Read an output of `spec` back: a BinFile for a .bin (FILE formats are read through their
    layout, here), the format's own opener (a sources.Source) for a directory."""
    if spec.kind == DIRECTORY:
        return spec.open_directory(path)
    return BinFile(path)
