"""Checkpoint sources: each opens a checkpoint as a config plus a lazy name -> tensor map."""

from __future__ import annotations

from .base import Source, TensorRef
from .llama2c import Llama2cSource

__all__ = ["Source", "TensorRef", "open_source"]


def open_source(kind: str, path: str, *, max_seq_len: int | None = None, **options: object) -> Source:
    """Open `path` as a checkpoint of `kind` ("llama2c", "meta" or "hf").

    Options: allow_rope_theta (bool) accepts a rotary base other than 10000 in Meta/HF configs,
    recording it in config.accepted_departures (llama2.c checkpoints have no such field).
    """
    allow_rope_theta = bool(options.pop("allow_rope_theta", False))
    if options:
        raise TypeError(f"unknown source option(s): {', '.join(sorted(options))}")
    if kind == "llama2c":
        return Llama2cSource(path, max_seq_len=max_seq_len)
    if kind == "meta":
        from .meta import MetaSource

        return MetaSource(path, max_seq_len=max_seq_len, allow_rope_theta=allow_rope_theta)
    if kind == "hf":
        from .hf import HfSource

        return HfSource(path, max_seq_len=max_seq_len, allow_rope_theta=allow_rope_theta)
    raise ValueError(f"unknown source kind {kind!r}")
