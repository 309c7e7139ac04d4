"""Export's command line as llama2.c users type it (issue 12.6): `--version 2 out.bin` works,
`--version` repeats and takes comma lists, and an output named for another version is refused."""

from __future__ import annotations

import argparse
import os
import re

from ..errors import Llama2binError
from ..formats import DIRECTORY, FORMATS
from ..outputs_guard import Output, check_outputs
from . import arg_types
from .sources import open_source_from_args, source_paths

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
    p.add_argument("--group-size", type=arg_types.group_size, default=None,
                   help="Q8_0 group size (default 64, or a Q8_0 --bin source's own), halved until it divides dim; "
                   "the default also backs off until it divides hidden_dim for v2 (runq.c)")
    p.add_argument("--allow-requantize", action="store_true",
                   help="a Q8_0 --bin source may be written at another group size (quantizing twice)")


def cmd_export(args: argparse.Namespace) -> int:
    from ..formats.writer import export

    args.version, args.outputs = split_versions_and_outputs(args.version, args.outputs)
    if not args.outputs:
        raise Llama2binError("no output path given (llama2bin export [--version V] OUT.bin --checkpoint CKPT.pt)")
    if len(args.outputs) != len(args.version):
        raise Llama2binError(
            f"{len(args.outputs)} output path(s) but {len(args.version)} version(s): give one version per output"
        )
    from ..formats.hf_export import check_hf_target, export_hf

    for v in args.version:
        if v not in FORMATS:
            raise Llama2binError(f"unknown version {v!r} (known: {', '.join(FORMATS)})")
    pairs = list(zip(args.version, args.outputs, strict=True))
    for v, out in pairs:
        check_output_name(out, v, list(FORMATS))
    check_outputs(source_paths(args), [Output(out, FORMATS[v].kind == DIRECTORY, f"--version {v} writes a directory")
                                       for v, out in pairs])
    dir_targets = [(v, out) for v, out in pairs if FORMATS[v].kind == DIRECTORY]
    bin_targets = [(v, out) for v, out in pairs if FORMATS[v].kind != DIRECTORY]
    for _, out in dir_targets:  # refuse a bad directory target before writing any .bin
        check_hf_target(out)
    with open_source_from_args(args) as source:
        if bin_targets:  # every .bin format in one pass over the source
            result = export(source, bin_targets, group_size=args.group_size, threads=args.threads, quiet=args.quiet,
                            allow_requantize=args.allow_requantize)
            line = result.summary_line()
            if line:
                print(line)
            for path, layout in result.layouts.items():
                print(f"wrote {path} ({FORMATS[layout.format].label}, {layout.size} bytes)")
        for _, out in dir_targets:  # hf, the one directory format: a directory of float32 safetensors, its own pass
            hf_result = export_hf(source, out, quiet=args.quiet)
            print(f"wrote {out}/ (hf, model.safetensors {hf_result.size} bytes)")
    return 0
