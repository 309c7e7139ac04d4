"""The source arguments every command that reads a model shares (--checkpoint, --meta-llama, --hf,
--bin) and opening the source they name. The command modules import this; it imports none of them."""

from __future__ import annotations

import argparse

from . import arg_types


def add_source_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    src = p.add_argument_group("source (exactly one)" if required else "source (optional)")
    g = src.add_mutually_exclusive_group(required=required)
    g.add_argument("--checkpoint", metavar="CKPT.pt", help="llama2.c training checkpoint")
    g.add_argument("--meta-llama", metavar="DIR", help="Meta Llama 2 directory (params.json, consolidated.NN.pth)")
    g.add_argument("--hf", metavar="DIR", help="Hugging Face directory (config.json, *.safetensors or *.bin)")
    g.add_argument("--bin", metavar="FILE.bin", help="an existing llama2.c .bin of any version (e.g. stories15M.bin)")
    p.add_argument("--max-seq-len", type=arg_types.max_seq_len, help="override max_seq_len (C readers size their KV cache by it)")
    p.add_argument(
        "--allow-rope-theta",
        action="store_true",
        help="accept a rope_theta other than 10000 (run.c/runq.c hard-code 10000; v0's rope tables are then computed at "
        "it, for the ports that read them); recorded as an accepted departure",
    )


def source_paths(args: argparse.Namespace) -> list[str]:
    """The source file or directory, as a list of inputs for check_outputs: every source flag
    counts (an unguarded source could be overwritten)."""
    flags = ("checkpoint", "meta_llama", "hf", "bin")
    return [path for path in (getattr(args, flag, None) for flag in flags) if path]


def open_source_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..sources import open_source

    if args.checkpoint:
        kind, path = "llama2c", args.checkpoint
    elif args.meta_llama:
        kind, path = "meta", args.meta_llama
    elif args.bin:  # an existing .bin: read through the reader, so it is not one of sources/' kinds
        from ..formats.bin_source import BinSource

        return BinSource(args.bin, max_seq_len=args.max_seq_len, allow_rope_theta=args.allow_rope_theta)
    else:
        kind, path = "hf", args.hf
    return open_source(kind, path, max_seq_len=args.max_seq_len, allow_rope_theta=args.allow_rope_theta)
