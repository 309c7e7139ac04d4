"""The whole default pipeline through Snakemake's generic cluster executor (profiles/local-cluster):
every non-local job is a separate process started by submit.sh with an empty environment, so
a job that relied on the submitting process (its environment, its imports, its state) would
fail here. The results must be what a local run gives: the tracked reports/ byte for byte
(tests/test_pipeline.py holds those to a fresh local run), the .bin files by their sha256
recorded in reports/summary.json, and every verify JSON what a local `reverify` writes."""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re

import pytest
from conftest import snakemake, workflow_copy
from helpers import ROOT

pytestmark = pytest.mark.slow  # every test runs Snakemake through the cluster executor

MARKER = "LLAMA2BIN_TEST_SUBMITTER_ONLY"  # set in the submitting process only
JOB_ENV = {"HOME", "LANG", "PATH", "PWD", "TMPDIR", "SHLVL", "_"}  # what a job may see (sh adds PWD, SHLVL, _)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_default_pipeline_through_the_cluster_executor(tmp_path):
    workdir = tmp_path / "w"
    workflow_copy(workdir)
    env = {**os.environ, MARKER: "1"}
    proc = snakemake(workdir, "--profile", "profiles/local-cluster", cores=None, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    # Every job Snakemake submitted ran through submit.sh, with nothing but the minimal environment.
    submitted = dict(re.findall(r"Submitted job (\d+) with external jobid '(\d+-\w+)'", out))
    assert submitted, out[-3000:]
    logs = sorted(os.listdir(workdir / "logs" / "cluster"))
    assert len(logs) == len(submitted)
    rules = {m.group(1) for log in logs if (m := re.fullmatch(r"snakejob\.(\w+)\.\d+\.log", log))}
    assert {"demo_checkpoint", "export", "verify"} <= rules
    assert not re.search(r"^localrule (demo_checkpoint|export|verify):", out, re.M)  # none ran in the main process
    for log in logs:
        text = (workdir / "logs" / "cluster" / log).read_text()
        seen = dict(line[len("# env: "):].split("=", 1) for line in text.splitlines() if line.startswith("# env: "))
        assert set(seen) <= JOB_ENV and MARKER not in seen, (log, seen)
        assert seen["PATH"] == "/usr/bin:/bin" and seen["HOME"] != os.environ.get("HOME"), log
        requested = re.search(r"^# requested: cpus=(\d+) mem_mb=(\d+) runtime=(\d+)$", text, re.M)
        assert requested, text[:500]  # threads, mem_mb and runtime resolved for every job
    for job_id in submitted.values():  # status.sh's record of each job's exit status
        assert (workdir / ".snakemake" / "local-cluster" / f"{job_id}.exit").read_text().strip() == "0"

    # Same results as a local run.
    tracked = os.path.join(ROOT, "reports")
    names = [os.path.relpath(os.path.join(d, f), tracked) for d, _, files in os.walk(tracked) for f in files]
    fresh = [os.path.relpath(os.path.join(d, f), workdir / "reports") for d, _, files in os.walk(workdir / "reports")
             for f in files]
    assert sorted(names) == sorted(fresh)
    match, mismatch, errors = filecmp.cmpfiles(tracked, workdir / "reports", names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    summary = json.loads((workdir / "reports" / "summary.json").read_text())["files"]
    bins = [workdir / "results" / row["model"] / row["file"] for row in summary if row["file"].endswith(".bin")]
    assert bins
    for path, row in zip(bins, (r for r in summary if r["file"].endswith(".bin")), strict=True):
        assert sha256(str(path)) == row["sha256"], row["file"]

    # The same verification in another layout and thread count: `reverify` in this process's
    # environment with one thread, against the cluster jobs' verify JSONs (2 threads, empty
    # environment): identical bytes, unrounded statistics included.
    local = snakemake(workdir, "reverify", cores=1, env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
                      timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    records = sorted((workdir / "results").glob("*/reverify/*.verify.json"))
    assert len(records) == len(summary)
    for record in records:
        pipeline = record.parent.parent / record.name
        assert record.read_bytes() == pipeline.read_bytes(), record.name


def test_slurm_profile_is_valid_and_sizes_every_job(tmp_path):
    """profiles/slurm, dry-run with the local executor in place of the SLURM plugin: every key is
    one Snakemake knows, and every job gets a memory and a time limit."""
    workdir = tmp_path / "w"
    workflow_copy(workdir)
    proc = snakemake(workdir, "--profile", "profiles/slurm", "--executor", "local", "-n", cores=2)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, re.M)
    assert {"export", "verify"} <= {rule for rule, _ in jobs}
    assert any(re.search(r"\bruntime=30\b", r) for _, r in jobs)  # the profile's default, for inputs known now
    for rule, resources in jobs:
        if rule in ("all", "report", "summary"):  # local rules: no cluster job
            continue
        assert re.search(r"\bmem_mb=\d+", resources) and re.search(r"\bruntime=(\d+|<TBD>)", resources), (rule, resources)
