#!/usr/bin/env python3
"""Benchmark `llama2bin export` and `llama2bin verify` against the physical floor, `cp`.

    .venv/bin/python bench/run.py                  # --scale small: 15M and 110M llama2.c
    .venv/bin/python bench/run.py --scale full     # + TinyLlama-1.1B-shaped HF safetensors (bf16)
    .venv/bin/python bench/run.py --scale full --batch 20   # + 20 x 15M through Snakemake
    .venv/bin/python bench/run.py --scale smoke    # tiny shapes, seconds (what the test runs)

Synthetic checkpoints (random values, real shapes and container formats) are built once into
bench/work/cache (git-ignored). Every export and verify runs as its own process, exactly as
a user or Snakemake runs it; wall time is measured around the process, CPU time comes from its
rusage, memory is the peak summed RSS of its process tree (llama2bin forks workers). Each
export is followed by `cp` of its output (the same bytes, same disk, same moment) and `sync` of
the copy: the floor without and with durability (the export fsyncs before renaming). Each
single-version output is then verified (round trip only: --no-functional), and once more with
the CLI's default functional check. Medians over --repeats runs, interleaved.
Writes a Markdown report (bench/results.md by default) and, with --json, the raw numbers.

With LLAMA2C_SEED_DIR pointing at the seed's llama2.c checkout (its export.py and model.py, kept
outside this repository; needs torch), each llama2.c model's v0 export is also run through the
seed's `export.py --version 0`, interleaved with llama2bin's, and the bytes compared; the same
with LLAMA2C_MASTER_DIR for llama2.c master's export.py. Each is skipped when its variable is
unset. `--versus-only` runs only these comparisons (and the process baselines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from synth import SHAPES, Shape, ensure  # noqa: E402

SCALES = {
    "smoke": ["tiny", "tiny-hf"],
    "small": ["15M", "110M"],
    "full": ["15M", "110M", "1.1B"],
}
# Export jobs per model: each version alone, then all three in one job (one pass over the source).
JOBS: list[tuple[int, ...]] = [(0,), (1,), (2,), (0, 1, 2)]

MiB = 1 << 20


@dataclass
class Run:
    wall: float
    rss_mib: float  # peak of the summed RSS of the job's processes
    cpu: float  # user + system seconds of the job's processes
    max_process_mib: float = 0.0  # the largest single process (ru_maxrss)


@dataclass
class Row:
    model: str
    shape: str
    params: int
    kind: str
    versions: str
    out_bytes: int
    export: list[Run] = field(default_factory=list)
    cp: list[float] = field(default_factory=list)
    cp_sync: list[float] = field(default_factory=list)
    verify: list[Run] = field(default_factory=list)  # round-trip verification of the output (single-version jobs)
    functional: list[Run] = field(default_factory=list)  # the CLI's default verify, with its functional check (once)

    def median(self, what: str, attr: str = "wall") -> float:
        values = getattr(self, what)
        if not values:
            return float("nan")
        return statistics.median(v if isinstance(v, float) else getattr(v, attr) for v in values)


def llama2bin_cmd() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "llama2bin")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "llama2bin"]


# Peak memory is measured from a small parent: Linux carries the forking process's RSS
# high-water mark into the child's ru_maxrss (across fork and exec), and this script's own RSS
# (numpy, torch for building checkpoints) would swamp a small job's. So a minimal Python
# launcher (-S: no site packages, ~10 MiB) forks and execs each command, reports the child's
# wall time and wait4 rusage, and samples the RSS of the whole process tree (llama2bin forks
# worker processes) every 10 ms: the job's memory is the peak of that sum. Shared pages
# (the interpreter, numpy) count once per process, so the sum errs on the generous side.
# The launcher stays out of the job's way: it sees the child's exit at once (a pidfd), not at
# the next sample, and a sample reads the stat of new processes only (~0.1 ms; reading every
# process's, ~1 ms per sample, had taken a tenth of a core beside the job and ~0.02 s from
# each 0.4 s export).
_LAUNCHER = r"""
import json, os, select, sys, time
PAGE = os.sysconf("SC_PAGE_SIZE")
parents = {}  # pid -> parent pid, read once per process: a sample reads only new processes' stat
def tree_rss(root):
    pids = {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}
    for gone in parents.keys() - pids:
        del parents[gone]
    for pid in pids - parents.keys():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        parents[pid] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    children = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total
