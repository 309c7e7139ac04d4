"""The formats stage: the output formats (one small declarative module each, registered in
registry.py, grouped into families in spec.py), writing them (writer.py, hf_export.py),
reading them back (reader.py, hf_directory.py: `Output`s, opened by families.py), and the
source registry (source_registry.py, with bin_source.py: a .bin read as a checkpoint).

This package face re-exports the format registry only; the reader, the writer and the
families are imported from their modules (llama2bin.formats.families, ...), so importing the
registry never loads them.
"""

from __future__ import annotations

from .layout import Layout
from .registry import FORMATS, format_spec, identify, json_version
from .spec import HF_DIRECTORY, LLAMA2C_BIN, Family, FormatSpec

__all__ = ["FORMATS", "HF_DIRECTORY", "LLAMA2C_BIN", "Family", "FormatSpec", "Layout", "format_spec",
           "identify", "json_version"]
