"""Export's command line as llama2.c users type it (issue 12.6): `--version 2 out.bin` works,
`--version` repeats and takes comma lists, and an output named for another version is refused."""

from __future__ import annotations

import argparse
import os
import re

from . import cli_types
from .errors import Llama2binError

# A --version value: a format name such as 0, 2, 1f or hf. Anything else (a path: it has a dot or
# a slash) ends the list, so `--version 2 out.bin` works as llama2.c users type it.
_VERSION_TOKEN = re.compile(r"^(?:[0-9]+[a-z]?|hf)$")
# The name the pipeline and llama2bin's docs give outputs: NAME.v<version>.bin
_NAMED_VERSION = re.compile(r"\.v([0-9]+[a-z]?|hf)\.bin$")


def split_versions_and_outputs(versions: list[str] | None, outputs: list[str]) -> tuple[list[str], list[str]]:
    """--version values (repeatable, comma lists allowed) and the outputs, with any paths the
    --version list swallowed moved back to the outputs. Default: version 0."""
    tokens = [part for value in versions or [] for part in value.split(",") if part]
    cut = next((i for i, tok in enumerate(tokens) if not _VERSION_TOKEN.match(tok)), len(tokens))
    found, swallowed = tokens[:cut], tokens[cut:]
    return found or ["0"], [*outputs, *swallowed]


def check_output_name(path: str, version: str, known: list[str]) -> None:
    """Refuse `a.v0.bin` written as version 2: the name would lie about the content."""
    m = _NAMED_VERSION.search(os.path.basename(os.path.normpath(path)))
    if m and m.group(1) in known and m.group(1) != version:
        raise Llama2binError(f"{path}: the file name says version {m.group(1)} but it would be written as version "
                             f"{version}; rename it or change --version")


def add_export_format_args(p: argparse.ArgumentParser, formats: list[str]) -> None:
    p.add_argument("--version", nargs="+", action="extend", metavar="V",
                   help=f"format version(s), one per output in order: {', '.join(formats)} (default 0; see below). "
                   "Repeatable, comma lists work, and paths after it are outputs: --version 2 out.bin, "
                   "--version 0 1 2, --version 0,2")
    p.add_argument("--group-size", type=cli_types.group_size, default=None,
                   help="Q8_0 group size (default 64, or a Q8_0 --bin source's own), halved until it divides dim; "
                   "the default also backs off until it divides hidden_dim for v2 (runq.c)")
    p.add_argument("--allow-requantize", action="store_true",
                   help="a Q8_0 --bin source may be written at another group size (quantizing twice)")
