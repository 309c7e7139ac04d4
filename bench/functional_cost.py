#!/usr/bin/env python3
"""CPU cost of the functional check (issue 17.4): evaluation-token sampling and verify's forward
passes and logit comparison, at the shapes where vocabulary and dim make it matter.

    .venv/bin/python bench/functional_cost.py [--repeats 3] [--shapes 15M L3-256 V2^20]

Shapes (synthetic llama2.c checkpoints, random N(0, 0.02) weights, tied classifier): 15M
(stories15M), L3-256 (Llama 3.2 1B's proportions at dim 256: 4 layers, 8 heads, 2 kv heads,
vocabulary 128256) and V2^20 (dim 2, vocabulary 2^20, seq 16: issue 17's hostile case). Each
gets exported as v0 and v2 once; then, as separate processes: `eval-tokens` (the default 8 x 32
sampled tokens), `verify v0 v2 --eval-tokens` (tensor + functional checks), the same with
`--no-functional` (so the functional check's own cost is the difference), and the default
`verify` of the v0 file (sampling included: the hostile case as the issue ran it). Reports
median CPU seconds (user + system, from rusage) and wall seconds; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import llama2bin_cmd, measure  # noqa: E402
from synth import Shape, _llama2c_hidden, ensure  # noqa: E402

SHAPES = {
    "15M": Shape("15M", "llama2c", 288, 6, 6, 6, 32000, _llama2c_hidden(288), 256),
    "L3-256": Shape("L3-256", "llama2c", 256, 4, 8, 2, 128256, _llama2c_hidden(256), 256),
    "V2^20": Shape("V2^20", "llama2c", 2, 1, 1, 1, 1 << 20, _llama2c_hidden(2), 16),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--work", default=os.path.join(HERE, "work", "functional"))
    args = p.parse_args(argv)
    cli = llama2bin_cmd()
    rows = []
    for name in args.shapes:
        shape = SHAPES[name]
        ckpt = ensure(shape, os.path.join(args.work, "cache"))
        out = os.path.join(args.work, name)
        os.makedirs(out, exist_ok=True)
        v0, v2, tokens = (os.path.join(out, f) for f in ("m.v0.bin", "m.v2.bin", "tokens.json"))
        measure([*cli, "export", v0, v2, "--checkpoint", ckpt, "--version", "0", "2", "--quiet"])
        steps = {
            "eval-tokens": [*cli, "eval-tokens", tokens, "--checkpoint", ckpt, "--quiet"],
            "verify v0 v2": [*cli, "verify", v0, v2, "--checkpoint", ckpt, "--eval-tokens", tokens, "--quiet"],
            "verify v0 v2 --no-functional": [*cli, "verify", v0, v2, "--checkpoint", ckpt, "--no-functional", "--quiet"],
            "verify v0 (default, sampling included)": [*cli, "verify", v0, "--checkpoint", ckpt, "--quiet"],
        }
        runs: dict[str, list] = {step: [] for step in steps}
        for _ in range(args.repeats):
            for step, cmd in steps.items():
                runs[step].append(measure(cmd))
        for step, done in runs.items():
            rows.append((name, step, statistics.median(r.cpu for r in done), statistics.median(r.wall for r in done),
                         max(r.rss_mib for r in done)))
        print(f"{name} done", file=sys.stderr)
    print("| shape | step | CPU s (median) | wall s | peak RSS MiB |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, step, cpu, wall, rss in rows:
        print(f"| {name} | {step} | {cpu:.2f} | {wall:.2f} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
