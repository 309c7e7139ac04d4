#!/usr/bin/env python3
"""Export to v2 against `cp` of its output, side by side: issue 21 item 3 ("export near disk speed").

    .venv/bin/python bench/export_speed.py                          # 1.1B and 70B-2L, 3 repeats
    .venv/bin/python bench/export_speed.py --models 110M 1.1B --repeats 5

For each model (synthetic HF bf16 checkpoints from bench/synth.py, warm in the page cache) and
each repeat, interleaved: `llama2bin export OUT --version 2` with the compiled quantizer
(LLAMA2BIN_Q8_KERNEL=numba) and with the numpy one (=numpy, the code before it), each as its own
process; after each, `cp` of that output to a folder emptied just before, then `sync` of the copy
(`cp+sync`: the like-for-like floor, since the export fsyncs before its atomic rename). Medians of
the repeats, the machine's load average before and after, ratios to both floors; a Markdown table
to --results (default bench/export_speed.md) and stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import Run, llama2bin_cmd, load_average, machine_lines, measure, remove, timed, warm  # noqa: E402
from synth import SHAPES, ensure  # noqa: E402

# How each export quantizes: the value of LLAMA2BIN_Q8_KERNEL (formats/q8_fast.py).
PATHS = {"compiled": "numba", "numpy": "numpy"}


@dataclass
class Row:
    model: str
    path: str  # a PATHS key
    out_bytes: int = 0
    sha256: str = ""  # of the output (the untimed first export): the same for every quantizer
    export: list[Run] = field(default_factory=list)
    cp: list[float] = field(default_factory=list)
    cp_sync: list[float] = field(default_factory=list)

    def median(self, what: str, attr: str = "wall") -> float:
        values = getattr(self, what)
        return statistics.median(v if isinstance(v, float) else getattr(v, attr) for v in values)


def one_export(row: Row, ckpt: str, out: str, copy_dir: str) -> None:
    """One export of `row`, then cp and cp+sync of its output (same bytes, same disk, just after)."""
    remove([out])
    env_cmd = ["env", f"LLAMA2BIN_Q8_KERNEL={PATHS[row.path]}"]
    row.export.append(measure([*env_cmd, *llama2bin_cmd(), "export", out, "--hf", ckpt, "--version", "2", "--quiet"]))
    row.out_bytes = os.path.getsize(out)
    # Into a folder emptied just now, as the export's output was deleted just before it ran: both
    # write into just-freed page-cache memory (on a VM, memory freed long ago costs more to touch).
    shutil.rmtree(copy_dir, ignore_errors=True)
    os.makedirs(copy_dir)
    row.cp.append(timed(["cp", out, copy_dir]))
    row.cp_sync.append(row.cp[-1] + timed(["sync", os.path.join(copy_dir, os.path.basename(out))]))


def fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def render(rows: list[Row], args: argparse.Namespace, load: tuple[str, str]) -> str:
    lines = [
        "# Export vs `cp`, v2 (issue 21 item 3)",
        "",
        f"`.venv/bin/python bench/export_speed.py --models {' '.join(args.models)} --repeats {args.repeats}`: "
        f"medians of {args.repeats} interleaved runs. Each export is its own `llama2bin export --version 2` process "
        "(start-up included) from a synthetic HF bf16 checkpoint warm in the page cache; *compiled* is the numba "
        "kernel (`LLAMA2BIN_Q8_KERNEL=numba`), *numpy* the numpy path (`=numpy`, what every export ran before). "
        "`cp` copies that export's output right after it; `cp+sync` adds `sync` of the copy: the like-for-like "
        "floor, since the export fsyncs its output before the atomic rename.",
        "",
        *machine_lines(load),
        "",
        "*export / cp* is the ratio of the medians; *paired* the median of each run's own ratio (an export and",
        "the copy of its output run back to back, so they share the machine's load of that moment).",
        "",
        "| model | shape | quantizer | output MB | export s | export CPU s | peak MiB | cp s | cp+sync s "
        "| export / cp | export / cp+sync | paired / cp | paired / cp+sync | output sha256 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        wall, cp, cps = r.median("export"), r.median("cp"), r.median("cp_sync")
        paired_cp = statistics.median(e.wall / c for e, c in zip(r.export, r.cp, strict=True))
        paired_cps = statistics.median(e.wall / c for e, c in zip(r.export, r.cp_sync, strict=True))
        lines.append(
            f"| {r.model} | {SHAPES[r.model].describe()} | {r.path} | {r.out_bytes / 1e6:.1f} | {fmt(wall)} "
            f"| {fmt(r.median('export', 'cpu'))} | {r.median('export', 'rss_mib'):.0f} | {fmt(cp)} | {fmt(cps)} "
            f"| {fmt(wall / cp, 1)} | {fmt(wall / cps, 1)} | {fmt(paired_cp, 1)} | {fmt(paired_cps, 1)} | {r.sha256[:16]} |"
        )
    lines += ["", "Every run (export s / cp s / cp+sync s):", ""]
    for r in rows:
        runs = ", ".join(f"{e.wall:.2f}/{c:.2f}/{s:.2f}" for e, c, s in zip(r.export, r.cp, r.cp_sync, strict=True))
        lines.append(f"- {r.model} {r.path}: {runs}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["1.1B", "70B-2L"], choices=[n for n, s in SHAPES.items() if s.kind == "hf"])
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS), help="quantizers to compare")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", default=os.path.join(HERE, "work"), help="cache and scratch folder (default bench/work)")
    p.add_argument("--results", default=os.path.join(HERE, "export_speed.md"))
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    out_dir = os.path.join(args.work, "out")
    copy_dir = os.path.join(out_dir, "cp")
    os.makedirs(out_dir, exist_ok=True)
    ckpts = {}
    for name in args.models:
        log(f"{name}: building/finding the checkpoint ({SHAPES[name].n_params / 1e6:.0f}M params)")
        ckpts[name] = ensure(SHAPES[name], os.path.join(args.work, "cache"))
    rows = {(m, q): Row(m, q) for m in args.models for q in args.paths}
    # One untimed export per model and quantizer first: numba's on-disk cache is filled (a first
    # compile is ~1 s, once per machine), every timed run starts from the same state, and the
    # outputs' hashes show that both quantizers wrote the same bytes.
    for (model, _), row in rows.items():
        warm(ckpts[model])
        out = os.path.join(out_dir, f"{model}.v2.bin")
        one_export(Row(row.model, row.path), ckpts[model], out, copy_dir)
        with open(out, "rb") as f:
            row.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    load_before = load_average()
    for rep in range(args.repeats):
        for (model, _), row in rows.items():
            warm(ckpts[model])  # the other model's runs may have pushed it out of the page cache
            one_export(row, ckpts[model], os.path.join(out_dir, f"{model}.v2.bin"), copy_dir)
            log(f"  [{rep + 1}/{args.repeats}] {model} {row.path}: export {row.export[-1].wall:.2f} s "
                f"({row.export[-1].cpu:.2f} CPU s), cp {row.cp[-1]:.2f} s, cp+sync {row.cp_sync[-1]:.2f} s")
    load_after = load_average()
    for model in args.models:
        remove([os.path.join(out_dir, f"{model}.v2.bin")])
    shutil.rmtree(copy_dir, ignore_errors=True)
    report = render(list(rows.values()), args, (load_before, load_after))
    with open(args.results + ".part", "w") as f:
        f.write(report)
    os.replace(args.results + ".part", args.results)
    sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
