"""`llama2bin`: the command line over the library. Thin by design: parse, call, report.

Every user-facing failure is a `Llama2binError` (or an OS error about a named file) and
becomes one line on stderr and exit status 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from .. import __version__
from .errors import ErrorLineParser, configure_logging, run_reporting_errors
from .fetch import add_fetch_parser

DESCRIPTION = "Convert LLaMA checkpoints to llama2.c .bin files."
# Commands that parse without the verify and eval-tokens parsers (any other word, a typo
# included, gets the whole parser and so argparse's full list of choices).
LEAN_COMMANDS = ("export", "reverify", "c-check", "inspect", "tokenizer", "demo", "report", "summary")


# The command functions, imported on first use: `llama2bin fetch` never loads the modules the
# others need. They stay attributes of this module (PEP 562), so a test or an embedding program
# can replace one before calling main().
_COMMANDS = {"cmd_export": ".export", "cmd_report": ".report", "cmd_summary": ".report", "cmd_c_check": ".tools",
             "cmd_demo": ".tools", "cmd_inspect": ".tools", "cmd_tokenizer": ".tools"}


def __getattr__(name: str) -> object:
    if name in _COMMANDS:
        import importlib

        return getattr(importlib.import_module(_COMMANDS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def version_help() -> str:
    from ..formats import FORMATS

    return "\n".join(
        f"  {name}: {spec.description}{'; OUT is a directory' if spec.directory else ''}\n"
        f"      read by {spec.read_by}; loses {spec.loses}"
        for name, spec in FORMATS.items()
    )


def cmd_reverify(args: argparse.Namespace) -> int:
    from .reverify import run_plan

    return run_plan(args.plan, main)  # each model is one `llama2bin verify` run, errors and all



def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; for a `command` of LEAN_COMMANDS (the subcommand about to run)
    without the parsers of `verify` and `eval-tokens`: building them imports the checks' numerics
    (~0.1 s of constant tables), which every export and report job would pay for nothing."""
    from ..formats import FORMATS
    from . import arg_types
    from .export import add_export_format_args
    from .sources import add_source_args
    from .verify import add_parsers as add_verify_parsers

    this = sys.modules[__name__]  # the command functions as attributes of this module (see __getattr__)
    parser = ErrorLineParser(prog="llama2bin", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "export",
        help="write one or more .bin versions in one pass over the checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write OUT.bin (several outputs pair up with several --version values).",
        epilog="versions:\n" + version_help(),
    )
    p.add_argument("outputs", nargs="*", metavar="OUT.bin")
    add_source_args(p)
    add_export_format_args(p, list(FORMATS))
    p.add_argument("--threads", type=arg_types.threads, default=None,
                   help="worker processes (default: min(2, cores); 1 for models under 32 MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=this.cmd_export)

    if command not in LEAN_COMMANDS:
        add_verify_parsers(sub, add_source_args)

    p = sub.add_parser(
        "reverify",
        help="verify several models' outputs again against their sources (the pipeline's reverify target)",
        description="Run `verify` for every model of a JSON plan (see llama2bin/cli/reverify.py), continuing past a "
        "failing model; exit 1 if any file fails.",
    )
    p.add_argument("--plan", required=True, metavar="JSON", help="the plan, as JSON text")
    p.set_defaults(func=cmd_reverify)

    p = sub.add_parser(
        "c-check",
        help="run llama2bin's C consumer (mmap like run.c/runq.c) on .bin files and compare its logits with Python",
        description="Compile src/llama2bin/c/consumer.c with the system C compiler, run one forward pass per position "
        "of a token sequence on each file, and compare the logits with the Python reference forward on the same file. "
        "Without a compiler the check is skipped with a notice (exit 0) unless --require-cc.",
    )
    p.add_argument("files", nargs="+", metavar="OUT.bin")
    p.add_argument("--tokens", type=arg_types.token_id, nargs="+", metavar="ID",
                   help="token ids (default: 16 seeded random ids)")
    p.add_argument("--arithmetic", choices=("auto", "f32", "q8"), default="auto",
                   help="f32, or runq.c's q8 (Q8_0 files only); auto: q8 for Q8_0 files whose group size divides "
                   "hidden_dim (runq.c's matmul), else f32")
    p.add_argument("--target", nargs="+", metavar="T", help="run a program's arithmetic on both sides (each file: the "
                   "first target that reads its version): its RoPE (a hard-coded base such as llama3.c's 500000, or v0's "
                   "tables for `tables`) and, with auto, its activations")
    p.add_argument("--cc", metavar="CMD", help="C compiler command (default: $CC, else cc)")
    p.add_argument("--require-cc", action="store_true", help="fail instead of skipping when no compiler is found")
    p.add_argument("--json", nargs="+", metavar="FILE", help="write the check result (one per file)")
    p.set_defaults(func=this.cmd_c_check)

    p = sub.add_parser("inspect", help="show an output's format, header and tensor table (.bin file or hf directory)")
    p.add_argument("file", metavar="OUT")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=this.cmd_inspect)

    p = sub.add_parser("tokenizer", help="convert a tokenizer to the tokenizer.bin llama2.c-style programs read: "
                       "a sentencepiece tokenizer.model (llama2.c's convention), Llama 3's tiktoken tokenizer.model "
                       "or a byte-level BPE tokenizer.json (the Llama 3 ports' convention); the kind is detected from "
                       "the content (a tokenizer.bin input is checked against the vocab size and copied)")
    p.add_argument("model", metavar="TOKENIZER")
    p.add_argument("output", metavar="OUT.bin")
    p.add_argument("--vocab-size", type=arg_types.vocab_size,
                   help="refuse a tokenizer whose piece count differs (the model's vocab_size)")
    add_source_args(p, required=False)
    p.add_argument("--target", nargs="+", metavar="T", help="the program(s) it is for: refuse a tokenizer written in "
                   "another convention (llama3.c reads the Llama 3 ports' tokenizer.bin, run.c llama2.c's); the model "
                   "is checked against each as export does")
    p.set_defaults(func=this.cmd_tokenizer)

    p = sub.add_parser("demo", help="write a small deterministic llama2.c checkpoint (offline demo data)")
    p.add_argument("output", metavar="OUT.pt")
    p.add_argument("--preset", required=True, help="mha, gqa_backoff or untied")
    p.set_defaults(func=this.cmd_demo)

    p = sub.add_parser("report", help="reports of one model from its verify --json results: per output JSON + Markdown, "
                                      "one HTML page and one figure")
    p.add_argument("verify_json", nargs="+", metavar="NAME.vN.verify.json")
    p.add_argument("--model", required=True)
    p.add_argument("--out-dir", required=True, help="writes OUT_DIR/NAME.vN.json and .md, OUT_DIR/MODEL.html and .png")
    p.add_argument("--c-check", nargs="+", default=[], metavar="NAME.vN.ccheck.json", help="c-check --json results to include")
    p.add_argument("--no-plots", action="store_true", help="no figure (and no matplotlib needed)")
    p.add_argument("--source-record", metavar="SOURCE.json", help="the fetch record: repo@revision or URL and "
                   "file sha256s go into the reports")
    p.set_defaults(func=this.cmd_report)

    p = sub.add_parser("summary", help="one table of every model x version from report JSONs")
    p.add_argument("reports", nargs="+", metavar="REPORT.json")
    p.add_argument("--md", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--html", help="also a self-contained HTML page (figure embedded) for snakemake --report")
    p.add_argument("--figure", metavar="PNG", help="also the figure of bits per weight against quality")
    p.set_defaults(func=this.cmd_summary)

    add_fetch_parser(sub)
    return parser


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM (kill, scancel, a scheduler's time limit) unwinds like Ctrl-C, so the writers
    # delete their partial outputs before the process ends.
    raise KeyboardInterrupt


def fetch_parser() -> argparse.ArgumentParser:
    """The parser of `llama2bin fetch` alone: the same subcommand, without importing numpy and the
    format modules the other commands need (a pipeline's record of a `path:` source is a job of
    its own per model, so its start-up is paid once per model)."""
    parser = ErrorLineParser(prog="llama2bin", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_fetch_parser(parser.add_subparsers(dest="command", required=True))
    return parser


# BLAS's own threads: llama2bin never uses them (every check pins BLAS to one thread while it
# runs, numerics.blas_threads; the rest uses no BLAS), but OpenBLAS starts and spins them when
# numpy is imported: 0.06 CPU s of every command's start-up. A user's own setting wins.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _one_blas_thread() -> None:
    if "numpy" not in sys.modules:  # only a program's first import decides; never an embedder's numpy
        for name in BLAS_THREAD_VARIABLES:
            os.environ.setdefault(name, "1")


def main(argv: Sequence[str] | None = None) -> int:
    _one_blas_thread()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    parser = fetch_parser() if command == "fetch" else build_parser(command)
    args = parser.parse_args(argv)
    configure_logging()
    try:
        signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread (main() embedded in another program)
        pass
    return run_reporting_errors(args.func, args)
