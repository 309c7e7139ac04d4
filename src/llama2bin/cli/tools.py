"""The small commands: c-check, inspect, demo and tokenizer (parsing and printing; the work is in
checks/, formats/, demo.py and tokenizer.py)."""

from __future__ import annotations

import argparse
import json
import sys

from ..atomic import write_atomic
from ..errors import Llama2binError
from ..outputs_guard import check_outputs
from .sources import check_targets, named_source, open_source_from_args, source_paths


def _dump_json(obj: object) -> str:
    return json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n"


def _bin_format(path: str) -> str:
    """The registered format of a .bin file, from its header (directories: none)."""
    import os

    from ..formats import identify

    if os.path.isdir(path):
        return ""
    with open(path, "rb") as f:
        return identify(f.read(256), path).name


def cmd_c_check(args: argparse.Namespace) -> int:
    from ..checks.ccheck import Consumer, PythonSide, c_check, find_compiler

    if args.json and len(args.json) != len(args.files):
        raise Llama2binError(f"{len(args.files)} file(s) but {len(args.json)} --json path(s)")
    check_outputs(args.files, args.json or [])
    from ..formats.targets import target_spec

    targets = [target_spec(name) for name in args.target or []]
    compiler = find_compiler(args.cc)
    if compiler is None:
        if args.require_cc:
            raise Llama2binError("no C compiler found (cc, or $CC); give one with --cc")
        print("llama2bin: notice: no C compiler found (cc, or $CC): C consumer check SKIPPED", file=sys.stderr)
    consumer = Consumer(compiler) if compiler else None
    python_side = PythonSide(args.files)  # v1 and v2 of one model share their Python forwards
    ok = True
    try:
        for i, path in enumerate(args.files):
            target = next((t for t in targets if t.format == _bin_format(path)), None) if targets else None
            if targets and target is None:
                raise Llama2binError(f"{path}: none of the targets ({', '.join(args.target)}) reads this file's version")
            result = c_check(path, consumer, tokens=args.tokens, arithmetic=args.arithmetic, target=target,
                             python_side=python_side)
            if args.json:
                write_atomic(args.json[i], _dump_json(result.to_json()))
            if result.skipped:
                print(f"{path}: C consumer check skipped: {result.skipped}")
            elif result.passed:
                forced = "" if result.q8_sites is None else (
                    f"; {result.q8_sites} activation quantizations teacher-forced, {result.q8_flips} flipped at a tie; "
                    f"untethered as runq.c computes it: max |Δlogit| {result.q8_untethered_max_abs_diff:.3g}")
                rope = f", {result.target}'s RoPE ({result.rope})" if result.target else ""
                print(f"{path}: C consumer agrees (v{result.version}, {result.arithmetic} arithmetic{rope}, {len(result.tokens)} "
                      f"positions, max |Δlogit| {result.max_abs_diff:.3g} <= {result.tolerance:.3g}{forced})")
            else:
                ok = False
                for failure in result.failures:
                    print(f"{path}: FAILED: {failure}", file=sys.stderr)
    finally:
        if consumer:
            consumer.close()
    return 0 if ok else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from .describe import describe_output, render_text

    info = describe_output(args.file)
    sys.stdout.write(_dump_json(info) if args.json else render_text(info))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import write_demo_checkpoint

    check_outputs([], [args.output])
    write_demo_checkpoint(args.preset, args.output)
    print(f"wrote {args.output} (demo preset {args.preset})")
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from ..tokenizer import detect, tokenizer_entries

    check_outputs([args.model, *source_paths(args)], [args.output])
    vocab_size = args.vocab_size
    if named_source(args):  # check against the model it will run with
        with open_source_from_args(args) as source:
            check_targets(args, source)
            if vocab_size is not None and vocab_size != source.config.vocab_size:
                raise Llama2binError(f"--vocab-size {vocab_size} but the model's vocab_size is {source.config.vocab_size}")
            vocab_size = source.config.vocab_size
    kind = detect(args.model)
    from ..formats.targets import target_spec, tokenizer_mismatch

    for name in args.target or []:
        if (why := tokenizer_mismatch(target_spec(name), kind.name)) is not None:
            raise Llama2binError(f"{args.model}: {why}")
    # A tokenizer.bin input is parsed, checked and re-encoded: the same bytes (the whole file was
    # consumed), and exactly what was checked even if the input changes meanwhile.
    content = tokenizer_entries(args.model, vocab_size)
    write_atomic(args.output, content.to_bytes())
    convention = {"sentencepiece": "llama2.c's convention", "tokenizer.bin": "copied",
                  "tiktoken": "the Llama 3 ports' convention", "tokenizer.json": "the Llama 3 ports' convention"}[kind.name]
    print(f"wrote {args.output} ({content.vocab_size} tokens, max_token_length {content.max_token_length}; "
          f"{kind.name}, {convention})")
    return 0
