"""Stream a source into one or more .bin versions in a single pass.

Each source tensor is read once, in row chunks; each chunk is written as float32 to every
v0 target and quantized once per distinct group size of the Q8_0 targets (v1 and v2 share a
quantization when their group sizes agree; see group_size.py). A source that is already Q8_0
(a v1/v2 .bin) at a target's group size has its q and scales copied, never re-quantized.
Sections are filled with positional writes at offsets the shared layout computed, so v1's
split q/scale regions and v2's interleaved ones cost the same. Peak memory is a few chunks
per worker process, independent of model and tensor size.

Speed: chunks are read, converted, quantized (formats.q8_0.quantize_into, block by block in
reused buffers) and written by worker processes (parallel.ForkPool: the GIL makes threads
useless for this), each writing its own chunks at their offsets and handing them to the
kernel for writeback at once (so the fsync at commit finds little left to do); v0's rope
tables (formats/rope.py: milliseconds, no torch) are computed by the parent meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..atomic import AtomicOutput, check_free_space
from ..errors import Llama2binError
from ..parallel import ForkPool, default_workers
from ..progress import Progress
from ..sources.base import Source, row_chunks
from .group_size import chunk_alignment, plan_group_sizes
from .layout import F32, Q8, ROPE_COS, ROPE_SIN, Layout
from .q8_0 import all_finite, process_scratch, quantize_into
from .registry import format_spec
from .rope import rope_chunks


@dataclass
class ExportResult:
    layouts: dict[str, Layout]
    group_sizes: dict  # quantized version -> its Q8_0 group size
    # per quantized tensor: the seed's "max error" (largest |w - q*scale|)
    max_errors: dict[str, float] = field(default_factory=dict)

    def summary_line(self) -> str | None:
        if not self.max_errors:
            return None
        worst = max(self.max_errors, key=lambda k: self.max_errors[k])
        return f"max quantization group error across all weights: {self.max_errors[worst]} ({worst})"


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
    cfg = source.config
    source_q8 = source_group_size(source)
    plan = plan_group_sizes(cfg, [str(v) for v, _ in targets], group_size, source_q8)
    if source_q8 is not None and not allow_requantize:
        for v, gs in plan.items():
            if gs != source_q8:
                raise Llama2binError(
                    f"{source.path}: already Q8_0 at group size {source_q8}; version {v} at group size {gs} would "
                    "quantize it a second time (pass --allow-requantize to accept the added error)"
                )
    layouts = {path: format_spec(v).layout(cfg, plan.get(str(v))) for v, path in targets}
    check_free_space({path: layout.size for path, layout in layouts.items()})
    result = ExportResult(layouts, plan)

    outputs = {path: AtomicOutput(path) for path in layouts}
    try:
        for path, layout in layouts.items():
            outputs[path].allocate(layout.size)
            pwrite_all(outputs[path].fd, np.frombuffer(layout.header, np.uint8), 0)
        _stream_tensors(source, layouts, outputs, result, threads, quiet)
        for out in outputs.values():
            out.commit()
    except BaseException:
        for out in outputs.values():
            out.abort()
        raise
    return result


def source_group_size(source: Source) -> int | None:
    """The group size of a source that is already Q8_0 (a v1/v2 .bin), else None."""
    quantized = getattr(source, "quantized", None)
    return quantized["group_size"] if quantized else None


def _stream_tensors(
    source: Source,
    layouts: dict[str, Layout],
    outputs: dict[str, AtomicOutput],
    result: ExportResult,
    workers: int | None,
    quiet: bool,
) -> None:
    tasks = []  # (tensor name, first row, end row, [(fd, offset)] f32, {gs: ([(fd, offset)] q8, [(fd, offset)] scales)})
    for name in source.config.shapes():
        t = source.tensor(name)
        f32: list = []
        by_gs: dict[int, tuple[list, list]] = {}
        for path, layout in layouts.items():
            for sec in layout.sections_of(name):
                if sec.encoding == F32:
                    f32.append((outputs[path].fd, sec.offset))
                else:
                    q8, scale = by_gs.setdefault(layout.group_size, ([], []))
                    (q8 if sec.encoding == Q8 else scale).append((outputs[path].fd, sec.offset))
        if by_gs:
            result.max_errors.setdefault(name, 0.0)
        source_gs = getattr(t, "group_size", None)  # a Q8_0 source reads whole groups only
        for start, stop in row_chunks(t, chunk_alignment([*by_gs, *([source_gs] if source_gs else [])])):
            tasks.append((name, start, stop, f32, by_gs))
    total = 4 * sum(source.tensor(n).numel for n in source.config.shapes())

    def chunk_job(task: tuple) -> tuple[int, float]:
        name, start, stop, f32, by_gs = task
        t = source.tensor(name)
        scratch = process_scratch()
        first, count = start * t.cols, (stop - start) * t.cols
        carried = getattr(t, "group_size", None)  # a Q8_0 source tensor: its q and scales as they are
        if carried is not None:
            q_src, s_src = t.read_q8(start, stop)
            if not all_finite(s_src):
                raise Llama2binError(f"{source.path}: tensor {t.name} has a NaN or Inf scale")
        values = t.read_rows_into(start, stop, scratch.get("values", count, np.float32)).reshape(-1)
        err = 0.0
        if carried is None and not by_gs and not all_finite(values):
            raise Llama2binError(f"{source.path}: tensor {t.name} contains NaN or Inf")
        for fd, offset in f32:
            pwrite_all(fd, values, offset + 4 * first)
            _start_writeback(fd, offset + 4 * first, values.nbytes)
        for gs, (q8, scale) in by_gs.items():
            if gs == carried:  # same group size: no second quantization, the bytes carry over
                q, s = q_src, s_src
            else:
                q = scratch.get(f"q{gs}", count, np.int8)
                s = scratch.get(f"s{gs}", count // gs, np.float32)
                gerr = quantize_into(values, gs, q, s, scratch)
                if gerr is None:
                    raise Llama2binError(f"{source.path}: tensor {t.name} contains NaN or Inf")
                err = max(err, gerr)
            for fd, offset in q8:
                pwrite_all(fd, q, offset + first)
                _start_writeback(fd, offset + first, q.nbytes)
            for fd, offset in scale:
                pwrite_all(fd, s, offset + 4 * (first // gs))
        return values.nbytes, err

    cfg = source.config
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ForkPool(tasks, chunk_job, workers or default_workers(total)))
        # v0's rope tables here while the workers stream; not in a forked child: torch's OpenMP (the
        # fallback without MKL) may hang there if this process used it before. In chunks of rows, so
        # a huge declared max_seq_len costs disk, never memory.
        rope_sections = _rope_sections(layouts)
        if rope_sections:
            for row, cos, sin in rope_chunks(cfg.head_size, cfg.max_seq_len, cfg.rope_theta,
                                                  scaling=cfg.rope_scaling):
                for path, sec in rope_sections:
                    table = cos if sec.tensor == ROPE_COS else sin
                    pwrite_all(outputs[path].fd, table, sec.offset + 4 * row * table.shape[1])
        progress = Progress(total, "export", quiet=quiet)  # after the forks: tqdm may start a thread
        try:
            for task, (nbytes, err) in zip(tasks, pool.results(), strict=True):
                name = task[0]
                if name in result.max_errors:
                    result.max_errors[name] = max(result.max_errors[name], err)
                progress.update(nbytes)
        finally:
            progress.close()


def _rope_sections(layouts: dict[str, Layout]) -> list:
    return [(path, sec) for path, layout in layouts.items() for sec in layout.sections if sec.tensor in (ROPE_COS, ROPE_SIN)]
