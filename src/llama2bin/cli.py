"""`llama2bin`: the command line over the library. Thin by design: parse, call, report.

Every user-facing failure is a `Llama2binError` (or an OS error about a named file) and
becomes one line on stderr and exit status 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from . import __version__, cli_types
from .atomic import write_atomic
from .cli_errors import ErrorLineParser, run_reporting_errors
from .cli_export import add_export_format_args, check_output_name, split_versions_and_outputs
from .errors import Llama2binError
from .formats import DIRECTORY, FORMATS
from .outputs_guard import Output, check_outputs, fetch_outputs

VERSION_HELP = "\n".join(
    f"  {name}: {spec.description}{'; OUT is a directory' if spec.kind == DIRECTORY else ''}\n"
    f"      read by {spec.read_by}; loses {spec.loses}"
    for name, spec in FORMATS.items()
)


def _add_source_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    src = p.add_argument_group("source (exactly one)" if required else "source (optional)")
    g = src.add_mutually_exclusive_group(required=required)
    g.add_argument("--checkpoint", metavar="CKPT.pt", help="llama2.c training checkpoint")
    g.add_argument("--meta-llama", metavar="DIR", help="Meta Llama 2 directory (params.json, consolidated.NN.pth)")
    g.add_argument("--hf", metavar="DIR", help="Hugging Face directory (config.json, *.safetensors or *.bin)")
    g.add_argument("--bin", metavar="FILE.bin", help="an existing llama2.c .bin of any version (e.g. stories15M.bin)")
    p.add_argument("--max-seq-len", type=cli_types.max_seq_len, help="override max_seq_len (C readers size their KV cache by it)")
    p.add_argument(
        "--allow-rope-theta",
        action="store_true",
        help="accept a rope_theta other than 10000 (run.c/runq.c hard-code 10000; v0's rope tables are then computed at "
        "it, for the ports that read them); recorded as an accepted departure",
    )


def _source_path(args: argparse.Namespace) -> list[str]:
    """The source file or directory, as a list of inputs for check_outputs: every source flag
    counts (an unguarded source could be overwritten)."""
    flags = ("checkpoint", "meta_llama", "hf", "bin")
    return [path for path in (getattr(args, flag, None) for flag in flags) if path]


def _open_source(args: argparse.Namespace):
    from .sources import open_source

    if args.checkpoint:
        kind, path = "llama2c", args.checkpoint
    elif args.meta_llama:
        kind, path = "meta", args.meta_llama
    elif args.bin:  # an existing .bin: read through the reader, so it is not one of sources/' kinds
        from .bin_source import BinSource

        return BinSource(args.bin, max_seq_len=args.max_seq_len, allow_rope_theta=args.allow_rope_theta)
    else:
        kind, path = "hf", args.hf
    return open_source(kind, path, max_seq_len=args.max_seq_len, allow_rope_theta=args.allow_rope_theta)


def _dump_json(obj: object) -> str:
    return json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n"


# ---- export -------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from .writer import export

    args.version, args.outputs = split_versions_and_outputs(args.version, args.outputs)
    if not args.outputs:
        raise Llama2binError("no output path given (llama2bin export [--version V] OUT.bin --checkpoint CKPT.pt)")
    if len(args.outputs) != len(args.version):
        raise Llama2binError(
            f"{len(args.outputs)} output path(s) but {len(args.version)} version(s): give one version per output"
        )
    from .formats.hf_export import check_hf_target, export_hf

    for v in args.version:
        if v not in FORMATS:
            raise Llama2binError(f"unknown version {v!r} (known: {', '.join(FORMATS)})")
    pairs = list(zip(args.version, args.outputs, strict=True))
    for v, out in pairs:
        check_output_name(out, v, list(FORMATS))
    check_outputs(_source_path(args), [Output(out, FORMATS[v].kind == DIRECTORY, f"--version {v} writes a directory")
                                       for v, out in pairs])
    dir_targets = [(v, out) for v, out in pairs if FORMATS[v].kind == DIRECTORY]
    bin_targets = [(v, out) for v, out in pairs if FORMATS[v].kind != DIRECTORY]
    for _, out in dir_targets:  # refuse a bad directory target before writing any .bin
        check_hf_target(out)
    with _open_source(args) as source:
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


def cmd_reverify(args: argparse.Namespace) -> int:
    from .reverify import run_plan

    return run_plan(args.plan, main)  # each model is one `llama2bin verify` run, errors and all


# ---- c-check ------------------------------------------------------------------------------


def cmd_c_check(args: argparse.Namespace) -> int:
    from .checks.ccheck import Consumer, c_check, find_compiler

    if args.json and len(args.json) != len(args.files):
        raise Llama2binError(f"{len(args.files)} file(s) but {len(args.json)} --json path(s)")
    check_outputs(args.files, args.json or [])
    compiler = find_compiler(args.cc)
    if compiler is None:
        if args.require_cc:
            raise Llama2binError("no C compiler found (cc, or $CC); give one with --cc")
        print("llama2bin: notice: no C compiler found (cc, or $CC): C consumer check SKIPPED", file=sys.stderr)
    consumer = Consumer(compiler) if compiler else None
    ok = True
    try:
        for i, path in enumerate(args.files):
            result = c_check(path, consumer, tokens=args.tokens, arithmetic=args.arithmetic)
            if args.json:
                write_atomic(args.json[i], _dump_json(result.to_json()))
            if result.skipped:
                print(f"{path}: C consumer check skipped: {result.skipped}")
            elif result.passed:
                print(f"{path}: C consumer agrees (v{result.version}, {result.arithmetic} arithmetic, {len(result.tokens)} "
                      f"positions, max |Δlogit| {result.max_abs_diff:.3g} <= {result.tolerance:.3g})")
            else:
                ok = False
                for failure in result.failures:
                    print(f"{path}: FAILED: {failure}", file=sys.stderr)
    finally:
        if consumer:
            consumer.close()
    return 0 if ok else 1


# ---- inspect ------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from .describe import describe_output, render_text

    info = describe_output(args.file)
    sys.stdout.write(_dump_json(info) if args.json else render_text(info))
    return 0


# ---- demo / report / summary ------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import write_demo_checkpoint

    check_outputs([], [args.output])
    write_demo_checkpoint(args.preset, args.output)
    print(f"wrote {args.output} (demo preset {args.preset})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import report_outputs, write_reports

    outputs = report_outputs(args.model, args.verify_json, args.out_dir, plots=not args.no_plots)
    check_outputs(args.verify_json + args.c_check + ([args.source_record] if args.source_record else []), outputs)
    for path in write_reports(args.model, args.verify_json, args.out_dir, c_check_paths=args.c_check,
                              plots=not args.no_plots, source_record_path=args.source_record):
        print(f"wrote {path}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .report import write_summary

    outputs = [p for p in (args.md, args.json, args.html, args.figure) if p]
    check_outputs(args.reports, outputs)
    write_summary(args.reports, args.md, args.json, out_html=args.html, out_png=args.figure)
    for path in outputs:
        print(f"wrote {path}")
    return 0


# ---- tokenizer ----------------------------------------------------------------------------


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from .tokenizer import read_tokenizer_bin, write_tokenizer_bin

    check_outputs([args.model, *_source_path(args)], [args.output])
    vocab_size = args.vocab_size
    if args.checkpoint or args.meta_llama or args.hf or args.bin:  # check against the model it will run with
        with _open_source(args) as source:
            if vocab_size is not None and vocab_size != source.config.vocab_size:
                raise Llama2binError(f"--vocab-size {vocab_size} but the model's vocab_size is {source.config.vocab_size}")
            vocab_size = source.config.vocab_size
    if args.model.endswith(".bin"):  # already llama2.c's tokenizer.bin: checked, then copied as it is
        if vocab_size is None:
            raise Llama2binError(f"{args.model}: a tokenizer.bin does not record its size; give the model "
                                 "(--checkpoint/--bin/...) or --vocab-size to check it against")
        content = read_tokenizer_bin(args.model, vocab_size)  # refuses a tokenizer of another size
        # the parsed entries re-encoded: the same bytes (the whole file was consumed), and exactly
        # what was checked even if the input changes meanwhile
        write_atomic(args.output, content.to_bytes())
    else:
        content = write_tokenizer_bin(args.model, args.output, vocab_size=vocab_size)
    print(f"wrote {args.output} ({content.vocab_size} tokens, max_token_length {content.max_token_length})")
    return 0


# ---- fetch --------------------------------------------------------------------------------


def _add_fetch_parser(sub) -> None:  # type: ignore[no-untyped-def]
    p = sub.add_parser(
        "fetch",
        help="download or locate a model's checkpoint; record it in DEST/SOURCE.json",
        description="Obtain a checkpoint reproducibly. Writes DEST/<filename> (--url), DEST/snapshot/ (--repo) or "
        "nothing (--path, used in place), then DEST/SOURCE.json last: source, resolved revision, sha256 and size of "
        "every file. huggingface.co URLs and --repo go through huggingface_hub (its cache first; HF_HUB_OFFLINE=1 "
        "works offline); other URLs are resumed and sha256-checked before the final name. Credentials only from "
        "HF_TOKEN or the Hugging Face login cache, and only for the Hub.",
    )
    p.add_argument("--model", required=True, metavar="NAME", help="model name (recorded in SOURCE.json)")
    p.add_argument("--dest", metavar="DIR", help="output folder (default resources/checkpoints/NAME)")
    src = p.add_argument_group("source (exactly one)")
    g = src.add_mutually_exclusive_group(required=True)
    g.add_argument("--path", metavar="P", help="local checkpoint file or directory, used in place")
    g.add_argument("--url", metavar="URL", help="download one file: a huggingface.co/ORG/NAME/resolve/REV/FILE URL "
                   "through huggingface_hub, any other URL resumable and retried; checked before its final name")
    g.add_argument("--repo", metavar="ORG/NAME", help="Hugging Face Hub repo (needs --revision)")
    src.add_argument("--sha256", metavar="HEX", help="with --url: expected sha256 (without it a warning prints the one to pin)")
    src.add_argument("--filename", metavar="F", help="with --url: file name in DEST (default: the URL's last segment)")
    src.add_argument("--revision", metavar="REV", help="with --repo: commit hash to pin (a branch works, with a warning)")
    src.add_argument("--file", metavar="F", help="with --repo: the one file in the repo that is the checkpoint "
                     "(a llama2.c .pt or a .bin); it becomes DEST/snapshot/F")
    src.add_argument("--files", nargs="+", metavar="PATTERN", help="with --repo: glob patterns of (further) files to "
                     "fetch (default: all, unless --file is given)")
    p.add_argument("--retries", type=int, default=5, help="retries of a transient failure without progress (5)")
    p.add_argument("--retry-delay", type=float, default=1.0, metavar="S", help="first back-off delay, doubled per retry (1.0)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="timeout of every socket operation (60)")
    p.add_argument("--hf-cache", metavar="DIR", help="Hugging Face cache (default HF_HUB_CACHE, else ~/.cache/huggingface/hub)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_fetch)


def cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import FetchSpec, RetryPolicy, fetch

    kind = "path" if args.path is not None else "url" if args.url is not None else "repo"
    spec = FetchSpec(
        kind, path=args.path, url=args.url, sha256=args.sha256.lower() if args.sha256 else None,
        filename=args.filename, repo=args.repo, revision=args.revision, file=args.file,
        files=tuple(args.files) if args.files else None,
    )  # fetch() validates it, as it does every spec (config entries included)
    if args.retries < 0 or args.retry_delay < 0 or args.timeout <= 0:
        raise Llama2binError("--retries and --retry-delay must be >= 0, --timeout > 0")
    retry = RetryPolicy(retries=args.retries, base_delay=args.retry_delay, timeout=args.timeout)
    check_outputs(*fetch_outputs(args.model, spec, args.dest, args.path, args.hf_cache))
    result = fetch(args.model, spec, args.dest, retry=retry, quiet=args.quiet, hf_cache_dir=args.hf_cache)
    n = len(result.record["files"])
    state = "already present" if result.reused else "ok"
    print(f"{args.model}: {result.checkpoint} ({state}; {n} file{'s' if n != 1 else ''}, {result.total_bytes} bytes)")
    print(f"wrote {result.source_json}")
    return 0


# ---- entry point --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ErrorLineParser(prog="llama2bin", description="Convert LLaMA checkpoints to llama2.c .bin files.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "export",
        help="write one or more .bin versions in one pass over the checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write OUT.bin (several outputs pair up with several --version values).",
        epilog="versions:\n" + VERSION_HELP,
    )
    p.add_argument("outputs", nargs="*", metavar="OUT.bin")
    _add_source_args(p)
    add_export_format_args(p, list(FORMATS))
    p.add_argument("--threads", type=cli_types.threads, default=None,
                   help="worker processes (default: min(2, cores); 1 for models under 32 MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_export)

    from .cli_verify import add_parsers as add_verify_parsers

    add_verify_parsers(sub, _add_source_args)

    p = sub.add_parser(
        "reverify",
        help="verify several models' outputs again against their sources (the pipeline's reverify target)",
        description="Run `verify` for every model of a JSON plan (see llama2bin/reverify.py), continuing past a "
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
    p.add_argument("--tokens", type=cli_types.token_id, nargs="+", metavar="ID",
                   help="token ids (default: 16 seeded random ids)")
    p.add_argument("--arithmetic", choices=("auto", "f32", "q8"), default="auto",
                   help="f32, or runq.c's q8 (Q8_0 files only); auto: q8 for Q8_0 files, f32 for v0")
    p.add_argument("--cc", metavar="CMD", help="C compiler command (default: $CC, else cc)")
    p.add_argument("--require-cc", action="store_true", help="fail instead of skipping when no compiler is found")
    p.add_argument("--json", nargs="+", metavar="FILE", help="write the check result (one per file)")
    p.set_defaults(func=cmd_c_check)

    p = sub.add_parser("inspect", help="show an output's format, header and tensor table (.bin file or hf directory)")
    p.add_argument("file", metavar="OUT")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("tokenizer", help="convert a sentencepiece tokenizer.model to llama2.c's tokenizer.bin "
                       "(a tokenizer.bin input is checked against the vocab size and copied)")
    p.add_argument("model", metavar="TOKENIZER.model|tokenizer.bin")
    p.add_argument("output", metavar="OUT.bin")
    p.add_argument("--vocab-size", type=cli_types.vocab_size,
                   help="refuse a tokenizer whose piece count differs (the model's vocab_size)")
    _add_source_args(p, required=False)
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser("demo", help="write a small deterministic llama2.c checkpoint (offline demo data)")
    p.add_argument("output", metavar="OUT.pt")
    p.add_argument("--preset", required=True, help="mha, gqa_backoff or untied")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="reports of one model from its verify --json results: per output JSON + Markdown, "
                                      "one HTML page and one figure")
    p.add_argument("verify_json", nargs="+", metavar="NAME.vN.verify.json")
    p.add_argument("--model", required=True)
    p.add_argument("--out-dir", required=True, help="writes OUT_DIR/NAME.vN.json and .md, OUT_DIR/MODEL.html and .png")
    p.add_argument("--c-check", nargs="+", default=[], metavar="NAME.vN.ccheck.json", help="c-check --json results to include")
    p.add_argument("--no-plots", action="store_true", help="no figure (and no matplotlib needed)")
    p.add_argument("--source-record", metavar="SOURCE.json", help="the fetch record: repo@revision or URL and "
                   "file sha256s go into the reports")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("summary", help="one table of every model x version from report JSONs")
    p.add_argument("reports", nargs="+", metavar="REPORT.json")
    p.add_argument("--md", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--html", help="also a self-contained HTML page (figure embedded) for snakemake --report")
    p.add_argument("--figure", metavar="PNG", help="also the figure of bits per weight against quality")
    p.set_defaults(func=cmd_summary)

    _add_fetch_parser(sub)
    return parser


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM (kill, scancel, a scheduler's time limit) unwinds like Ctrl-C, so the writers
    # delete their partial outputs before the process ends.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread (main() embedded in another program)
        pass
    return run_reporting_errors(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