tree_rss(os.getpid())  # every process already running: read before the clock starts
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
try:
    exited = os.pidfd_open(pid)  # readable at the child's exit: the wall time is not rounded up to a sample
except (AttributeError, OSError):
    exited = None
peak = 0
while True:
    peak = max(peak, tree_rss(pid))
    if exited is not None:
        select.select([exited], [], [], 0.01)
    else:
        time.sleep(0.01)
    done, status, ru = os.wait4(pid, os.WNOHANG)
    if done:
        break
wall = time.perf_counter() - start
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "wall": wall, "maxrss_kib": ru.ru_maxrss,
                  "tree_peak_bytes": peak, "cpu": ru.ru_utime + ru.ru_stime}), file=sys.stderr)
"""


def measure(cmd: list[str]) -> Run:
    """Run cmd as a child process: wall time, peak memory of its process tree, CPU time.

    Every run starts with nothing left to write back (os.sync, untimed): otherwise a command that
    syncs its output, as llama2bin does, also waits for the disk to take what the command before
    it left dirty (the seed's export.py never syncs its 438 MB at 110M, and the runs alternate)."""
    os.sync()
    proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *cmd], capture_output=True, text=True)
    *messages, last = proc.stderr.rstrip("\n").split("\n") or [""]
    try:
        report = json.loads(last)
    except json.JSONDecodeError:
        raise SystemExit(f"bench: launcher failed for {' '.join(cmd)}\n{proc.stderr}") from None
    if report["exit"] != 0:
        raise SystemExit(f"bench: command failed ({report['exit']}): {' '.join(cmd)}\n{proc.stdout}" + "\n".join(messages))
    # the sampled tree peak can miss a process that lived < 10 ms; the largest single process
    # (ru_maxrss, exact) bounds it from below
    rss = max(report["tree_peak_bytes"] / MiB, report["maxrss_kib"] / 1024)
    return Run(report["wall"], rss, report["cpu"], report["maxrss_kib"] / 1024)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def warm(path: str) -> None:
    """Read a checkpoint once so every timed run starts from the same state: in the page cache."""
    files = [path] if os.path.isfile(path) else [os.path.join(path, f) for f in sorted(os.listdir(path))]
    buf = bytearray(8 * MiB)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def remove(paths: list[str]) -> None:
    for p in paths:
        if os.path.exists(p):
            os.unlink(p)


def source_args(shape: Shape, path: str) -> list[str]:
    return ["--checkpoint", path] if shape.kind == "llama2c" else ["--hf", path]


