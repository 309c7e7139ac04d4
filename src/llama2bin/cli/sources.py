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
        help="accept a rope_theta other than 10000 (run.c/runq.c hard-code 10000; v0's rope tables are then computed at "
        "it, for the ports that read them); recorded as an accepted departure",
    )


def named_source(args: argparse.Namespace) -> tuple[SourceKind, str] | None:
    """The registered kind and path the source flag names; None when none was given."""
    return next(((kind, path) for kind in SOURCES.values() if (path := getattr(args, kind.dest))), None)


def source_paths(args: argparse.Namespace) -> list[str]:
    """The source file or directory, as a list of inputs for check_outputs (an unguarded source
    could be overwritten)."""
    named = named_source(args)
    return [named[1]] if named else []


def open_source_from_args(args: argparse.Namespace) -> Source:
    named = named_source(args)
    assert named is not None, "argparse requires a source flag"
    kind, path = named
    return kind.open(path, max_seq_len=args.max_seq_len, allow_rope_theta=args.allow_rope_theta)
