"""Lazy weights for the reference forward: canonical name -> float32 rows, read on access.

`LazyWeights` is the Mapping the forward pass (forward.py) multiplies with in row blocks of
about CHUNK_BYTES, so peak memory is one block of one tensor, never the model. `BinWeights`
serves an opened output (Q8_0 tensors dequantized, or as q and scales for runq.c's arithmetic),
`SourceWeights` a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from ..errors import Llama2binError
from ..formats.output import Output
from ..model import ModelConfig
from ..sources.base import CHUNK_BYTES, Source, TensorEncoding, TensorRef, thread_buffer


def row_blocks(rows: int, cols: int, align_rows: int = 1) -> Iterator[tuple[int, int]]:
    """Row ranges of about CHUNK_BYTES of float32: the blocks in which lazy weights are read and
    multiplied (peak memory: one block)."""
    step = max(align_rows, (CHUNK_BYTES // 4 // max(cols, 1)) // align_rows * align_rows)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


class LazyWeights(Mapping):
    """canonical name -> float32 array in canonical shape, read on every access, never cached.
    `output` is present also when the classifier is shared (it is then the embeddings)."""

    config: ModelConfig
    group_size: int | None = None  # of the Q8_0 tensors q8_rows serves; None: float32 weights only

    def _names(self) -> list[str]:
        return [*self.config.shapes(), *([] if "output" in self.config.shapes() else ["output"])]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _resolve(self, name: str) -> str:
        if name == "output" and self.config.shared_classifier:
            return "tok_embeddings"
        if name not in self.config.shapes():
            raise KeyError(name)
        return name

    def shape(self, name: str) -> tuple[int, ...]:
        return self.config.shapes()[self._resolve(name)]

    def __getitem__(self, name: str) -> np.ndarray:
        shape = self.shape(name)
        out = np.empty((shape[0] if len(shape) > 1 else 1, shape[-1]), dtype=np.float32)
        for start, stop in row_blocks(*out.shape):
            out[start:stop] = self.read_rows(name, start, stop)
        return out.reshape(shape)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32 (stop - start, cols); 1-D tensors are one row."""
        raise NotImplementedError

    def read_rows_into(self, name: str, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """`read_rows`, possibly in `out` (a flat float32 buffer of at least (stop - start) * cols
        elements, reused call after call: no fresh pages to fault in); use the returned array,
        which may or may not share memory with `out` (float64 when kept so, ResidentWeights)."""
        return self.read_rows(name, start, stop)

    def q8_rows(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) of a Q8_0 tensor: int8 values (rows, cols), float32 scales (rows, cols / gs)."""
        raise Llama2binError(f"forward: tensor {name} is not Q8_0")

    def plain_product(self, x: np.ndarray, name: str, first: int, last: int) -> np.ndarray:
        """x @ W[first:last].T in plain float64 BLAS (sampling's products), one row block
        (`row_blocks`) at a time; every block is its own BLAS call, whoever makes it."""
        out = np.empty((x.shape[0], last - first), dtype=np.float64)
        for start, stop in row_blocks(last - first, self.shape(name)[1]):
            out[:, start:stop] = self.plain_block(x, name, first + start, first + stop)
        return out

    def plain_block(self, x: np.ndarray, name: str, start: int, stop: int) -> np.ndarray:
        """x @ W[start:stop].T, the rows read and widened into this thread's buffers, reused block
        after block, instead of two fresh arrays a block (their page faults cost as much as the
        copies at 1.1B); the same float64 values either way."""
        cols = self.shape(name)[1]
        n = (stop - start) * cols
        rows = self.read_rows_into(name, start, stop, thread_buffer("lazy_f32", n, np.float32))
        if rows.dtype != np.float64:
            wide = thread_buffer("lazy_f64", n, np.float64).reshape(stop - start, cols)
            np.copyto(wide, rows.reshape(stop - start, cols))
            rows = wide
        return x @ rows.T

    def gather(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (any order, repeats allowed) without reading the rest of the tensor."""
        unique, inverse = np.unique(ids, return_inverse=True)
        rows = np.stack([self.read_rows(name, int(i), int(i) + 1)[0] for i in unique])
        return rows[inverse.reshape(ids.shape)]


# What ResidentWeights may keep: the float64 blocks of a stories15M-sized model (~120 MB), a bounded
# part of a larger one. verify's memory request (workflow/rules/common.smk) leaves room for it.
RESIDENT_BYTES = 192 << 20


class ResidentWeights(LazyWeights):
    """`inner`'s blocks, once read, kept as float64 up to `budget` bytes; beyond it read as before.

    For token-by-token sampling (eval_tokens.py), which multiplies every weight once per generated
    token: without it each of the 31 steps read the whole model from the checkpoint and widened
    it to float64 again (half of the sampling's CPU at the 15M shape). The values are the same
    float32 numbers widened exactly, so every product is the same; memory stays bounded by the
    budget, whatever the model's size."""

    def __init__(self, inner: LazyWeights, budget: int = RESIDENT_BYTES):
        self.inner = inner
        self.config = inner.config
        self.group_size = inner.group_size
        self._blocks: dict[tuple[str, int, int], np.ndarray] = {}
        self._left = budget

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.read_rows_into(name, start, stop, None)

    def read_rows_into(self, name: str, start: int, stop: int, out: np.ndarray | None) -> np.ndarray:
        key = (self._resolve(name), start, stop)
        kept = self._blocks.get(key)
        if kept is not None:
            return kept
        rows = self.inner.read_rows(name, start, stop) if out is None else self.inner.read_rows_into(name, start, stop, out)
        if 2 * rows.nbytes <= self._left:
            rows = rows.astype(np.float64)
            rows.flags.writeable = False
            self._blocks[key] = rows
            self._left -= rows.nbytes
        return rows


class BinWeights(LazyWeights):
    """The weights of an opened output (formats.output.Output), dequantized on access; valid
    while it is open."""

    def __init__(self, output: Output):
        self.output = output
        self.config = output.config
        self.group_size = output.group_size

    def tensor(self, name: str) -> TensorRef:
        return self.output.tensors[self._resolve(name)]

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.tensor(name).read_rows(start, stop)

    def q8_rows(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, stop) of a Q8_0 tensor: int8 values (rows, cols), float32 scales (rows, cols / gs)."""
        t = self.tensor(name)
        if t.encoding != TensorEncoding.Q8_0:
            raise Llama2binError(f"{self.output.path}: tensor {name} is float32, not Q8_0")
        cols, gs = t.cols, t.group_size
        assert gs and cols % gs == 0
        q, s = t.read_q8(start, stop)
        return q.reshape(stop - start, cols), s.reshape(stop - start, cols // gs)


class SourceWeights(LazyWeights):
    """The float32 tensors of an open checkpoint `Source`, read through `TensorRef.read_rows`."""

    def __init__(self, source: Source, config: ModelConfig | None = None):
        self.source = source
        self.config = config or source.config

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.source.tensor(self._resolve(name)).read_rows(start, stop)

    def read_rows_into(self, name: str, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        return self.source.tensor(self._resolve(name)).read_rows_into(start, stop, out).reshape(stop - start, -1)


def weights_from_bin(bf: Output) -> dict[str, np.ndarray]:
    """Every weight of an opened .bin as float32 in its canonical shape (Q8_0 dequantized);
    `output` is the embedding matrix when the classifier is shared. This loads the whole model
    (tests and tiny models); `BinWeights(bf)` is the lazy equivalent."""
    lazy = BinWeights(bf)
    weights = {name: lazy[name] for name in bf.config.shapes()}
    if bf.config.shared_classifier:
        weights["output"] = weights["tok_embeddings"]
    return weights
