"""The formats stage: the output formats (one small declarative module each, registered in
registry.py), writing them (writer.py, hf_export.py) and reading them back (reader.py,
bin_source.py).

This package face re-exports the registry only; the reader and writer are imported from
their modules (llama2bin.formats.reader, ...), so importing the registry never loads them.
"""

from __future__ import annotations

from .layout import DIRECTORY, FILE, FormatSpec, Layout
from .registry import BIN_FORMATS, FORMATS, format_spec, identify, json_version

__all__ = ["BIN_FORMATS", "DIRECTORY", "FILE", "FORMATS", "FormatSpec", "Layout", "format_spec", "identify",
           "json_version"]
