#!/usr/bin/env python3
"""Prove llama2bin's torch-free v0 rope tables against torch itself, bit for bit, at scale.

    .venv/bin/python bench/rope_sweep.py                 # everything (about half an hour on 2 cores)
    .venv/bin/python bench/rope_sweep.py --part tables   # one part: angles, pow, inv_freq, tables
    .venv/bin/python bench/rope_sweep.py --quick         # a few seconds of each part

Parts (each compares float32 bit patterns; torch runs on one thread, as the seed's tables did):
- angles: cos and sin of every finite float32 (4.28 billion inputs, both signs) against
  torch.cos/torch.sin, our side called on pieces split at odd offsets (MKL's results must not
  depend on an element's place in the call).
- pow: SLEEF's powf u10 in numpy against torch.pow on vectors of whole 32-element steps (all SLEEF),
  for random bases over the whole float32 range and exponents in [-4, 4].
- inv_freq: `default_inv_freq(theta, hd)` against the seed's `1.0 / (theta ** (arange(0, hd, 2)[: hd // 2]
  .float() / hd))` for every head size 1..4096 and bases people use (SLEEF for whole steps, the C
  library's powf for ATen's tail).
- tables: `rope_chunks` (4096-row chunks, what the writer and verify use) against the seed's whole
  table `cos/sin(outer(arange(seq), f))` at seq_len 131072 for head sizes 32..256 and theta 10000 and
  500000: f unscaled, and scaled as transformers computes Llama 3.1 (`llama3`) and `linear` rope.
Prints a Markdown summary (counts compared, mismatches, seconds); --results writes it to a file too.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from llama2bin import torch_cpu_math, torch_cpu_trig
from llama2bin.formats.rope import rope_chunks
from llama2bin.rope_freqs import default_inv_freq

HEAD_SIZES = (32, 48, 64, 80, 96, 128, 160, 192, 256)
THETAS = (10000.0, 500000.0)
POW_THETAS = (10000.0, 500000.0, 1e6, 1e5, 5e4, 2.5e4, 2e6, 5e6, 1e7, 1e8, 1000.0, 10000.5, 123456.7, 10.0, 1.5)
SEQ = 131072
BLOCK = 1 << 24


def bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


def part_angles(quick: bool, rng: np.random.Generator, log) -> dict:
    backend = torch_cpu_trig.cos_sin_backend()
    assert isinstance(backend, torch_cpu_trig._Mkl), "the sweep proves the MKL path: install mkl==2024.2.0"
    starts = range(0, 0x7F800000, BLOCK)  # non-negative finite patterns; negatives by sign flip
    if quick:
        starts = rng.choice(np.arange(0, 0x7F800000, BLOCK), 4, replace=False)
    compared = bad_cos = bad_sin = 0
    for n, start in enumerate(starts):
        for sign in (0, 0x80000000):
            x = (np.arange(start, min(start + BLOCK, 0x7F800000), dtype=np.uint32) | np.uint32(sign)).view(np.float32)
            tx = torch.from_numpy(x)
            want_cos, want_sin = torch.cos(tx).numpy(), torch.sin(tx).numpy()
            cuts = sorted(int(c) | 1 for c in rng.integers(1, len(x) - 1, 2))
            got = [backend.cos_sin(piece) for piece in np.split(x, cuts)]
            bad_cos += int(np.count_nonzero(bits(np.concatenate([c for c, _ in got])) != bits(want_cos)))
            bad_sin += int(np.count_nonzero(bits(np.concatenate([s for _, s in got])) != bits(want_sin)))
            compared += len(x)
        if n % 16 == 0:
            log(f"  angles: block {n + 1}/{len(starts)}, {compared:,} inputs, mismatches cos {bad_cos} sin {bad_sin}")
    return {"what": "cos/sin of every finite float32" if not quick else "cos/sin, 8 blocks of 2^24 float32",
            "compared": 2 * compared, "mismatches": bad_cos + bad_sin}


def part_pow(quick: bool, rng: np.random.Generator, log) -> dict:
    compared = bad = 0
    for trial in range(2 if quick else 16):
        n = 1 << 20
        x = rng.integers(0x00800000, 0x7F800000, n, dtype=np.uint32).view(np.float32)
        if trial % 2:
            x = rng.uniform(1.0, 1e7, n).astype(np.float32)
        y = rng.uniform(-4, 4, n).astype(np.float32)
        want = torch.pow(torch.from_numpy(x), torch.from_numpy(y)).numpy()
        with np.errstate(over="ignore"):
            bad += int(np.count_nonzero(bits(torch_cpu_math.sleef_powf_u10(x, y)) != bits(want)))
        compared += n
    log(f"  pow: {compared:,} pairs, {bad} mismatches")
    return {"what": "SLEEF powf u10 (numpy) vs torch.pow, random bases and exponents", "compared": compared,
            "mismatches": bad}


def part_inv_freq(quick: bool, rng: np.random.Generator, log) -> dict:
    compared = bad = 0
    heads = range(1, 4097) if not quick else (1, 2, 3, 32, 48, 64, 80, 96, 128, 256, 4096)
    for theta in POW_THETAS if not quick else THETAS:
        for hd in heads:
            want = (1.0 / (theta ** (torch.arange(0, hd, 2)[: (hd // 2)].float() / hd))).numpy()
            bad += int(np.count_nonzero(bits(default_inv_freq(theta, hd)) != bits(want)))
            compared += hd // 2
        log(f"  inv_freq: theta {theta:g}, {compared:,} values, {bad} mismatches")
    return {"what": "default_inv_freq vs the seed's torch expression, head sizes 1..4096, 15 bases", "compared": compared,
            "mismatches": bad}


def scaled_inv_freq(kind: str, hd: int, theta: float) -> np.ndarray:
    """Inverse frequencies as transformers computes them (the independent reference for scaled rope)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = {"rope_type": kind, "rope_theta": theta}
    if kind == "llama3":
        params |= {"factor": 32.0 if theta == 500000.0 else 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
    elif kind == "linear":
        params |= {"factor": 4.0}
    cfg = LlamaConfig(hidden_size=4 * hd, num_attention_heads=4, num_key_value_heads=4, head_dim=hd,
                      rope_parameters=params, max_position_embeddings=SEQ)
    inv, _ = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu")
    return inv.numpy().astype(np.float32)


def part_tables(quick: bool, rng: np.random.Generator, log) -> dict:
    compared = bad = 0
    seq = SEQ if not quick else 8192
    for hd in HEAD_SIZES if not quick else (48, 64, 128):
        for theta in THETAS:
            for kind in ("unscaled", "llama3", "linear"):
                f = default_inv_freq(theta, hd) if kind == "unscaled" else scaled_inv_freq(kind, hd, theta)
                if kind == "unscaled":
                    tf = 1.0 / (theta ** (torch.arange(0, hd, 2)[: (hd // 2)].float() / hd))
                else:
                    tf = torch.from_numpy(f)
                angles = torch.outer(torch.arange(seq), tf).float()
                want_cos, want_sin = bits(torch.cos(angles).numpy()), bits(torch.sin(angles).numpy())
                del angles
                for start, cos, sin in rope_chunks(hd, seq, theta, inv_freq=None if kind == "unscaled" else f):
                    stop = start + len(cos)
                    bad += int(np.count_nonzero(bits(cos) != want_cos[start:stop]))
                    bad += int(np.count_nonzero(bits(sin) != want_sin[start:stop]))
                compared += 2 * want_cos.size
        log(f"  tables: head {hd} done, {compared:,} values, {bad} mismatches")
    return {"what": f"rope_chunks vs the seed's whole tables, seq {seq}, heads "
                    f"{', '.join(map(str, HEAD_SIZES if not quick else (48, 64, 128)))}, theta 10000/500000, "
                    "unscaled + llama3 + linear", "compared": compared, "mismatches": bad}


PARTS = {"angles": part_angles, "pow": part_pow, "inv_freq": part_inv_freq, "tables": part_tables}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=sorted(PARTS), action="append", help="only these parts (repeatable)")
    p.add_argument("--quick", action="store_true", help="a sample of each part (seconds)")
    p.add_argument("--results", help="also write the Markdown summary here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(2026)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows = []
    for name in args.part or list(PARTS):
        start = time.process_time()
        row = PARTS[name](args.quick, rng, log)
        rows.append({"part": name, **row, "cpu_s": time.process_time() - start})
    backend = type(torch_cpu_trig.cos_sin_backend()).__name__.strip("_")
    lines = [f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
             f"llama2bin cos/sin backend {backend}" + (" (quick sample)" if args.quick else ""), "",
             "| part | what | values compared | mismatches | CPU s |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['part']} | {r['what']} | {r['compared']:,} | {r['mismatches']} | {r['cpu_s']:.0f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.results:
        with open(args.results, "w") as f:
            f.write(text)
    return 1 if any(r["mismatches"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
