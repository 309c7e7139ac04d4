#!/usr/bin/env python3
"""Batch benchmark: N copies of a checkpoint through the whole Snakemake pipeline.

    .venv/bin/python bench/batch.py                       # 20 x 15M, versions 0 1 2, --cores 4
    .venv/bin/python bench/batch.py --models 4 --shape tiny --cores 2

Builds a workdir under bench/work/batch with N real copies of the synthetic checkpoint
(bench/synth.py), a config naming them as `path:` llama2c sources, and runs the repository's
Snakefile there with the default settings otherwise (export, verify with functional check,
C consumer check, reports). Reports the wall time and the CPU seconds (user + system of Snakemake
and every job, from the kernel's accounting of the finished process tree) of the whole run, the
load average before and after, and, per rule, the job count, summed job seconds and the largest
peak RSS/PSS from Snakemake's own benchmark files. On a shared machine the CPU seconds are the
comparable number: wall time divided by the cores is a lower bound only when nothing else runs.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from synth import SHAPES, ensure  # noqa: E402


def prepare(work: str, shape_name: str, n: int, cache: str, core_only: bool = False, job_server: bool = True) -> str:
    """A fresh workdir with n checkpoint copies and a config naming them."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "checkpoints"))
    ckpt = ensure(SHAPES[shape_name], cache)
    if not os.path.isfile(ckpt):
        raise SystemExit(f"batch: shape {shape_name} is not a single-file llama2.c checkpoint")
    lines = ["models:"]
    for i in range(1, n + 1):
        copy = os.path.join(work, "checkpoints", f"m{i:02d}.pt")
        shutil.copyfile(ckpt, copy)  # real copies: every job reads its own file, as in a real batch
        lines += [f"  m{i:02d}:", "    source: llama2c", f"    path: {copy}"]
    lines.append("versions: [0, 1, 2]")
    if core_only:  # the scenario: export, round-trip verify, reports (no logit or C checks)
        lines += ["functional:", "  enabled: false", "c_check:", "  enabled: false"]
    if not job_server:  # every job its own Python start-up, as before the job server
        lines.append("job_server: false")
    config = os.path.join(work, "config.yaml")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    return config


def rule_table(work: str) -> list[dict]:
    """Per rule, from Snakemake's benchmark TSVs: jobs, summed seconds, largest max_rss / max_pss (MB)."""
    rows = []
    for folder in sorted(glob.glob(os.path.join(work, "benchmarks", "*"))):
        files = glob.glob(os.path.join(folder, "**", "*.tsv"), recursive=True)
        by_rule: dict[str, list[dict]] = {}
        for path in files:
            rule = os.path.basename(folder)
            if os.path.basename(path).endswith(".fetch.tsv"):
                rule = "fetch_checkpoint"
            with open(path) as f:
                by_rule.setdefault(rule, []).extend(csv.DictReader(f, delimiter="\t"))
        for rule, recs in by_rule.items():
            # (with the job server these measure each job's client process; the worker is in the ledger)
            def num(r: dict, k: str) -> float:
                try:
                    return float(r[k])
                except (KeyError, ValueError):
                    return 0.0
            rows.append({
                "rule": rule,
                "jobs": len(recs),
                "seconds": sum(num(r, "s") for r in recs),
                "max_rss": max(num(r, "max_rss") for r in recs),
                "max_pss": max(num(r, "max_pss") for r in recs),
            })
    return rows


def ledger_table(work: str) -> list[dict]:
    """Per command, from the job server's ledger (logs/job_server.tsv): the workers' jobs, summed
    wall and CPU seconds, largest peak RSS (MB; the server's shared pages counted, as the kernel does)."""
    path = os.path.join(work, "logs", "job_server.tsv")
    if not os.path.exists(path):
        return []
    by_command: dict[str, list[dict]] = {}
    with open(path) as f:
        for row in csv.DictReader(f, delimiter="\t"):
            by_command.setdefault(row["command"], []).append(row)
    return [{"command": cmd, "jobs": len(rows), "seconds": sum(float(r["s"]) for r in rows),
             "cpu": sum(float(r["cpu_user_s"]) + float(r["cpu_sys_s"]) for r in rows),
             "max_rss": max(float(r["max_rss_mb"]) for r in rows)} for cmd, rows in sorted(by_command.items())]


