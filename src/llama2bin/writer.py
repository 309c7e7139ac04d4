"""Stream a source into one or more .bin versions in a single pass.

Each source tensor is read once, in row chunks; each chunk is written as float32 to every
v0 target and quantized once for every Q8_0 target (v1 and v2 share a quantization).
Sections are filled with positional writes at offsets the shared layout computed, so v1's
split q/scale regions and v2's interleaved ones cost the same. Peak memory is a few chunks
per worker thread, independent of model and tensor size.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .atomic import AtomicOutput, check_free_space
from .errors import Llama2binError
from .formats import format_spec
from .formats.layout import F32, Q8, ROPE_COS, ROPE_SIN, SCALE, Layout
from .formats.q8_0 import choose_group_size, max_group_error, quantize
from .formats.rope import rope_tables
from .model import ModelConfig
from .progress import Progress
from .sources.base import Source, TensorRef, row_chunks


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


def group_size_for(cfg: ModelConfig, versions: list[int], requested: int) -> int | None:
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
    return gs


def _pwrite(fd: int, data: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(data)).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def export(
    source: Source,
    targets: list[tuple[int, str]],
    group_size: int = 64,
    threads: int | None = None,
    quiet: bool = False,
) -> ExportResult:
    """Write `source` as each (version, path) in `targets`; all or nothing."""
    cfg = source.config
    versions = [v for v, _ in targets]
    gs = group_size_for(cfg, versions, group_size)
    layouts = {path: format_spec(v).layout(cfg, gs) for v, path in targets}
    check_free_space({path: layout.size for path, layout in layouts.items()})
    result = ExportResult(layouts, gs)

    outputs = {path: AtomicOutput(path) for path in layouts}
    try:
        for path, layout in layouts.items():
            outputs[path].allocate(layout.size)
            _pwrite(outputs[path].fd, np.frombuffer(layout.header, np.uint8), 0)
        _stream_tensors(source, layouts, outputs, gs, result, threads or min(2, os.cpu_count() or 1), quiet)
        _write_rope(cfg, layouts, outputs)
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
    threads: int,
    quiet: bool,
) -> None:
    names = list(source.config.shapes())
    total = sum(source.tensor(n).numel for n in names)
    progress = Progress(total * 4, "export", quiet=quiet)
    pending: deque[Future] = deque()

    def chunk_job(name: str, t: TensorRef, start: int, stop: int, f32: list, q8: list, scale: list) -> tuple[str, float]:
        values = t.read_rows(start, stop).reshape(-1)
        if not np.isfinite(values).all():
            raise Llama2binError(f"{source.path}: tensor {t.name} contains NaN or Inf")
        first = start * t.cols
        for fd, offset in f32:
            _pwrite(fd, values, offset + 4 * first)
        err = 0.0
        if q8:
            q, s = quantize(values, gs)
            for fd, offset in q8:
                _pwrite(fd, q, offset + first)
            for fd, offset in scale:
                _pwrite(fd, s, offset + 4 * (first // gs))
            err = max_group_error(values, q, s, gs)
        progress.update(values.size * 4)
        return name, err

    def drain(limit: int) -> None:
        while len(pending) > limit:
            name, err = pending.popleft().result()
            if name in result.max_errors:
                result.max_errors[name] = max(result.max_errors[name], err)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        try:
            for name in names:
                t = source.tensor(name)
                targets: dict[str, list] = {F32: [], Q8: [], SCALE: []}
                for path, layout in layouts.items():
                    for sec in layout.sections_of(name):
                        targets[sec.encoding].append((outputs[path].fd, sec.offset))
                if targets[Q8]:
                    result.max_errors.setdefault(name, 0.0)
                for start, stop in row_chunks(t, gs if targets[Q8] else 1):
                    pending.append(pool.submit(chunk_job, name, t, start, stop, targets[F32], targets[Q8], targets[SCALE]))
                    drain(2 * threads)  # bounded in-flight chunks: bounded memory
            drain(0)
        finally:
            for f in pending:
                f.cancel()
            progress.close()


def _write_rope(cfg: ModelConfig, layouts: dict[str, Layout], outputs: dict[str, AtomicOutput]) -> None:
    rope_sections = [
        (path, sec) for path, layout in layouts.items() for sec in layout.sections if sec.tensor in (ROPE_COS, ROPE_SIN)
    ]
    if not rope_sections:
        return
    cos, sin = rope_tables(cfg.head_size, cfg.max_seq_len)
    for path, sec in rope_sections:
        _pwrite(outputs[path].fd, cos if sec.tensor == ROPE_COS else sin, sec.offset)
