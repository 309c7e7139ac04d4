#!/usr/bin/env python3
"""Where a v2 export's time goes, per step, with the compiled and the numpy quantizer.

    .venv/bin/python bench/export_profile.py [--model 1.1B] [--repeats 3]

Each run is a fresh process exporting the synthetic HF bf16 checkpoint (bench/synth.py) to v2
with `--threads 1` (so cProfile, which sees one process, sees all the work), alternating the
quantizers (LLAMA2BIN_Q8_KERNEL=numba / numpy). Prints a Markdown table of the median seconds
per step (cProfile's own time of the functions that do the work) and the process's user and
system CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import load_average, warm  # noqa: E402
from synth import SHAPES, ensure  # noqa: E402

# (label, substring of cProfile's "file:function", cumulative time instead of own time)
STEPS = [
    ("numba import + load (parent, once)", "q8_fast.py:load", True),
    ("compiled kernel: widen, max, scale, divide, round, cast, error", "quantize_groups", False),
    ("numpy quantize_into (own time)", "quantize_into_numpy", False),
    ("numpy reductions (per-group max, error max)", "'reduce'", False),
    ("group_absmax_bits (own time)", "group_absmax_bits", False),
    ("bf16 -> float32 widening (to_float32)", "to_float32", False),
    ("preadv (reading the bf16 source)", "posix.preadv", False),
    ("pwrite (into the page cache)", "posix.pwrite", False),
    ("sync_file_range (writeback hints)", "_start_writeback", False),
]

_CHILD = """
import cProfile, json, pstats, resource, sys
from llama2bin.cli import main
profile = cProfile.Profile()
profile.enable()
rc = main(["export", sys.argv[1], "--hf", sys.argv[2], "--version", "2", "--quiet", "--threads", "1"])
profile.disable()
usage = resource.getrusage(resource.RUSAGE_SELF)
steps = json.loads(sys.argv[3])
out = {"rc": rc, "user": usage.ru_utime, "sys": usage.ru_stime}
for label, needle, cumulative in steps:
    out[label] = sum(ct if cumulative else tt for (path, _, name), (_, _, tt, ct, _) in pstats.Stats(profile).stats.items()
                     if needle in f"{path.rsplit('/', 1)[-1]}:{name}")
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="1.1B", choices=[n for n, s in SHAPES.items() if s.kind == "hf"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", default=os.path.join(HERE, "work"))
    args = p.parse_args(argv)
    ckpt = ensure(SHAPES[args.model], os.path.join(args.work, "cache"))
    out = os.path.join(args.work, "out", f"{args.model}.profile.v2.bin")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    warm(ckpt)
    runs: dict[str, list[dict]] = {"numba": [], "numpy": []}
    load_before = load_average()
    for _ in range(args.repeats):
        for quantizer, results in runs.items():
            if os.path.exists(out):
                os.unlink(out)
            env = os.environ | {"LLAMA2BIN_Q8_KERNEL": quantizer}
            proc = subprocess.run([sys.executable, "-c", _CHILD, out, ckpt, json.dumps(STEPS)], env=env,
                                  capture_output=True, text=True, check=True)
            results.append(json.loads(proc.stdout.splitlines()[-1]))
    load_after = load_average()
    os.unlink(out)

    def med(quantizer: str, key: str) -> str:
        value = statistics.median(r[key] for r in runs[quantizer])
        return f"{value:.2f}" if value >= 0.005 else "—"

    print(f"{args.model} HF bf16 -> v2, --threads 1, medians of {args.repeats} (load {load_before} / {load_after})\n")
    print("| step | numpy s | compiled s |\n|---|---:|---:|")
    for label, _, _ in STEPS:
        print(f"| {label} | {med('numpy', label)} | {med('numba', label)} |")
    print(f"| **process CPU, user** | {med('numpy', 'user')} | {med('numba', 'user')} |")
    print(f"| **process CPU, system** | {med('numpy', 'sys')} | {med('numba', 'sys')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
