#!/usr/bin/env python3
"""Verify's round trip next to the export that wrote its file (issue 21.4: verify <= 0.5x export).

    .venv/bin/python bench/verify_cost.py --models 110M 1.1B --repeats 3
    .venv/bin/python bench/verify_cost.py --base-src /tmp/base/src   # + the same verify on other code

Per model and version: the export (timed), then `verify --no-functional` of its output (timed), and,
with --base-src, the same verify run on another checkout's `src` (PYTHONPATH), in alternating order;
repeats are interleaved over every model and version. Each run is its own process (bench/run.py's
launcher: wall, CPU of the process tree, peak RSS). Prints Markdown: medians, the verify / export
ratios of wall and of CPU time, and the load average before and after (a shared machine inflates
wall times; CPU seconds compare better). Checkpoints come from bench/synth.py, warm in the page cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import Run, llama2bin_cmd, measure, remove, source_args, warm  # noqa: E402
from synth import SHAPES, ensure  # noqa: E402


def _median(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["110M", "1.1B"], choices=sorted(SHAPES))
    p.add_argument("--versions", nargs="+", default=["0", "1", "2"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", default=os.path.join(HERE, "work"))
    p.add_argument("--base-src", help="also verify with the llama2bin package under this folder (another checkout's src)")
    p.add_argument("--base-label", default="base")
    p.add_argument("--label", default="this branch")
    args = p.parse_args()

    cli = llama2bin_cmd()
    out_dir = os.path.join(args.work, "verify_cost")
    os.makedirs(out_dir, exist_ok=True)
    arms = [(args.label, None)] + ([(args.base_label, os.path.abspath(args.base_src))] if args.base_src else [])
    cases = []
    for model in args.models:
        shape = SHAPES[model]
        ckpt = ensure(shape, os.path.join(args.work, "cache"))
        for v in args.versions:
            cases.append((shape, ckpt, v, os.path.join(out_dir, f"{model}.v{v}.bin")))
    export: dict[tuple[str, str], list[Run]] = {}
    verify: dict[tuple[str, str, str], list[Run]] = {}
    sizes: dict[tuple[str, str], int] = {}

    def run_verify(arm: str, src: str | None, shape, ckpt: str, out: str) -> Run:  # type: ignore[no-untyped-def]
        # the other checkout through PYTHONPATH, which comes before the editable install's path
        env = ["env", f"PYTHONPATH={src}"] if src else []
        return measure([*env, *cli, "verify", out, *source_args(shape, ckpt), "--no-functional", "--quiet"])

    # warm-up, untimed: page cache, bytecode, numba's cache of the compiled kernel
    for shape, ckpt, v, out in cases:
        warm(ckpt)
        remove([out])
        measure([*cli, "export", out, *source_args(shape, ckpt), "--version", v, "--quiet"])
        for arm, src in arms:
            run_verify(arm, src, shape, ckpt, out)
    load_before = os.getloadavg()
    for rep in range(args.repeats):
        for shape, ckpt, v, out in cases:
            remove([out])
            run = measure([*cli, "export", out, *source_args(shape, ckpt), "--version", v, "--quiet"])
            export.setdefault((shape.name, v), []).append(run)
            sizes[(shape.name, v)] = os.path.getsize(out)
            order = arms if rep % 2 == 0 else arms[::-1]
            for arm, src in order:
                verify.setdefault((shape.name, v, arm), []).append(run_verify(arm, src, shape, ckpt, out))
            print(f"[{rep + 1}/{args.repeats}] {shape.name} v{v}: export {run.wall:.2f} s; "
                  + "; ".join(f"verify ({a}) {verify[(shape.name, v, a)][-1].wall:.2f} s" for a, _ in arms),
                  file=sys.stderr)
    load_after = os.getloadavg()
    for _, _, _, out in cases:
        remove([out])

    lines = [
        f"`bench/verify_cost.py --models {' '.join(args.models)} --repeats {args.repeats}`: medians of {args.repeats} "
        "interleaved runs; load average (1, 5, 15 min) before "
        f"{', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in load_after)}.",
        "",
        "| model | version | file MB | code | export s | export CPU s | verify s | verify CPU s | verify peak MiB "
        "| verify / export | verify CPU / export CPU |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shape, _, v, _ in cases:
        ex = export[(shape.name, v)]
        ex_wall, ex_cpu = _median(ex, "wall"), _median(ex, "cpu")
        for arm, _ in arms:
            ver = verify[(shape.name, v, arm)]
            wall, cpu = _median(ver, "wall"), _median(ver, "cpu")
            lines.append(f"| {shape.name} | v{v} | {sizes[(shape.name, v)] / 1e6:.0f} | {arm} | {ex_wall:.2f} | {ex_cpu:.2f} "
                         f"| {wall:.2f} | {cpu:.2f} | {_median(ver, 'rss_mib'):.0f} | {wall / ex_wall:.2f} "
                         f"| {cpu / ex_cpu:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
