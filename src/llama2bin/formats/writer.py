"""Stream a source into one or more laid-out outputs (header bytes + sections at offsets) in a
single pass: today the .bin versions, and any family whose files are laid out that way.

Each source tensor is read once, in row chunks (`ChunkTask`s); each chunk fills every section
that holds part of it, dispatching on the section's encoding only (encodings.py): float32 to
every v0 target, quantized once per distinct group size of the Q8_0 targets (v1 and v2 share
a quantization when their group sizes agree; see group_size.py). A source that is already
Q8_0 (a v1/v2 .bin) at a target's group size has its q and scales copied, never re-quantized.
Sections are filled with positional writes at offsets the layout computed, so v1's split
q/scale regions and v2's interleaved ones cost the same. Peak memory is a few chunks per
worker process, independent of model and tensor size.

Speed: chunks are read, converted, quantized (formats.q8_0.quantize_into, block by block in
reused buffers; for big exports the compiled kernel of q8_fast, one pass from the stored bf16
bits) and written by worker processes (parallel.ForkPool: the GIL makes threads
useless for this), each writing its own chunks at their offsets and handing them to the
kernel for writeback at once (so the fsync at commit finds little left to do); v0's rope
tables (formats/rope.py: milliseconds, no torch) are computed by the parent meanwhile.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..atomic import atomic_outputs, check_free_space
from ..errors import Llama2binError
from ..parallel import ForkPool, default_workers
from ..progress import Progress
from ..sources.base import Source, row_chunks
from . import q8_fast
from .encodings import CODECS, Chunk, Encoding
from .group_size import plan_group_sizes
from .layout import ROPE_COS, ROPE_SIN, Layout
from .q8_0 import process_scratch
from .registry import format_spec
from .rope import rope_chunks
from .spec import FormatSpec


@dataclass
class ExportResult:
    layouts: dict[str, Layout]
    group_sizes: dict[str, int]  # quantized version -> its Q8_0 group size
    # per quantized tensor: the seed's "max error" (largest |w - q*scale|)
    max_errors: dict[str, float] = field(default_factory=dict)

    def summary_line(self) -> str | None:
        return error_summary(self.max_errors)


def error_summary(max_errors: dict[str, float]) -> str | None:
    """The seed's closing line: the largest quantization group error and its tensor (None: nothing quantized)."""
    if not max_errors:
        return None
    worst = max(max_errors, key=lambda k: max_errors[k])
    return f"max quantization group error across all weights: {max_errors[worst]} ({worst})"


def pwrite_all(fd: int, data: np.ndarray | bytes, offset: int) -> None:
    """Write all of `data` at `offset` (os.pwrite may write less than asked). Positional writes
    let every section be filled in any order, by any worker, without seeking a shared offset."""
    view = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _load_sync_file_range() -> Any:  # the libc function, or None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):
        return None