def bench_model(shape: Shape, ckpt: str, out_dir: str, repeats: int, log) -> list[Row]:
    cli = llama2bin_cmd()
    # verify's functional check (forward passes) is another feature's cost: time the round trip alone
    helptext = subprocess.run([*cli, "verify", "--help"], capture_output=True, text=True).stdout
    round_trip_only = ["--no-functional"] if "--no-functional" in helptext else []
    jobs: list[tuple[Row, list[str]]] = []
    for versions in JOBS:
        row = Row(shape.name, shape.describe(), shape.n_params, shape.kind, ",".join(map(str, versions)), 0)
        jobs.append((row, [os.path.join(out_dir, f"{shape.name}.v{v}.bin") for v in versions]))
    copy_dir = os.path.join(out_dir, "cp")
    warm(ckpt)
    # Repeats are interleaved (all jobs, then all jobs again) so slow drift in the machine's
    # state (page cache, other load) spreads over every job instead of biasing one.
    for rep in range(repeats):
        for row, outs in jobs:
            remove(outs)
            run = measure([*cli, "export", *outs, *source_args(shape, ckpt), "--version", *row.versions.split(","), "--quiet"])
            row.export.append(run)
            row.out_bytes = sum(os.path.getsize(p) for p in outs)
            # The copy goes to a folder emptied just now, as the export's outputs were deleted just
            # before it ran: both write into just-freed page-cache memory (on a VM, memory freed
            # long ago can cost far more to touch again).
            shutil.rmtree(copy_dir, ignore_errors=True)
            os.makedirs(copy_dir)
            copies = [os.path.join(copy_dir, os.path.basename(p)) for p in outs]
            row.cp.append(timed(["cp", *outs, copy_dir]))
            row.cp_sync.append(row.cp[-1] + timed(["sync", *copies]))
            if len(outs) == 1:  # verification cost per file, right after the export that wrote it
                verify = [*cli, "verify", outs[0], *source_args(shape, ckpt), "--quiet"]
                row.verify.append(measure(verify + round_trip_only))
                if rep == 0 and round_trip_only:
                    row.functional.append(measure(verify))
            log(f"  [{rep + 1}/{repeats}] {shape.name} v{row.versions}: export {run.wall:.2f} s, "
                f"{run.rss_mib:.0f} MiB; cp {row.cp[-1]:.2f} s"
                + (f"; verify {row.verify[-1].wall:.2f} s, {row.verify[-1].rss_mib:.0f} MiB" if row.verify else ""))
    for _, outs in jobs:
        remove(outs)
    shutil.rmtree(copy_dir, ignore_errors=True)
    return [row for row, _ in jobs]


# v0's rope tables alone, in the process that computes them: CPU seconds of rope_chunks (the
# writer's and verify's path), after the imports.
_ROPE_TIMER = """
import sys, time
from llama2bin.formats.rope import rope_chunks
head, seq = int(sys.argv[1]), int(sys.argv[2])
start = time.process_time()
for _ in rope_chunks(head, seq):
    pass
print(time.process_time() - start)
"""
ROPE_SHAPES = [(64, 1024), (48, 256), (128, 4096), (128, 131072)]


def python_baselines(repeats: int) -> dict[str, Run]:
    """What a process costs before any conversion: interpreter + numpy, torch, and v0's rope tables."""
    py = sys.executable
    cases = {
        "python + numpy + llama2bin": [py, "-c",
                                       "import numpy, llama2bin.cli, llama2bin.formats.writer, llama2bin.checks.tensor"],
        "import torch": [py, "-c", "import torch"],
        "rope tables for 1024 x 64 (110M), whole process": [
            py, "-c", "from llama2bin.formats.rope import rope_tables; rope_tables(64, 1024)"],
    }
    out = {}
    for name, cmd in cases.items():
        runs = [measure(cmd) for _ in range(repeats)]
        out[name] = Run(statistics.median(r.wall for r in runs), statistics.median(r.rss_mib for r in runs),
                        statistics.median(r.cpu for r in runs))
    return out


def rope_timings(repeats: int) -> dict[str, float]:
    """Median CPU seconds of the rope tables alone (in-process, imports excluded), per seq_len x head."""
    out = {}
    for head, seq in ROPE_SHAPES:
        runs = [float(subprocess.run([sys.executable, "-c", _ROPE_TIMER, str(head), str(seq)], check=True,
                                     capture_output=True, text=True).stdout) for _ in range(repeats)]
        out[f"{seq} x {head}"] = statistics.median(runs)
    return out


@dataclass
class SeedRow:
    model: str
    reference: str = "seed"  # "seed" (LLAMA2C_SEED_DIR) or "master" (LLAMA2C_MASTER_DIR)
    ours: list[Run] = field(default_factory=list)
    seed: list[Run] = field(default_factory=list)
    identical: bool = True


