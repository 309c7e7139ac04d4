"""Checkpoint sources: each opens a checkpoint as a config plus a lazy name -> tensor map."""

from __future__ import annotations

from .base import Source, TensorRef
from .llama2c import Llama2cSource

__all__ = ["Source", "TensorRef", "open_source"]


def open_source(kind: str, path: str, *, max_seq_len: int | None = None, **options: object) -> Source:
    """Open `path` as a checkpoint of `kind` ("llama2c", "meta" or "hf")."""
    if kind == "llama2c":
        return Llama2cSource(path, max_seq_len=max_seq_len)
    raise ValueError(f"unknown source kind {kind!r}")
