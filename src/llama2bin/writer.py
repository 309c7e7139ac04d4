"""Stream a source into one or more .bin versions in a single pass.

Each source tensor is read once, in row chunks; each chunk is written as float32 to every
v0 target and quantized once for every Q8_0 target (v1 and v2 share a quantization).
Sections are filled with positional writes at offsets the shared layout computed, so v1's
split q/scale regions and v2's interleaved ones cost the same. Peak memory is a few chunks
per worker process, independent of model and tensor size.

Speed: chunks are read, converted, quantized (formats.q8_0.quantize_into, block by block in
reused buffers) and written by worker processes (parallel.ForkPool: the GIL makes threads
useless for this), each writing its own chunks at their offsets and handing them to the
kernel for writeback at once (so the fsync at commit finds little left to do); v0's rope
tables (torch, ~1 s to import) are computed by the parent meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .atomic import AtomicOutput, check_free_space
from .constants import DEFAULT_GROUP_SIZE
from .errors import Llama2binError
from .formats import format_spec
from .formats.layout import F32, Q8, ROPE_COS, ROPE_SIN, SCALE, Layout
from .formats.q8_0 import all_finite, choose_group_size, process_scratch, quantize_into
from .formats.rope import rope_tables
from .model import ModelConfig
from .parallel import ForkPool, default_workers
from .progress import Progress
from .sources.base import Source, row_chunks


@dataclass
class ExportResult:
    layouts: dict[str, Layout]
    group_size: int | None
    # per quantized tensor: the seed's "max error" (largest |w - q*scale|)
    max_errors: dict[str, float] = field(default_factory=dict)

    def summary_line(self) -> str | None:
        if not self.max_errors:
            return None
        worst = max(self.max_errors, key=lambda k: self.max_errors[k])
        return f"max quantization group error across all weights: {self.max_errors[worst]} ({worst})"


def group_size_for(cfg: ModelConfig, versions: list[str], requested: int) -> int | None:
    """The seed's back-off, then refuse any quantized tensor the group size does not divide."""
    if not any(format_spec(v).quantized for v in versions):
        return None
    gs = choose_group_size(cfg.dim, requested)
    if gs != requested:
        print(f"BACKOFF: reducing group size to {gs} to fit dim {cfg.dim}", file=sys.stderr)
    for name, shape in cfg.shapes().items():
        numel = int(np.prod(shape))
        if len(shape) == 2 and numel % gs:
            raise Llama2binError(f"tensor {name} has {numel} elements, not a multiple of group size {gs}")
    for v in versions:
        if format_spec(v).groups_within_rows and cfg.hidden_dim % gs:
            raise Llama2binError(
                f"version {v}: hidden_dim {cfg.hidden_dim} is not a multiple of group size {gs}, so runq.c's groups "
                f"would straddle rows of feed_forward.w2; choose --group-size dividing both {cfg.dim} and {cfg.hidden_dim}"
            )
    return gs


def _pwrite(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
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
    group_size: int = DEFAULT_GROUP_SIZE,
    threads: int | None = None,
    quiet: bool = False,
) -> ExportResult:
    """Write `source` as each (format name, path) in `targets` (.bin formats); all or nothing."""
    cfg = source.config
    versions = [str(v) for v, _ in targets]
    gs = group_size_for(cfg, versions, group_size)
    layouts = {path: format_spec(v).layout(cfg, gs) for v, path in targets}
    check_free_space({path: layout.size for path, layout in layouts.items()})
    result = ExportResult(layouts, gs)

    outputs = {path: AtomicOutput(path) for path in layouts}
    try:
        for path, layout in layouts.items():
            outputs[path].allocate(layout.size)
            _pwrite(outputs[path].fd, np.frombuffer(layout.header, np.uint8), 0)
        _stream_tensors(source, layouts, outputs, gs, result, threads, quiet)
        for out in outputs.values():
            out.commit()
    except BaseException:
        for out in outputs.values():
            out.abort()
        raise
    return result


def _stream_tensors(
    source: Source,
    layouts: dict[str, Layout],
    outputs: dict[str, AtomicOutput],
    gs: int | None,
    result: ExportResult,
    workers: int | None,
    quiet: bool,
) -> None:
    tasks = []  # (tensor name, first row, end row, [(fd, offset)] per encoding)
    for name in source.config.shapes():
        t = source.tensor(name)
        targets: dict[str, list] = {F32: [], Q8: [], SCALE: []}
        for path, layout in layouts.items():
            for sec in layout.sections_of(name):
                targets[sec.encoding].append((outputs[path].fd, sec.offset))
        if targets[Q8]:
            result.max_errors.setdefault(name, 0.0)
        for start, stop in row_chunks(t, gs if targets[Q8] else 1):
            tasks.append((name, start, stop, targets[F32], targets[Q8], targets[SCALE]))
    total = 4 * sum(source.tensor(n).numel for n in source.config.shapes())

    def chunk_job(task: tuple) -> tuple[int, float]:
        name, start, stop, f32, q8, scale = task
        t = source.tensor(name)
        scratch = process_scratch()
        first, count = start * t.cols, (stop - start) * t.cols
        values = t.read_rows_into(start, stop, scratch.get("values", count, np.float32)).reshape(-1)
        err = 0.0
        if q8:
            q = scratch.get("q", count, np.int8)
            s = scratch.get("s", count // gs, np.float32)
            err = quantize_into(values, gs, q, s, scratch)
            if err is None:
                raise Llama2binError(f"{source.path}: tensor {t.name} contains NaN or Inf")
        elif not all_finite(values):
            raise Llama2binError(f"{source.path}: tensor {t.name} contains NaN or Inf")
        for fd, offset in f32:
            _pwrite(fd, values, offset + 4 * first)
            _start_writeback(fd, offset + 4 * first, values.nbytes)
        for fd, offset in q8:
            _pwrite(fd, q, offset + first)
            _start_writeback(fd, offset + first, q.nbytes)
        for fd, offset in scale:
            _pwrite(fd, s, offset + 4 * (first // gs))
        return values.nbytes, err

    cfg = source.config
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ForkPool(tasks, chunk_job, workers or default_workers(total)))
        # v0's rope tables here while the workers stream (importing torch takes ~1 s); not in a
        # forked child: torch's OpenMP may hang there if this process used it before
        rope = rope_tables(cfg.head_size, cfg.max_seq_len) if _rope_sections(layouts) else None
        progress = Progress(total, "export", quiet=quiet)  # after the forks: tqdm may start a thread
        try:
            for task, (nbytes, err) in zip(tasks, pool.results(), strict=True):
                name = task[0]
                if name in result.max_errors:
                    result.max_errors[name] = max(result.max_errors[name], err)
                progress.update(nbytes)
        finally:
            progress.close()
        if rope is not None:
            _write_rope(rope, layouts, outputs)


def _rope_sections(layouts: dict[str, Layout]) -> list:
    return [(path, sec) for path, layout in layouts.items() for sec in layout.sections if sec.tensor in (ROPE_COS, ROPE_SIN)]


def _write_rope(tables: tuple[np.ndarray, np.ndarray], layouts: dict[str, Layout], outputs: dict[str, AtomicOutput]) -> None:
    cos, sin = tables
    for path, sec in _rope_sections(layouts):
        _pwrite(outputs[path].fd, cos if sec.tensor == ROPE_COS else sin, sec.offset)
