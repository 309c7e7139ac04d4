"""The registry: every output format by name, and which .bin format a file's first bytes are.

Adding a format = one module declaring a `FormatSpec` (+ its golden test), listed in
`_MODULES`. Everything else - the writer, the reader's identification, `inspect`, the CLI's
--version choices and help, the pipeline's file names - asks this registry. It never imports
the reader (the reader imports it): opening an existing output is families.py's `open_output`.
"""

from __future__ import annotations

from ..errors import Llama2binError
from . import hf, v0, v1, v1f, v2
from .layout import magic_field, version_field
from .spec import FormatSpec

_MODULES = (v0, v1, v1f, v2, hf)

FORMATS: dict[str, FormatSpec] = {m.SPEC.name: m.SPEC for m in _MODULES}

def format_spec(name: int | str) -> FormatSpec:
    """The registered format called `name` (0, 2 and "0", "2" alike)."""
    try:
        return FORMATS[str(name)]
    except KeyError:
        raise Llama2binError(f"unknown version {name!r} (known: {', '.join(FORMATS)})") from None


def json_version(name: str) -> int | str:
    """The `version` value JSON outputs have always carried: an int for 0, 1, 2 (as before the
    registry), the name otherwise ("1f", "hf"). New JSON carries `format` (the name) beside it."""
    return int(name) if name.isdigit() else name


def identify(head: bytes, where: str) -> FormatSpec:
    """Which .bin format a file is, from its first bytes alone (up to 256).

    The most specific header wins: a format matches when every constant field of its header
    table (magic, version, 1f's zero group size) holds; a file without the "ak42" magic is v0.
    """
    if len(head) < 4:
        raise Llama2binError(f"{where}: too short ({len(head)} bytes) to hold a header")
    tables = [(spec, spec.header) for spec in FORMATS.values() if spec.header is not None]  # the .bin family
    tables.sort(key=lambda pair: -sum(f.constant for f in pair[1].fields))
    magic = magic_field()
    if magic.read(head) == magic.low:
        with_magic = [(spec, header) for spec, header in tables if header.has("magic")]
        size = max(header.size for _, header in with_magic)
        if len(head) < size:
            raise Llama2binError(f"{where}: truncated header ({len(head)} of {size} bytes)")
        for spec, header in with_magic:
            if header.matches(head):
                return spec
        version = version_field(0).read(head)
        known = ", ".join(f"{spec.header_version} ({spec.name})" for spec, _ in with_magic)
        raise Llama2binError(f"{where}: unsupported version {version} at byte 4 (this reads {known})")
    for spec, header in tables:
        if not header.has("magic"):
            if len(head) < header.size:
                raise Llama2binError(f"{where}: too short ({len(head)} bytes) for a v{spec.name} header")
            return spec
    raise Llama2binError(f"{where}: no 'ak42' magic")
