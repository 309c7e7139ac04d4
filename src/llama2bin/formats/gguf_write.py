"""GGUF outputs: their layout (header bytes + one section per tensor) and a one-pass writer.

A GGUF layout is what a .bin layout is (formats/layout.py): header bytes, then sections
(tensor, encoding, offset, nbytes) at offsets known before any weight is read - here the
header is variable-length (metadata, tensor infos) and every section starts at a multiple of
the alignment (32), zero padding between them and after the last one (GGUFWriter's file ends
with it; readers that load the data blob whole expect it). So the writer works as writer.py
does: allocate every output, write each header, then read each source tensor once in row
chunks, encode each chunk once per GGUF type any output wants (gguf_encode), and write it at
section offset + encoded offset of its first value (F32: 4 bytes per value, F16/BF16: 2,
Q8_0: 34 per block of 32 - a chunk of whole rows is whole blocks, as Q8_0 rows are multiples
of 32) with positional writes, chunks spread over worker processes. Generated tensors
(rope_freqs) are written by the parent. Memory: a few chunk buffers per worker, whatever the
model size; the header (tokenizer arrays: ~8 MB for Llama 3) is the one thing held whole.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np

from ..atomic import AtomicOutput, atomic_outputs, check_free_space
from ..model import ModelConfig
from ..parallel import ForkPool, default_workers
from ..progress import Progress
from ..rope_freqs import LLAMA3
from ..sources.base import Source, row_chunks
from ..sources.gguf_file import ROPE_FREQS, GgmlType, llama3_rope_factors
from . import gguf_encode
from .gguf_encode import encode_into, encoded_nbytes
from .gguf_header import KV, build_header
from .gguf_plan import GGUF_FILE_TYPES, metadata_kvs, tensor_plan
from .gguf_vocab import GgufVocab, vocab_kvs
from .q8_0 import process_scratch
from .writer import _start_writeback, pwrite_all


@dataclass(frozen=True)
class GgufModelInfo:
    """What a GGUF records beyond ModelConfig (which has the rope scaling): the model's name and
    its vocabulary (None: `tokenizer.ggml.model` "none"), or the tokenizer.* keys of a GGUF
    source copied as they are (`tokenizer_kvs`, which then replace the vocabulary's)."""

    name: str
    vocab: GgufVocab | None = None
    tokenizer_kvs: tuple[KV, ...] | None = None

    def kvs(self) -> list[KV]:
        return list(self.tokenizer_kvs) if self.tokenizer_kvs is not None else vocab_kvs(self.vocab)


@dataclass(frozen=True)
class GgufSection:
    tensor: str  # canonical name, or ROPE_FREQS (generated)
    gguf_name: str
    ggml_type: GgmlType
    shape: tuple[int, ...]  # numpy order
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GgufLayout:
    format: str  # "gguf-f32", "gguf-f16", "gguf-bf16", "gguf-q8_0"
    config: ModelConfig
    header: bytes
    sections: tuple[GgufSection, ...]
    size: int
    kvs: tuple[KV, ...]
    generated: dict[str, np.ndarray] = field(default_factory=dict, compare=False)

    def sections_of(self, tensor: str) -> list[GgufSection]:
        return [s for s in self.sections if s.tensor == tensor]


def gguf_layout(format_name: str, cfg: ModelConfig, info: GgufModelInfo) -> GgufLayout:
    """Where everything of `cfg` goes in a GGUF of `format_name`."""
    file_type = GGUF_FILE_TYPES[format_name]
    plan = tensor_plan(cfg, file_type)
    n_params = sum(math.prod(p.info.ne) for p in plan)  # what GGUFWriter.get_total_parameter_count sums
    kvs = metadata_kvs(cfg, file_type, info.name, n_params) + info.kvs()
    head = build_header(kvs, [p.info for p in plan])
    sections = tuple(
        GgufSection(p.canonical or p.gguf_name, p.gguf_name, p.info.ggml_type, p.shape, offset, p.info.nbytes)
        for p, offset in zip(plan, head.tensor_offsets, strict=True)
    )
    generated = {}
    if cfg.rope_scaling is not None and cfg.rope_scaling.rope_type == LLAMA3:
        generated[ROPE_FREQS] = llama3_rope_factors(cfg.head_size, cfg.rope_theta, cfg.rope_scaling)
    return GgufLayout(format_name, cfg, head.header, sections, head.size, tuple(kvs), generated)


@dataclass(frozen=True)
class _ChunkTask:
    tensor: str
    start: int  # first row
    stop: int
    targets: dict[GgmlType, list[tuple[int, int]]]  # type -> [(fd, section offset)]


def export_gguf(
    source: Source,
    targets: list[tuple[str, str]],
    info: GgufModelInfo,
    threads: int | None = None,
    quiet: bool = False,
) -> dict[str, GgufLayout]:
    """Write `source` as each (GGUF format name, path) in `targets`, in one pass; all or nothing."""
    cfg = source.config
    layouts = {path: gguf_layout(fmt, cfg, info) for fmt, path in targets}
    check_free_space({path: layout.size for path, layout in layouts.items()})
    with atomic_outputs(layouts) as outputs:
        for path, layout in layouts.items():
            outputs[path].allocate(layout.size)
            pwrite_all(outputs[path].fd, layout.header, 0)
            for sec in layout.sections:
                if sec.tensor in layout.generated:
                    pwrite_all(outputs[path].fd, layout.generated[sec.tensor].astype("<f4").tobytes(), sec.offset)
        _stream(source, layouts, outputs, threads, quiet)
    return layouts


def _stream(
    source: Source,
    layouts: dict[str, GgufLayout],
    outputs: dict[str, AtomicOutput],
    workers: int | None,
    quiet: bool,
) -> None:
    tasks: list[_ChunkTask] = []
    for name in source.config.shapes():
        by_type: dict[GgmlType, list[tuple[int, int]]] = {}
        for path, layout in layouts.items():
            for sec in layout.sections_of(name):
                by_type.setdefault(sec.ggml_type, []).append((outputs[path].fd, sec.offset))
        # Q8_0 sections exist only for rows of whole blocks, so any row range is whole blocks
        tasks += [_ChunkTask(name, a, b, by_type) for a, b in row_chunks(source.tensor(name))]
    total = 4 * sum(source.tensor(n).numel for n in source.config.shapes())
    # Before the fork, so that the workers inherit the compiled encoders (when they pay off).
    gguf_encode.prepare(sum(source.tensor(name).numel for name in source.config.shapes()
                            if {GgmlType.Q8_0, GgmlType.F16} & {sec.ggml_type for layout in layouts.values()
                                                                for sec in layout.sections_of(name)}))

    def chunk_job(task: _ChunkTask) -> int:
        t = source.tensor(task.tensor)
        scratch = process_scratch()
        first, count = task.start * t.cols, (task.stop - task.start) * t.cols
        values = t.read_rows_into(task.start, task.stop, scratch.get("values", count, np.float32)).reshape(-1)
        what = f"{source.path}: tensor {t.name}"
        for ggml_type, places in task.targets.items():
            buf = scratch.get(f"gguf_out{int(ggml_type)}", encoded_nbytes(ggml_type, count), np.uint8)
            data = encode_into(ggml_type, values, buf, scratch, what)
            skip = encoded_nbytes(ggml_type, first)
            for fd, offset in places:
                pwrite_all(fd, data, offset + skip)
                _start_writeback(fd, offset + skip, data.nbytes)
        return values.nbytes

    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ForkPool(tasks, chunk_job, workers or default_workers(total)))
        progress = Progress(total, "export", quiet=quiet)  # after the forks: tqdm may start a thread
        try:
            for nbytes in pool.results():
                progress.update(nbytes)
        finally:
            progress.close()
