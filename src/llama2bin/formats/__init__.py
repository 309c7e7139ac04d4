"""The .bin versions, each a small declarative module over the shared layout description."""

from __future__ import annotations

from ..errors import Llama2binError
from . import v0, v1, v2
from .layout import FormatSpec, Layout

FORMATS: dict[int, FormatSpec] = {spec.version: spec for spec in (v0.SPEC, v1.SPEC, v2.SPEC)}

__all__ = ["FORMATS", "FormatSpec", "Layout", "format_spec"]


def format_spec(version: int | str) -> FormatSpec:
    try:
        return FORMATS[int(version)]
    except (KeyError, ValueError):
        known = ", ".join(str(v) for v in FORMATS)
        raise Llama2binError(f"unknown version {version!r} (known: {known})") from None