def run_batch(n: int = 20, shape: str = "15M", cores: int = 4, work: str | None = None, cache: str | None = None,
              core_only: bool = False, job_server: bool = True) -> dict:
    work = work or os.path.join(HERE, "work", "batch")
    cache = cache or os.path.join(HERE, "work", "cache")
    config = prepare(work, shape, n, cache, core_only, job_server)
    # bytecode as an installed package has it: without it (PYTHONDONTWRITEBYTECODE, a fresh checkout)
    # every job would compile llama2bin's changed modules again
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "src", "llama2bin")], check=True,
                   stdout=subprocess.DEVNULL)
    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")
    cmd = [snakemake, "--snakefile", os.path.join(ROOT, "Snakefile"), "--directory", work, "--configfile", config,
           "--cores", str(cores), "--quiet", "all"]
    load_before = os.getloadavg()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"batch: snakemake failed ({proc.returncode})\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return {"models": n, "shape": shape, "cores": cores, "wall": wall, "cpu": cpu, "rules": rule_table(work),
            "workers": ledger_table(work), "core_only": core_only, "job_server": job_server,
            "load": (load_before, os.getloadavg())}


def run_batches(repeats: int, n: int = 20, shape: str = "15M", cores: int = 4, work: str | None = None,
                core_only: bool = False, job_server: bool = True, cache: str | None = None) -> dict:
    """`repeats` fresh runs; wall and CPU are their medians, the rule table the median run's."""
    runs = [run_batch(n, shape, cores, work, cache, core_only=core_only, job_server=job_server) for _ in range(repeats)]
    middle = sorted(runs, key=lambda r: r["cpu"])[len(runs) // 2]
    return {**middle, "wall": statistics.median(r["wall"] for r in runs),
            "cpu": statistics.median(r["cpu"] for r in runs), "repeats": repeats,
            "walls": [r["wall"] for r in runs], "cpus": [r["cpu"] for r in runs],
            "load": (runs[0]["load"][0], runs[-1]["load"][1])}


def render(result: dict) -> str:
    usable = min(result["cores"], os.cpu_count() or 1)
    lines = [
        f"{result['models']} x {result['shape']} checkpoints, versions 0 1 2, `snakemake --cores {result['cores']}` "
        + ("(functional and C checks off: fetch record, export, round-trip verify, reports): " if result.get("core_only")
           else "(default pipeline: fetch record, export, verify + functional check, C consumer check, reports): ")
        + f"**{result['wall']:.1f} s wall, {result['cpu']:.1f} CPU s**"
        + (f" (medians of {result['repeats']}: wall {', '.join(f'{w:.1f}' for w in result['walls'])}; "
           f"CPU {', '.join(f'{c:.1f}' for c in result['cpus'])})" if result.get("repeats", 1) > 1 else "")
        + (", job server on" if result.get("job_server", True) else ", job server off (a Python start-up per job)")
        + ".",
        "",
        f"Load average (1, 5, 15 min) before / after: {' '.join(f'{x:.2f}' for x in result['load'][0])} / "
        f"{' '.join(f'{x:.2f}' for x in result['load'][1])}. CPU s / {usable} cores = {result['cpu'] / usable:.1f} s: "
        "the least wall time this work can take on an otherwise idle machine.",
        "",
        "| rule | jobs | job seconds (sum) | largest max_rss MB | largest max_pss MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rules"]:
        lines.append(f"| {r['rule']} | {r['jobs']} | {r['seconds']:.1f} | {r['max_rss']:.0f} | {r['max_pss']:.0f} |")
    if result.get("workers"):
        lines += ["", "Snakemake's benchmark files measure each job's own process, here the job server's client; "
                  "the workers that did the work, from the server's ledger (logs/job_server.tsv):", "",
                  "| command | jobs | seconds (sum) | CPU s (sum) | largest peak RSS MB |", "|---|---:|---:|---:|---:|"]
        for r in result["workers"]:
            lines.append(f"| {r['command']} | {r['jobs']} | {r['seconds']:.1f} | {r['cpu']:.1f} | {r['max_rss']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=20)
    p.add_argument("--shape", default="15M", choices=[k for k, s in SHAPES.items() if s.kind == "llama2c"])
    p.add_argument("--cores", type=int, default=4)
    p.add_argument("--work", help="workdir (default bench/work/batch; deleted and rebuilt)")
    p.add_argument("--core-only", action="store_true", help="turn the functional and C checks off")
    p.add_argument("--repeats", type=int, default=1, help="fresh runs; medians reported (default 1)")
    p.add_argument("--no-job-server", action="store_true", help="job_server: false (a Python start-up per job)")
    args = p.parse_args(argv)
    sys.stdout.write(render(run_batches(args.repeats, args.models, args.shape, args.cores, args.work,
                                        core_only=args.core_only, job_server=not args.no_job_server)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
