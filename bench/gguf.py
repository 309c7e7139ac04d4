#!/usr/bin/env python3
"""GGUF export speed and memory against llama.cpp's convert_hf_to_gguf.py (issue 20, item 8).

    .venv/bin/python bench/gguf.py --converter PATH/convert_hf_to_gguf.py [--shape 1.1B] [--repeats 3]
    .venv/bin/python bench/gguf.py --shape tiny-hf --repeats 1          # seconds, no converter

The checkpoint is bench/synth.py's Hugging Face model of the shape (1.1B: TinyLlama's, bf16, 3
safetensors shards), plus a small sentencepiece tokenizer.model (the converter requires one; ids
beyond its pieces are padded by both converters alike). The converter is llama.cpp's own script,
run from wherever you have it (e.g. the llama-cpp-python sdist: `pip download --no-deps
--no-binary :all: llama-cpp-python==0.3.36`); without --converter only our side is measured.

Every job runs as its own process (bench/run.py's launcher): wall time, CPU seconds (user + system
of the job and its workers) and peak summed RSS of its process tree; then `cp` of the output.
Medians over --repeats, jobs interleaved. Ours also writes all four types in one job (one pass).
Writes bench/gguf_results.md (or --out).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import shutil
import statistics
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import Run, machine, measure, timed, warm  # noqa: E402
from synth import SHAPES, ensure  # noqa: E402

TYPES = ("f32", "f16", "bf16", "q8_0")

OURS = textwrap.dedent("""
    import os, sys
    from llama2bin.formats.gguf_vocab_hf import hf_sentencepiece_vocab
    from llama2bin.formats.gguf_write import GgufModelInfo, export_gguf
    from llama2bin.sources.hf import HfSource
    ckpt, out, types = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    with HfSource(ckpt) as src:
        vocab = hf_sentencepiece_vocab(os.path.join(ckpt, "tokenizer.model"), src.config.vocab_size, ckpt)
        export_gguf(src, [(f"gguf-{t}", f"{out}.{t}.gguf") for t in types], GgufModelInfo("bench", vocab), quiet=True)
""")


def add_tokenizer(ckpt: str) -> None:
    path = os.path.join(ckpt, "tokenizer.model")
    if os.path.exists(path):
        return
    import sentencepiece as spm

    rng = random.Random(0)
    words = ["hello", "world", "token", "piece", "llama", "model", "weights"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=300, byte_fallback=True,
                                   model_type="bpe", character_coverage=1.0, num_threads=1, minloglevel=2,
                                   normalization_rule_name="identity")
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def median(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--converter", help="path of llama.cpp's convert_hf_to_gguf.py")
    ap.add_argument("--shape", default="1.1B", choices=[k for k, s in SHAPES.items() if s.kind == "hf"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--work", default=os.path.join(HERE, "work"))
    ap.add_argument("--out", default=os.path.join(HERE, "gguf_results.md"))
    args = ap.parse_args(argv)
    types = args.types.split(",")
    shape = SHAPES[args.shape]
    ckpt = ensure(shape, os.path.join(args.work, "cache"))
    add_tokenizer(ckpt)
    out_dir = os.path.join(args.work, "gguf")
    os.makedirs(out_dir, exist_ok=True)
    jobs: dict[str, list[str]] = {}
    for t in types:
        jobs[f"ours {t}"] = [sys.executable, "-c", OURS, ckpt, os.path.join(out_dir, "ours"), t]
        if args.converter:
            jobs[f"converter {t}"] = [sys.executable, args.converter, ckpt, "--outtype", t, "--outfile",
                                      os.path.join(out_dir, f"conv.{t}.gguf")]
    jobs["ours all four, one pass"] = [sys.executable, "-c", OURS, ckpt, os.path.join(out_dir, "all"), ",".join(types)]
    results: dict[str, list[Run]] = {name: [] for name in jobs}
    sizes: dict[str, int] = {}
    cp_times: dict[str, list[float]] = {t: [] for t in types}
    for r in range(args.repeats):
        for name, cmd in jobs.items():
            warm(ckpt)
            print(f"[{r + 1}/{args.repeats}] {name}", file=sys.stderr, flush=True)
            results[name].append(measure(cmd))
            t = name.split()[-1]
            if name == f"ours {t}":  # cp of the same bytes right after: the floor
                src, dst = os.path.join(out_dir, f"ours.{t}.gguf"), os.path.join(out_dir, "copy.gguf")
                sizes[t] = os.path.getsize(src)
                cp_times[t].append(timed(["cp", src, dst]))
            for f in os.listdir(out_dir):  # outputs go at once: a 1.1B set of four is ~10 GB
                os.remove(os.path.join(out_dir, f))
    lines = [f"# GGUF export: llama2bin vs convert_hf_to_gguf.py ({shape.name}: {shape.describe()}, bf16 safetensors)", "",
             f"Medians of {args.repeats}; machine: {platform.node()} {machine().get('cpu model', '')}, shared and noisy: "
             "compare CPU seconds and memory more than wall time.", "",
             "| job | wall s | CPU s | peak RSS MiB (process tree) | output MB | cp s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, runs in results.items():
        t = name.split()[-1]
        size = f"{sizes[t] / 1e6:.0f}" if t in sizes else ""
        cp = f"{statistics.median(cp_times[t]):.2f}" if t in types and name.startswith("ours") else ""
        lines.append(f"| {name} | {median(runs, 'wall'):.2f} | {median(runs, 'cpu'):.2f} | {median(runs, 'rss_mib'):.0f} | "
                     f"{size} | {cp} |")
    if args.converter:
        lines += ["", "| type | wall ratio (converter / ours) | memory ratio (converter / ours) |", "| --- | ---: | ---: |"]
        for t in types:
            c, o = results[f"converter {t}"], results[f"ours {t}"]
            lines.append(f"| {t} | {median(c, 'wall') / median(o, 'wall'):.1f}x | "
                         f"{median(c, 'rss_mib') / median(o, 'rss_mib'):.1f}x |")
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
