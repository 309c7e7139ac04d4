"""v2's Q8_0 against GGUF's Q8_0 of the same trained model, on the same evaluation tokens.

llama2.c's v2 stores Q8_0 in groups of 64 (halved until it divides dim and hidden_dim) with
float32 scales and round-half-to-even; GGUF's Q8_0 uses blocks of 32 with float16 scales and
round-half-away (ggml-quants.c). Both cost 8.5 bits per matrix weight at group size 64. This
exports both from one llama2.c checkpoint, verifies both with llama2bin's verify on the same
sampled evaluation tokens (same forward pass, float32 activations on the dequantized weights),
and prints size, bits per weight, weight error and the logit statistics side by side. With the
llama-cpp-python binding installed it also prints llama.cpp's own logits of the GGUF against
the Python forward (llama.cpp quantizes activations to Q8_0 as well).

    .venv/bin/python bench/gguf_q8_compare.py [--shape tiny|15M|42M] [--steps N] [--seqs 8 --len 64]

`tiny` is tests/trained_model.py's grammar model (dim 64); the others are tests/realistic_models.py
shapes trained for --steps steps on the same grammar.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from llama2bin.checks.eval_tokens import sampled_tokens  # noqa: E402
from llama2bin.checks.functional import ReferenceModel  # noqa: E402
from llama2bin.checks.verification import verify_output  # noqa: E402
from llama2bin.formats import FORMATS  # noqa: E402
from llama2bin.formats.families import ExportOptions, write_outputs  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402


def checkpoint(shape: str, steps: int, folder: str) -> str:
    path = os.path.join(folder, f"{shape}.pt")
    if shape == "tiny":
        import trained_model

        trained_model.train(path, steps=steps)
    else:
        from realistic_models import SHAPES, write_checkpoint

        write_checkpoint(path, SHAPES[shape], seed=0, train_steps=steps)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tiny")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--len", type=int, default=32, dest="length")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.process_time()
        ckpt = checkpoint(args.shape, args.steps, folder)
        print(f"trained {args.shape} for {args.steps} steps ({time.process_time() - t0:.0f} CPU s)")
        paths = {"v2": os.path.join(folder, "m.v2.bin"), "gguf-q8_0": os.path.join(folder, "m.q8_0.gguf")}
        with open_source("llama2c", ckpt) as src:
            write_outputs(src, [(FORMATS["2"], paths["v2"]), (FORMATS["gguf-q8_0"], paths["gguf-q8_0"])],
                          ExportOptions(quiet=True))
            tokens = sampled_tokens(src, args.seqs, min(args.length, src.config.max_seq_len), 0, quiet=True)
            reference = ReferenceModel(src, tokens)
            rows = {}
            for name, path in paths.items():
                r = verify_output(path, src, reference=reference)
                assert r.correct, r.failures
                q8 = [t for t in r.tensor.tensors if t.encoding == "q8_0"]
                n_q8 = sum(int(np.prod(t.shape)) for t in q8)
                rows[name] = {
                    "group": r.tensor.group_size,
                    "size": os.path.getsize(path),
                    "bpw": 8 * os.path.getsize(path) / sum(int(np.prod(t.shape)) for t in r.tensor.tensors),
                    "rmse": float(np.sqrt(sum(t.rmse ** 2 * np.prod(t.shape) for t in q8) / n_q8)),
                    "max_err": max(t.max_abs_err for t in q8),
                    "f": r.functional,
                    "lc": r.llamacpp,
                }
    cfg = src.config
    print(f"model: dim {cfg.dim}, hidden {cfg.hidden_dim}, {cfg.n_layers} layers, vocab {cfg.vocab_size}; "
          f"{tokens.positions} evaluation tokens ({args.seqs} sampled sequences), PPL source {rows['v2']['f'].ppl_source:.4f}")
    print("| output | group | bytes | bits/weight | weight RMSE (Q8_0 matrices) | max abs err | ΔPPL | mean KLD | KLD p99 "
          "| same top | max abs Δlogit | llama.cpp max abs Δlogit vs Python |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        f, lc = r["f"], r["lc"]
        client = "—" if lc is None else ("skipped" if lc.skipped else f"{lc.max_abs_diff:.3g}")
        print(f"| {name} | {r['group']} | {r['size']} | {r['bpw']:.3f} | {r['rmse']:.4g} | {r['max_err']:.4g} | "
              f"{f.delta_ppl:+.4g} | {f.kld_mean:.4g} | {f.kld_percentiles['p99']:.4g} | {f.same_top:.2%} | "
              f"{f.max_abs_dlogit:.4g} | {client} |")


if __name__ == "__main__":
    main()