def bench_seed(shape: Shape, ckpt: str, out_dir: str, repeats: int, seed_dir: str, log,
               reference: str = "seed") -> SeedRow:
    """llama2.c's `export.py --version 0` (the seed's, or master's) and llama2bin's v0 export of
    the same .pt, interleaved."""
    row = SeedRow(shape.name, reference)
    ours, theirs = os.path.join(out_dir, f"{shape.name}.ours.v0.bin"), os.path.join(out_dir, f"{shape.name}.seed.v0.bin")
    seed_cmd = [sys.executable, os.path.join(seed_dir, "export.py"), theirs, "--version", "0", "--checkpoint", ckpt]
    warm(ckpt)
    for rep in range(repeats):
        remove([ours, theirs])
        row.ours.append(measure([*llama2bin_cmd(), "export", ours, "--checkpoint", ckpt, "--version", "0", "--quiet"]))
        cwd = os.getcwd()
        os.chdir(seed_dir)  # export.py imports model.py from its own folder
        try:
            row.seed.append(measure(seed_cmd))
        finally:
            os.chdir(cwd)
        row.identical &= subprocess.run(["cmp", "-s", ours, theirs]).returncode == 0
        log(f"  [{rep + 1}/{repeats}] {shape.name} v0: llama2bin {row.ours[-1].wall:.2f} s ({row.ours[-1].cpu:.2f} CPU s), "
            f"{reference} {row.seed[-1].wall:.2f} s ({row.seed[-1].cpu:.2f} CPU s), identical {row.identical}")
    remove([ours, theirs])
    return row


def machine() -> dict[str, str]:
    def first(path: str, key: str) -> str:
        try:
            for line in open(path):
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    import numpy

    info = {
        "cpus (nproc)": str(os.cpu_count()),
        "cpu model": first("/proc/cpuinfo", "model name"),
        "ram": f"{int(first('/proc/meminfo', 'MemTotal').split()[0]) // 1024} MiB",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }
    try:
        import torch  # noqa: F401  (only to record its version)

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = "not installed"
    try:
        df = subprocess.run(["df", "-T", HERE], capture_output=True, text=True).stdout.splitlines()[-1].split()
        info["disk"] = f"{df[1]} on {df[0]}"
        dev = os.path.basename(df[0])
        rot = f"/sys/block/{dev}/queue/rotational"
        if os.path.exists(rot):
            info["disk"] += " (rotational)" if open(rot).read().strip() == "1" else " (non-rotational)"
    except (OSError, IndexError):
        info["disk"] = "?"
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "src"],
                               capture_output=True, text=True).stdout.strip()
        info["llama2bin commit"] = rev.stdout.strip() + (" + uncommitted changes in src/" if dirty else "")
    except OSError:
        pass
    return info



def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as the reports print them before and after a run."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_lines(load: tuple[str, str], info: dict[str, str] | None = None) -> list[str]:
    """A report's machine description: `machine()` (or `info`), then the load before / after."""
    return [*[f"- {k}: {v}" for k, v in (info or machine()).items()],
            f"- load average before / after: {load[0]} / {load[1]} (other work on this shared machine inflates wall times)"]

def fmt(x: float, digits: int = 2) -> str:
    return "—" if x != x else f"{x:.{digits}f}"


