"""Export's command line as llama2.c users type it (issue 12.6): `--version 2 out.bin` works,
`--version` repeats and takes comma lists, and an output named for another version is refused."""

from __future__ import annotations

import argparse
import os
import re
import sys

from ..errors import Llama2binError
from ..formats import FORMATS, FormatSpec
from ..outputs_guard import Output, check_outputs
from . import arg_types
from .sources import add_target_arg, check_targets, open_source_from_args, source_paths, split_targets

# A --version value that is not a registered name but looks like one (2b, 7): reported as an
# unknown version, not taken for a path. Anything else (a path: it has a dot or a slash) ends
# the list, so `--version 2 out.bin` works as llama2.c users type it.
_VERSION_LIKE = re.compile(r"^[0-9]+[a-z]?$")


def _is_version(token: str) -> bool:
    return token in FORMATS or bool(_VERSION_LIKE.match(token))


def split_versions_and_outputs(versions: list[str] | None, outputs: list[str]) -> tuple[list[str], list[str]]:
    """--version values (repeatable, comma lists allowed) and the outputs, with any paths the
    --version list swallowed moved back to the outputs. Default: version 0."""
    tokens = [part for value in versions or [] for part in value.split(",") if part]
    cut = next((i for i, tok in enumerate(tokens) if not _is_version(tok)), len(tokens))
    found, swallowed = tokens[:cut], tokens[cut:]
    return found or ["0"], [*outputs, *swallowed]


def check_output_name(path: str, spec: FormatSpec) -> None:
    """Refuse `a.v0.bin` written as version 2: the name would lie about the content."""
    base = os.path.basename(os.path.normpath(path))
    named = [other for other in FORMATS.values() if (suffix := other.name_suffix()) and base.endswith(suffix)]
    said = max(named, key=lambda other: len(other.name_suffix() or ""), default=None)  # .v1f.bin over .f.bin
    if said is not None and said is not spec:
        raise Llama2binError(f"{path}: the file name says version {said.name} but it would be written as version "
                             f"{spec.name}; rename it or change --version")


def export_targets(versions: list[str] | None, outputs: list[str]) -> list[tuple[FormatSpec, str]]:
    """(format, path) per output, from export's command line as llama2.c users type it."""
    versions, outputs = split_versions_and_outputs(versions, outputs)
    if not outputs:
        raise Llama2binError("no output path given (llama2bin export [--version V] OUT.bin --checkpoint CKPT.pt)")
    if len(outputs) != len(versions):
        raise Llama2binError(
            f"{len(outputs)} output path(s) but {len(versions)} version(s): give one version per output"
        )
    for v in versions:
        if v not in FORMATS:
            raise Llama2binError(f"unknown version {v!r} (known: {', '.join(FORMATS)})")
    targets = [(FORMATS[v], out) for v, out in zip(versions, outputs, strict=True)]
    for spec, out in targets:
        check_output_name(out, spec)
    return targets


def add_export_format_args(p: argparse.ArgumentParser, formats: list[str]) -> None:
    from ..formats.source_registry import carrying_q8_0

    q8_flags = "/".join(kind.flag for kind in carrying_q8_0())
    p.add_argument("--version", nargs="+", action="extend", metavar="V",
                   help=f"format version(s), one per output in order: {', '.join(formats)} (default 0; see below). "
                   "Repeatable, comma lists work, and paths after it are outputs: --version 2 out.bin, "
                   "--version 0 1 2, --version 0,2")
    p.add_argument("--group-size", type=arg_types.group_size, default=None,
                   help=f"Q8_0 group size (default 64, or a Q8_0 {q8_flags} source's own), halved until it divides dim; "
                   "the default also backs off until it divides hidden_dim for v2 (runq.c)")
    add_target_arg(p, "Picks the format(s) instead of --version (one output per distinct format).")
    p.add_argument("--allow-requantize", action="store_true",
                   help=f"a Q8_0 {q8_flags} source may be written at another group size (quantizing twice)")


def _versions_of_targets(args: argparse.Namespace) -> list[str] | None:
    """--target picks the formats (one output per distinct format, in the order the targets first
    name them); --version then is not given. None: no --target (the versions as given)."""
    from ..formats.targets import target_spec

    split_targets(args, "outputs")
    if not args.target:
        return args.version
    if args.version:
        raise Llama2binError("give --target or --version, not both (a target picks its format)")
    return list(dict.fromkeys(target_spec(t).format for t in args.target))


def _implied_kv_warnings(cfg, specs: list[FormatSpec]) -> list[str]:  # type: ignore[no-untyped-def]
    """--version alone: v0 and v2 are for run.c and runq.c, whose KV cache is still worth a warning."""
    from ..formats.targets import IMPLIED, TARGETS, kv_cache_warning

    names = dict.fromkeys(IMPLIED[s.name] for s in specs if s.name in IMPLIED)
    return [w for n in names if (w := kv_cache_warning(TARGETS[n], cfg)) is not None]


def cmd_export(args: argparse.Namespace) -> int:
    from ..formats.families import ExportOptions, write_outputs

    targets = export_targets(_versions_of_targets(args), args.outputs)
    options = ExportOptions(group_size=args.group_size, threads=args.threads, quiet=args.quiet,
                            allow_requantize=args.allow_requantize)
    inputs = source_paths(args)
    check_outputs(inputs, [Output(out, spec.directory, f"--version {spec.name} writes a directory") for spec, out in targets])
    with open_source_from_args(args) as source:
        checks = check_targets(args, source)
        if not checks:
            for warning in _implied_kv_warnings(source.config, [spec for spec, _ in targets]):
                print(f"llama2bin: warning: {warning}", file=sys.stderr)
        exported = write_outputs(source, targets, options)
    for line in exported.lines:
        print(line)
    for spec, out in targets:
        readers = [c for c in checks if c.target.format == spec.name]
        if readers:
            print(f"{out}: for {', '.join(c.target.name for c in readers)}"
                  + "".join(f" (departure: {d})" for c in readers for d in c.departures))
    return 0
