"""Checkpoint sources: each opens a checkpoint as a config plus a lazy name -> tensor map.

The readers live here, one module per kind (llama2c.py, meta.py, hf.py, with torchzip.py and
safetensors.py below them); which kinds exist, their CLI flags and how each is opened is the
source registry's (formats/source_registry.py: `open_source`), since one kind, an existing
.bin, reads through the format reader of the next stage.
"""

from __future__ import annotations

from .base import Source, SourceQuantization, TensorEncoding, TensorRef

__all__ = ["Source", "SourceQuantization", "TensorEncoding", "TensorRef"]
