"""An output read back: one object per opened output, whatever its family.

`families.open_output(path)` identifies the format and returns its family's `Output`: a .bin is
a `reader.BinFile`, a Hugging Face directory an `hf.HfDirectory`. Everything after that - the
tensor check, the functional check, the C check, `inspect` - works on this interface, so one
verify opens an output once and nothing above formats/ asks what kind of output it holds.
Tensors are `TensorRef`s (sources/base.py), the same lazy vocabulary the sources and the
forward pass speak.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any

from ..model import ModelConfig
from ..sources.base import TensorEncoding, TensorRef
from .layout import PARAM_NAMES
from .spec import FormatSpec


class Output(ABC):
    spec: FormatSpec
    path: str
    config: ModelConfig  # what the output stores (rope_theta and norm_eps: the defaults unless it holds them)
    group_size: int | None  # of its Q8_0 tensors; None when it holds none
    size: int  # bytes verify and the reports count for it
    hashed_path: str  # the file whose sha256 verify records

    @property
    @abstractmethod
    def tensors(self) -> dict[str, TensorRef]:
        """Every canonical weight (`output` only when unshared), in canonical order, as stored."""

    def stored_name(self, name: str) -> str:
        """The tensor's name inside the output (messages name what a user can find there)."""
        return self.tensors[name].name

    def expected_encoding(self, name: str) -> TensorEncoding:
        """How the format says tensor `name` is stored; the tensor check refuses anything else."""
        return self.tensors[name].encoding

    @abstractmethod
    def header_json(self) -> dict[str, Any]:
        """The output's own header (config.json for a directory), as verify JSON records it."""

    def header_failures(self, want: ModelConfig) -> list[str]:
        """What the header says that the source does not (empty: it describes the same model)."""
        return [f"header {name} is {getattr(self.config, name)}, the source has {getattr(want, name)}"
                for name in (*PARAM_NAMES, "shared_classifier") if getattr(self.config, name) != getattr(want, name)]

    def rope_tables(self) -> tuple[TensorRef, TensorRef] | None:
        """(freqs_cos, freqs_sin) when the output stores rotary tables (v0), else None."""
        return None

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What `inspect` shows: format in words, header, size and every tensor."""

    @property
    def display_name(self) -> str:
        """The output's base name, as verify JSON and reports give it (no directories)."""
        return os.path.basename(os.path.normpath(self.path))

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