_SYNC_FILE_RANGE = _load_sync_file_range() if sys.platform.startswith("linux") else None
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Have the kernel start writing a just-written range to disk, without waiting for it.

    Otherwise a multi-GB output is mostly still dirty at commit and its fsync waits for all of
    it (measured: ~25% of a 1.1B export's wall time). Best effort: a failure here only means
    fsync does the work later.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def export(
    source: Source,
    targets: list[tuple[str, str]],
    group_size: int | None = None,
    threads: int | None = None,
    quiet: bool = False,
    allow_requantize: bool = False,
) -> ExportResult:
    """Write `source` as each (format name, path) in `targets` (.bin formats); all or nothing.

    `group_size`: an explicit Q8_0 group size, or None for the default (see group_size.py)."""
    layouts, plan = bin_layouts(source, [(format_spec(v), path) for v, path in targets], group_size, allow_requantize)
    result = ExportResult(layouts, plan)
    result.max_errors = write_layouts(source, layouts, threads, quiet)
    return result


def bin_layouts(source: Source, targets: list[tuple[FormatSpec, str]], group_size: int | None,
                allow_requantize: bool) -> tuple[dict[str, Layout], dict[str, int]]:
    """(path -> layout, format -> Q8_0 group size) of .bin targets: the group sizes planned
    (group_size.py), and a second quantization of a Q8_0 source refused unless allowed."""
    cfg = source.config
    source_q8 = source.quantization.group_size if source.quantization is not None else None
    plan = plan_group_sizes(cfg, [spec.name for spec, _ in targets], group_size, source_q8)
    if source_q8 is not None and not allow_requantize:
        for v, gs in plan.items():
            if gs != source_q8:
                raise Llama2binError(
                    f"{source.path}: already Q8_0 at group size {source_q8}; version {v} at group size {gs} would "
                    "quantize it a second time (pass --allow-requantize to accept the added error)"
                )
    return {path: spec.layout(cfg, plan.get(spec.name)) for spec, path in targets}, plan


def write_layouts(source: Source, layouts: dict[str, Layout], threads: int | None = None,
                  quiet: bool = False) -> dict[str, float]:
    """Fill every layout (path -> header bytes + sections) from `source` in one pass; all or
    nothing. Returns the largest quantization group error of each quantized tensor."""
    check_free_space({path: layout.size for path, layout in layouts.items()})
    with atomic_outputs(layouts) as outputs:
        for path, layout in layouts.items():
            outputs[path].allocate(layout.size)
            pwrite_all(outputs[path].fd, np.frombuffer(layout.header, np.uint8), 0)
        return _stream_tensors(source, {outputs[path].fd: layout for path, layout in layouts.items()}, threads, quiet)


@dataclass(frozen=True)
class SectionWrite:
    """One section of one output that a chunk fills: where it starts, how it is encoded."""

    fd: int
    offset: int  # of the section's first byte
    encoding: Encoding
    group_size: int | None


@dataclass(frozen=True)
class ChunkTask:
    """Rows [start, stop) of one source tensor, and every section they are written to."""

    tensor: str
    start: int
    stop: int
    writes: tuple[SectionWrite, ...]


def _tasks(source: Source, layouts: dict[int, Layout]) -> list[ChunkTask]:
    by_tensor = {fd: layout.by_tensor() for fd, layout in layouts.items()}
    tasks = []
    for name in source.config.shapes():
        t = source.tensor(name)
        writes = tuple(SectionWrite(fd, sec.offset, sec.encoding, sec.group_size)
                       for fd, sections in by_tensor.items() for sec in sections.get(name, ()))
        # chunks hold whole groups of every section, and of a Q8_0 source tensor (read in whole groups)
        align = math.lcm(*(CODECS[w.encoding].align(w.group_size) for w in writes), t.group_size or 1)
        tasks += [ChunkTask(name, start, stop, writes) for start, stop in row_chunks(t, align)]
    return tasks


def _stream_tensors(source: Source, layouts: dict[int, Layout], workers: int | None, quiet: bool) -> dict[str, float]:
    tasks = _tasks(source, layouts)
    quantized = {task.tensor for task in tasks if any(CODECS[w.encoding].quantizes for w in task.writes)}
    max_errors = {name: 0.0 for name in source.config.shapes() if name in quantized}
    total = 4 * sum(source.tensor(n).numel for n in source.config.shapes())
    # Before the fork, so that the workers inherit the compiled quantizer (when it pays off).
    q8_fast.prepare(sum(source.tensor(n).numel for n in quantized))

    def chunk_job(task: ChunkTask) -> tuple[int, float]:
        """Encode the chunk once per section encoding (each Q8_0 group size quantized once) and
        write every section at its offset: the dispatch is on the section's encoding only."""
        chunk = Chunk(source.tensor(task.tensor), task.start, task.stop, process_scratch(), source.path)
        for w in task.writes:
            codec = CODECS[w.encoding]
            data = codec.encode(chunk, w.group_size)
            at = w.offset + codec.start(chunk.first, w.group_size)
            pwrite_all(w.fd, data, at)
            _start_writeback(w.fd, at, data.nbytes)
        chunk.check_finite()
        return chunk.nbytes, chunk.max_error

    cfg = source.config
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ForkPool(tasks, chunk_job, workers or default_workers(total)))
        # v0's rope tables here while the workers stream; not in a forked child: torch's OpenMP (the
        # fallback without MKL) may hang there if this process used it before. In chunks of rows, so
        # a huge declared max_seq_len costs disk, never memory.
        rope_sections = [(fd, sec) for fd, layout in layouts.items() for sec in layout.sections
                         if sec.tensor in (ROPE_COS, ROPE_SIN)]
        if rope_sections:
            for row, cos, sin in rope_chunks(cfg.head_size, cfg.max_seq_len, cfg.rope_theta, scaling=cfg.rope_scaling):
                for fd, sec in rope_sections:
                    table = cos if sec.tensor == ROPE_COS else sin
                    pwrite_all(fd, table, sec.offset + 4 * row * table.shape[1])
        progress = Progress(total, "export", quiet=quiet)  # after the forks: tqdm may start a thread
        try:
            for task, (nbytes, err) in zip(tasks, pool.results(), strict=True):
                if task.tensor in max_errors:
                    max_errors[task.tensor] = max(max_errors[task.tensor], err)
                progress.update(nbytes)
        finally:
            progress.close()
    return max_errors
