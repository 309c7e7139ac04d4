"""The source arguments every command that reads a model shares (one flag per registered source
kind: --checkpoint, --meta-llama, --hf, --bin) and opening the source they name. The flags come
from the source registry (formats/source_registry.py); the command modules import this, it
imports none of them."""

from __future__ import annotations

import argparse

from ..formats.source_registry import SOURCES, SourceKind
from ..sources.base import Source
from . import arg_types


def add_source_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    src = p.add_argument_group("source (exactly one)" if required else "source (optional)")
    g = src.add_mutually_exclusive_group(required=required)
    for kind in SOURCES.values():
        g.add_argument(kind.flag, metavar=kind.metavar, help=kind.help)
    p.add_argument("--max-seq-len", type=arg_types.max_seq_len, help="override max_seq_len (C readers size their KV cache by it)")
    p.add_argument(
        "--allow-rope-theta",
        action="store_true",
        help="accept a RoPE the program computes differently: a rope_theta other than 10000 (run.c/runq.c hard-code "
        "10000; v0's rope tables are then computed at it, for the ports that read them) or rope scaling; with --target, "
        "whatever that target's RoPE gets wrong; recorded as an accepted departure and measured by verify",
    )


def named_source(args: argparse.Namespace) -> tuple[SourceKind, str] | None:
    """The registered kind and path the source flag names; None when none was given."""
    return next(((kind, path) for kind in SOURCES.values() if (path := getattr(args, kind.dest))), None)


def source_paths(args: argparse.Namespace) -> list[str]:
    """The source file or directory, as a list of inputs for check_outputs (an unguarded source
    could be overwritten)."""
    named = named_source(args)
    return [named[1]] if named else []


def add_target_arg(p: argparse.ArgumentParser, what: str) -> None:
    from ..formats.targets import TARGETS

    p.add_argument("--target", nargs="+", action="extend", metavar="T",
                   help=f"the program(s) the files are for: {', '.join(TARGETS)}. {what} The model is checked against "
                   "what each hard-codes (a RoPE it would compute wrongly is refused unless --allow-rope-theta)")


def split_targets(args: argparse.Namespace, outputs_attr: str) -> None:
    """--target values (repeatable, comma lists allowed) in args.target; paths it swallowed (as in
    `--target llama3.c out.bin`: anything ending .bin or with a slash) moved back to the outputs."""
    from ..formats.targets import target_spec

    if not getattr(args, "target", None):
        return
    tokens = [part for value in args.target for part in value.split(",") if part]
    cut = next((i for i, t in enumerate(tokens) if "/" in t or t.endswith(".bin")), len(tokens))
    for name in tokens[:cut]:
        target_spec(name)  # an unknown or unavailable target is one line naming it
    args.target = tokens[:cut]
    setattr(args, outputs_attr, [*getattr(args, outputs_attr), *tokens[cut:]])


def open_source_from_args(args: argparse.Namespace) -> Source:
    named = named_source(args)
    assert named is not None, "argparse requires a source flag"
    kind, path = named
    # With --target the model is checked against each target's RoPE (formats/targets.py), not
    # against run.c's 10000 when opened.
    allow = args.allow_rope_theta or bool(getattr(args, "target", None))
    return kind.open(path, max_seq_len=args.max_seq_len, allow_rope_theta=allow)


def check_targets(args: argparse.Namespace, source: Source) -> tuple:  # tuple[TargetCheck, ...]
    """--target: each named target checked against the opened model (refusing what it would get
    wrong without --allow-rope-theta), its warnings printed once; the source's config then records
    the targets' departures. Without --target: ()."""
    import sys

    from ..formats.targets import checked_targets, with_target_departures

    if not getattr(args, "target", None):
        return ()
    checks = checked_targets(args.target, source.config, args.allow_rope_theta, source.path)
    for check in checks:
        for warning in check.warnings:
            print(f"llama2bin: warning: {warning}", file=sys.stderr)
    source.config = with_target_departures(source.config, checks)
    return checks