def render(rows: list[Row], baselines: dict[str, Run], info: dict[str, str], args: argparse.Namespace, load: tuple,
           batch: str | None, rope: dict[str, float] | None = None, seed_rows: list[SeedRow] | None = None) -> str:
    lines = [
        "# llama2bin benchmark",
        "",
        "`.venv/bin/python bench/run.py "
        + (f"--models {' '.join(args.models)}" if args.models else f"--scale {args.scale}")
        + (" --versus-only" if args.versus_only else "") + f" --repeats {args.repeats}"
        + (f" --batch {args.batch}" if args.batch else "") + f"`: medians of {args.repeats} run(s), interleaved.",
        "Each export and verify is its own `llama2bin` process (start-up included). *peak MiB* is the peak of the",
        "summed RSS of the job's processes (parent, forked workers, side processes; shared pages counted in each).",
        "`cp` copies the export's output(s) right after the export (same bytes, same disk, page cache as the export",
        "left it); `cp+sync` adds fsync of the copy, as the export fsyncs before its atomic rename. *verify* is the",
        "round trip (`--no-functional`, one file); *verify+fn* is the CLI default with its functional check (one run).",
        "Checkpoints are synthetic (random values, real shapes and container formats), warm in the page cache.",
        "",
        "## Machine",
        "",
        *machine_lines(load, info),
        "",
        "## Export",
        "",
        "| model | shape | source | versions | output MB | export s | cp s | cp+sync s | export / cp | export / cp+sync "
        "| MB/s | peak MiB | CPU s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        wall, cp, cps = r.median("export"), r.median("cp"), r.median("cp_sync")
        lines.append(
            f"| {r.model} | {r.shape} | {r.kind} | {r.versions} | {r.out_bytes / 1e6:.1f} | {fmt(wall)} | {fmt(cp)} "
            f"| {fmt(cps)} | {fmt(wall / cp, 1)} | {fmt(wall / cps, 1)} | {fmt(r.out_bytes / 1e6 / wall, 0)} "
            f"| {fmt(r.median('export', 'rss_mib'), 0)} | {fmt(r.median('export', 'cpu'))} |"
        )
    lines += [
        "",
        "## Verify (one file per process)",
        "",
        "| model | version | file MB | export s | verify s | verify / export | verify peak MiB | verify CPU s "
        "| verify+fn s | verify+fn peak MiB | verify CPU / export CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if not r.verify:
            continue
        wall, ver = r.median("export"), r.median("verify")
        lines.append(
            f"| {r.model} | {r.versions} | {r.out_bytes / 1e6:.1f} | {fmt(wall)} | {fmt(ver)} | {fmt(ver / wall)} "
            f"| {fmt(r.median('verify', 'rss_mib'), 0)} | {fmt(r.median('verify', 'cpu'))} "
            f"| {fmt(r.median('functional'))} | {fmt(r.median('functional', 'rss_mib'), 0)} "
            # CPU seconds: on a shared machine they compare better than wall times
            f"| {fmt(r.median('verify', 'cpu') / r.median('export', 'cpu'))} |"
        )
    lines += [
        "",
        "## Process baselines",
        "",
        "| what | wall s | CPU s | peak MiB |",
        "|---|---:|---:|---:|",
        *[f"| {k} | {fmt(v.wall)} | {fmt(v.cpu)} | {fmt(v.rss_mib, 0)} |" for k, v in baselines.items()],
        "",
        "## Memory per job (for Snakemake `resources: mem_mb`)",
        "",
        "Peak summed RSS (MiB) of one job, per model size: does it grow with the model?",
        "",
        "| model | params | export all versions (one job) | export v1 or v2 only (worst) | verify round trip (worst file) "
        "| verify+fn (worst file) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        all_job = next(r for r in mine if "," in r.versions)
        quant = max(r.median("export", "rss_mib") for r in mine if r.versions in ("1", "2"))
        verify_worst = max((r.median("verify", "rss_mib") for r in mine if r.verify), default=float("nan"))
        fn_worst = max((r.median("functional", "rss_mib") for r in mine if r.functional), default=float("nan"))
        lines.append(f"| {model} | {mine[0].params / 1e6:.0f}M | {fmt(all_job.median('export', 'rss_mib'), 0)} "
                     f"| {fmt(quant, 0)} | {fmt(verify_worst, 0)} | {fmt(fn_worst, 0)} |")
    if rope:
        lines += ["", "## v0 rope tables alone (CPU s, in-process, imports excluded)", "",
                  "| seq_len x head size | CPU s |", "|---|---:|", *[f"| {k} | {v:.3f} |" for k, v in rope.items()]]
    if seed_rows:
        lines += ["", "## Against llama2.c's export.py, v0 (seed: LLAMA2C_SEED_DIR, master: LLAMA2C_MASTER_DIR)", "",
                  "| model | export.py | llama2bin s | llama2bin CPU s | export.py s | export.py CPU s "
                  "| export.py / llama2bin (wall) | export.py / llama2bin (CPU) | export.py peak MiB | byte-identical |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in seed_rows:
            ow, oc = statistics.median(x.wall for x in r.ours), statistics.median(x.cpu for x in r.ours)
            sw, sc = statistics.median(x.wall for x in r.seed), statistics.median(x.cpu for x in r.seed)
            lines.append(f"| {r.model} | {r.reference} | {fmt(ow)} | {fmt(oc)} | {fmt(sw)} | {fmt(sc)} "
                         f"| {fmt(sw / ow, 1)} | {fmt(sc / oc, 1)} "
                         f"| {fmt(statistics.median(x.rss_mib for x in r.seed), 0)} | {'yes' if r.identical else 'NO'} |")
    if batch:
        lines += ["", "## Batch through Snakemake", "", batch.rstrip("\n")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--versus-only", action="store_true", help="only the comparisons with llama2.c's export.py")
    p.add_argument("--models", nargs="+", metavar="NAME", help=f"instead of --scale: any of {', '.join(SHAPES)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", default=os.path.join(HERE, "work"), help="cache and scratch folder (default bench/work)")
    p.add_argument("--results", help="Markdown report (default bench/results.md; smoke: WORK/results.md)")
    p.add_argument("--json", help="also write the raw numbers here")
    p.add_argument("--batch", type=int, metavar="N", help="also run N copies of the 15M checkpoint through Snakemake "
                   "(bench/batch.py, --cores 4), with the functional and C checks off and on, --repeats runs each")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    results = args.results or (os.path.join(args.work, "results.md") if args.scale == "smoke" else
                               os.path.join(HERE, "results.md"))
    models = args.models or SCALES[args.scale]
    out_dir = os.path.join(args.work, "out")
    os.makedirs(out_dir, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load_before = load_average()
    rows: list[Row] = []
    for name in [] if args.versus_only else models:
        shape = SHAPES[name]
        log(f"{name}: building/finding the checkpoint ({shape.n_params / 1e6:.0f}M params, {shape.kind})")
        ckpt = ensure(shape, os.path.join(args.work, "cache"))
        rows += bench_model(shape, ckpt, out_dir, args.repeats, log)
    seed_rows = []
    for reference, env in (("seed", "LLAMA2C_SEED_DIR"), ("master", "LLAMA2C_MASTER_DIR")):
        seed_dir = os.environ.get(env)
        if not seed_dir:
            log(f"{env} not set: no comparison with llama2.c {reference}'s export.py")
            continue
        for name in models:
            if SHAPES[name].kind == "llama2c":
                log(f"{name}: against llama2.c {reference}'s export.py in {seed_dir}")
                seed_rows.append(bench_seed(SHAPES[name], ensure(SHAPES[name], os.path.join(args.work, "cache")),
                                            out_dir, args.repeats, seed_dir, log, reference))
    log("process baselines")
    baselines = python_baselines(args.repeats)
    rope = rope_timings(args.repeats)
    batch_md = None
    if args.batch:
        import batch

        parts = []
        for core_only in (True, False):  # the two scenarios: checks off, then every check on
            log(f"batch: {args.batch} x 15M through snakemake --cores 4{' (checks off)' if core_only else ''}, "
                f"{args.repeats} run(s)")
            parts.append(batch.render(batch.run_batches(args.repeats, args.batch, "15M", 4,
                                                        os.path.join(args.work, "batch"), core_only=core_only,
                                                        cache=os.path.join(args.work, "cache"))))
        batch_md = "\n".join(parts)
    load_after = load_average()
    shutil.rmtree(os.path.join(out_dir, "cp"), ignore_errors=True)

    report = render(rows, baselines, machine(), args, (load_before, load_after), batch_md, rope, seed_rows)
    with open(results + ".part", "w") as f:
        f.write(report)
    os.replace(results + ".part", results)
    if args.json:
        raw = {"rows": [{k: v for k, v in asdict(r).items()} for r in rows],
               "baselines": {k: asdict(v) for k, v in baselines.items()}, "rope_tables_cpu_s": rope,
               "seed": [asdict(r) for r in seed_rows]}
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    sys.stdout.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
