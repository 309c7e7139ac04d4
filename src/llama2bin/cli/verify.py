"""The `verify` and `eval-tokens` commands (parsing and printing; the work is in checks/)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from ..atomic import write_atomic
from ..errors import Llama2binError
from ..outputs_guard import check_outputs
from . import arg_types
from .sources import add_target_arg, check_targets, open_source_from_args, source_paths, split_targets


def _dump_json(obj: object) -> str:
    return json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n"


def _add_eval_args(p: argparse.ArgumentParser, title: str) -> None:
    from ..checks.eval_tokens import DEFAULT_LEN, DEFAULT_SEED, DEFAULT_SEQS, MAX_LEN, MAX_POSITIONS

    g = p.add_argument_group(title)
    g.add_argument("--eval", choices=("sampled", "random"), default="sampled", dest="eval_recipe",
                   help="sampled: sequences the source model generates from BOS (seeded, temperature 1, top-p 0.9; "
                   "default); random: uniform random ids")
    g.add_argument("--eval-text", metavar="FILE", help="evaluate on this text, tokenized with --tokenizer")
    g.add_argument("--tokenizer", metavar="TOKENIZER", help="the model's tokenizer, for --eval-text: sentencepiece or "
                   "tiktoken tokenizer.model, or tokenizer.json; for verify also the one a GGUF was exported with "
                   "(export --tokenizer; default: the source's own)")
    g.add_argument("--eval-seqs", type=arg_types.eval_seqs, default=DEFAULT_SEQS, metavar="N", help=f"sequences ({DEFAULT_SEQS})")
    g.add_argument("--eval-len", type=arg_types.eval_len, default=DEFAULT_LEN, metavar="T",
                   help=f"tokens per sequence, at most max_seq_len and {MAX_LEN} ({DEFAULT_LEN}); "
                   f"at most {MAX_POSITIONS} tokens in all")
    g.add_argument("--eval-seed", type=arg_types.eval_seed, default=DEFAULT_SEED, metavar="S", help=f"seed ({DEFAULT_SEED})")


def _eval_inputs(args: argparse.Namespace) -> list[str]:
    """The files the evaluation tokens are read from (for the output collision check)."""
    return [p for p in (args.eval_tokens, args.eval_text, args.tokenizer) if p]


def _make_eval_tokens(args: argparse.Namespace, source, quiet: bool):  # type: ignore[no-untyped-def]
    from ..checks import eval_tokens as et

    cfg = source.config
    if args.eval_tokens:
        tokens = et.load_tokens_file(args.eval_tokens)
    elif args.eval_text:
        if not args.tokenizer:
            raise Llama2binError("--eval-text needs --tokenizer (the model's tokenizer.model or tokenizer.json)")
        tokens = et.text_tokens(args.eval_text, args.tokenizer, args.eval_seqs, args.eval_len)
    elif args.eval_recipe == "random":
        tokens = et.random_tokens(cfg.vocab_size, cfg.max_seq_len, args.eval_seqs, args.eval_len, args.eval_seed)
    else:
        from ..checks.functional import functional_workers

        tokens = et.sampled_tokens(source, args.eval_seqs, args.eval_len, args.eval_seed, quiet=quiet,
                                   workers=functional_workers(cfg, getattr(args, "threads", None)))
    return tokens.check(cfg.vocab_size, cfg.max_seq_len, args.eval_tokens or "evaluation tokens")


def add_parsers(sub, add_source_args: Callable[[argparse.ArgumentParser], None]) -> None:  # type: ignore[no-untyped-def]
    from ..checks.functional import FP32_RTOL, QualityLimits

    p = sub.add_parser(
        "verify",
        help="check outputs against the checkpoint: correctness (tensors, float32 logits) and quality (perplexity, KLD)",
        description="Correctness fails the command: header, every tensor against the source, float32 outputs giving "
        "the source's logits. Quality (ΔPPL, KL divergence, same top token of Q8_0 files on the evaluation tokens) is "
        "measured and warned about; it fails only with --quality-gate.",
    )
    p.add_argument("files", nargs="+", metavar="OUT.bin")
    add_source_args(p)
    p.add_argument("--json", nargs="+", metavar="FILE", help="write the verification result (one per file)")
    p.add_argument("--threads", type=arg_types.threads, default=None,
                   help="at most this many worker processes comparing tensors (default: min(2, cores); files under "
                        "32 MiB: one) "
                        "and, for models of 50M weights or more, running the functional check's forwards (each "
                        "process a share of the evaluation sequences: the same result, bit for bit)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_target_arg(p, "Each file is also measured as the targets reading its format compute it (their RoPE, epsilon, "
                   "activations) against the source.")
    g = p.add_argument_group("functional check (logits of the file vs the source on the evaluation tokens)")
    g.add_argument("--no-functional", action="store_true", help="compare tensors only, skip the forward passes")
    g.add_argument("--eval-tokens", metavar="FILE",
                   help="evaluation tokens: eval_tokens.json (llama2bin eval-tokens), a JSON list of id lists, or one "
                   "sequence of ids per line (overrides the options below)")
    g.add_argument("--activations", choices=("f32", "q8"), default="f32",
                   help="Q8_0 files: float32 activations on dequantized weights (f32, default) or runq.c's "
                   "Q8_0-quantized activations (q8)")
    g.add_argument("--fp32-rtol", type=arg_types.non_negative, default=FP32_RTOL, metavar="X",
                   help=f"float32 files fail when max |Δlogit| > X * max(1, max |logit|) ({FP32_RTOL:g})")
    _add_eval_args(p, "evaluation tokens (without --eval-tokens)")
    g.add_argument("--write-eval-tokens", metavar="OUT.json",
                   help="also write the evaluation tokens used, as `eval-tokens` would (the pipeline makes them in the "
                   "verify job: one process and one read of the source fewer per model)")
    lim = QualityLimits()
    q = p.add_argument_group("quality limits of quantized files (a warning; a failure with --quality-gate)")
    q.add_argument("--kld-max", dest="kld_mean_max", type=arg_types.non_negative, default=lim.kld_mean_max, metavar="X",
                   help=f"mean KL divergence ({lim.kld_mean_max:g})")
    q.add_argument("--kld-p99-max", type=arg_types.non_negative, default=lim.kld_p99_max, metavar="X",
                   help=f"99th-percentile KL divergence ({lim.kld_p99_max:g})")
    q.add_argument("--same-top-min", type=arg_types.fraction, default=lim.same_top_min, metavar="X",
                   help=f"rate of positions whose top token is the source's ({lim.same_top_min:g})")
    q.add_argument("--ppl-ratio-max", type=arg_types.non_negative, default=lim.ppl_ratio_max, metavar="X",
                   help=f"perplexity of the file / of the source ({lim.ppl_ratio_max:g})")
    q.add_argument("--quality-gate", action="store_true", help="fail when a quality limit is exceeded")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "eval-tokens",
        help="make a model's evaluation tokens once (JSON with recipe and sha256), for verify --eval-tokens",
    )
    p.add_argument("output", metavar="OUT.json")
    add_source_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--eval-tokens", metavar="FILE",
                   help="token ids to use as they are (JSON list of id lists, or one sequence per line): checked "
                   "against the model and recorded with their sha256")
    _add_eval_args(p, "recipe (without --eval-tokens)")
    add_target_arg(p, "The model is checked against each as export does.")
    p.set_defaults(func=cmd_eval_tokens)


def cmd_eval_tokens(args: argparse.Namespace) -> int:
    from ..checks.eval_tokens import check_size

    if not args.eval_tokens:
        check_size(args.eval_seqs, args.eval_len)
    check_outputs(source_paths(args) + _eval_inputs(args), [args.output])
    with open_source_from_args(args) as source:
        check_targets(args, source)
        tokens = _make_eval_tokens(args, source, args.quiet)
    write_atomic(args.output, _dump_json(tokens.to_json()))
    print(f"wrote {args.output} ({tokens.recipe['kind']}, {len(tokens.sequences)} sequences, {tokens.positions} tokens, "
          f"sha256 {tokens.sha256[:16]}…)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..checks.eval_tokens import check_size
    from ..checks.functional import QualityLimits, ReferenceModel
    from ..checks.verification import verify_output
    from ..formats import FORMATS

    split_targets(args, "files")
    if args.json and len(args.json) != len(args.files):
        raise Llama2binError(f"{len(args.files)} file(s) but {len(args.json)} --json path(s)")
    if not args.no_functional and not args.eval_tokens:
        check_size(args.eval_seqs, args.eval_len)
    if args.write_eval_tokens and args.no_functional:
        raise Llama2binError("--write-eval-tokens needs the functional check (no --no-functional)")
    written = [args.write_eval_tokens] if args.write_eval_tokens else []
    check_outputs(source_paths(args) + args.files + _eval_inputs(args), (args.json or []) + written)
    limits = QualityLimits(kld_mean_max=args.kld_mean_max, kld_p99_max=args.kld_p99_max,
                           same_top_min=args.same_top_min, ppl_ratio_max=args.ppl_ratio_max)
    ok = True
    memo: dict = {}  # outputs with the same weights (v1, v2) share one functional check
    with open_source_from_args(args) as source:
        checks = check_targets(args, source)
        reference = None
        if not args.no_functional:
            tokens = _make_eval_tokens(args, source, args.quiet)
            if args.write_eval_tokens:  # byte-identical to `eval-tokens` with the same recipe
                write_atomic(args.write_eval_tokens, _dump_json(tokens.to_json()))
            reference = ReferenceModel(source, tokens)
        for i, path in enumerate(args.files):
            result = verify_output(path, source, reference=reference, arithmetic=args.activations,
                                   fp32_rtol=args.fp32_rtol, limits=limits, gate=args.quality_gate,
                                   threads=args.threads, quiet=args.quiet, targets=checks, tokenizer=args.tokenizer,
                                   functional_memo=memo)
            if args.json:
                write_atomic(args.json[i], _dump_json(result.to_json()))
            t = result.tensor
            if not result.correct:
                ok = False
                for failure in result.failures:
                    print(f"{path}: FAILED: {failure}", file=sys.stderr)
                continue
            label = FORMATS[t.format].label
            print(f"{path}: OK ({label}, {len(t.tensors)} tensors, sha256 {t.sha256[:16]}…)")
            client = result.llamacpp
            if client is not None and client.skipped:
                print(f"llama2bin: notice: {path}: {client.skipped}", file=sys.stderr)
            elif client is not None:
                print(f"{path}: {client.compiler} OK ({len(client.tokens)} tokens): max |Δlogit| "
                      f"{client.max_abs_diff:.3g} against the Python forward on its weights (bound {client.tolerance:.3g})")
            f = result.functional
            if f is not None:
                ppl = "" if f.ppl_source is None else (f"PPL {f.ppl_source:.4g} -> {f.ppl_file:.4g} "
                                                       f"(ΔPPL {f.delta_ppl:+.3g}), ")
                print(f"{path}: functional OK ({f.positions} positions, {f.arithmetic}): {ppl}mean KLD {f.kld_mean:.3g}, "
                      f"KLD p99 {f.kld_percentiles['p99']:.3g}, same top {f.same_top:.1%}, "
                      f"max |Δlogit| {f.max_abs_dlogit:.3g}")
            for t in result.targets or []:
                if (tf := t.functional) is not None:
                    ppl = "" if tf.delta_ppl is None else f"ΔPPL {tf.delta_ppl:+.3g}, "
                    print(f"{path}: as {t.name} runs it ({tf.arithmetic}): {ppl}mean KLD {tf.kld_mean:.3g}, "
                          f"same top {tf.same_top:.1%}"
                          + "".join(f"; departure: {d}" for d in t.departures))
            q = result.quality
            if q is not None and q.exceeded:
                if q.gate:
                    ok = False
                    print(f"llama2bin: error: {path}: quality gate: {q.message()}", file=sys.stderr)
                else:
                    print(f"llama2bin: warning: {path}: quality beyond limits (not a gate): {q.message()}",
                          file=sys.stderr)
    return 0 if ok else 1
