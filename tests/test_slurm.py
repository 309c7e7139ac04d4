"""The default pipeline on a real one-node SLURM cluster, through snakemake-executor-plugin-slurm
(profiles/slurm-local): Debian's slurmctld, slurmd and munge, started by profiles/slurm-local/cluster.sh
for this module and stopped after it. Every job is an sbatch job that the plugin's jobstep runs
with srun inside its allocation; the plugin follows them with squeue.

One interrupted run and its re-run cover both promises, cheaper than a clean run plus one more.
A job is cancelled with scancel while its step runs, midway through the pipeline (once the first
.bin exists): that run fails and names the job. The re-run through SLURM finishes the pipeline,
and everything is what a local run gives: the tracked reports/ byte for byte
(tests/test_pipeline.py holds those to a fresh local run) and every .bin file by the sha256 that
reports/summary.json records, with no partial file left behind. Rule names are never used: the
test holds the pipeline's outputs, not its shape.

Skipped only when SLURM cannot run here (not root, slurm-wlm/munge not installed: see
.ci/slurm-install.sh, or this machine's /etc/slurm/slurm.conf is taken); with
LLAMA2BIN_REQUIRE_SLURM=1 (.ci/run sets it) that is a failure instead."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

WORKFLOW_FILES = ("Snakefile", "config.yaml", "workflow", "profiles")
CLUSTER = os.path.join(ROOT, "profiles", "slurm-local", "cluster.sh")
CANNOT_RUN_HERE = 3  # cluster.sh's exit status when SLURM cannot run on this machine
# cluster.sh makes /etc/slurm/slurm.conf point at its cluster: one at a time per machine, so a
# second test session (another worktree, say) waits here for the first one's cluster to stop.
LOCK = "/tmp/llama2bin-slurm-cluster.lock"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm-local"]


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cluster_logs(cluster: Path) -> str:
    return "".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}"
                   for log in sorted((cluster / "log").glob("*.log")))


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    cluster = tmp_path_factory.mktemp("slurm") / "cluster"
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        start = subprocess.run([CLUSTER, "start", str(cluster)], capture_output=True, text=True, timeout=120)
        if start.returncode == CANNOT_RUN_HERE:
            (pytest.fail if os.environ.get("LLAMA2BIN_REQUIRE_SLURM") else pytest.skip)(start.stderr.strip())
        assert start.returncode == 0, start.stderr + cluster_logs(cluster)
        try:
            yield cluster
        finally:
            subprocess.run([CLUSTER, "stop", str(cluster)], timeout=120)


def squeue(*args: str) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", *args], capture_output=True, text=True, check=True).stdout
    return out.split()


def submitted_jobs(snakemake_output: str) -> list[tuple[str, str]]:
    """(SLURM job id, job log) for every job Snakemake submitted; each job that is not a local rule
    must be one of them."""
    jobs = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", snakemake_output)
    assert len(jobs) == len(re.findall(r"^rule \w+:$", snakemake_output, re.M)), snakemake_output[-3000:]
    return jobs


def cancel_a_running_job(workdir: Path, proc: subprocess.Popen) -> str:
    """Once the first .bin exists, scancel a job whose step (the rule's command under srun) runs;
    returns its SLURM job id. Tries again if the job ended before the cancel reached it."""
    deadline = time.monotonic() + 500  # a safety net against hanging, not a timing assertion
    while True:
        assert proc.poll() is None, "the pipeline ended before a job could be cancelled"
        assert time.monotonic() < deadline, "no running job to cancel"
        running = sorted(step.split(".")[0] for step in squeue("--steps", "--format=%i") if step.endswith(".0"))
        if running and list(workdir.glob("results/*/*.bin")):
            job = running[0]
            subprocess.run(["scancel", job], capture_output=True)
            while (state := squeue("--states=all", "--format=%T", f"--jobs={job}")) in (["RUNNING"], ["COMPLETING"]):
                time.sleep(0.1)
            if state == ["CANCELLED"]:
                return job
        time.sleep(0.2)


@pytest.mark.slow  # starts a SLURM cluster and runs the pipeline through it twice
def test_default_pipeline_on_slurm_with_a_job_cancelled_mid_run(slurm_cluster, tmp_path):
    workdir = tmp_path / "w"
    os.makedirs(workdir)
    for name in WORKFLOW_FILES:
        src = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, workdir / name)

    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(SNAKEMAKE, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        cancelled = cancel_a_running_job(workdir, proc)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = (tmp_path / "first.log").read_text()
    assert proc.returncode != 0, first[-3000:]
    assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'" in first, first[-3000:]
    logs = dict(submitted_jobs(first))
    assert cancelled in logs, first[-3000:]
    assert re.search(rf"JOB {cancelled} ON \S+ CANCELLED AT", Path(logs[cancelled]).read_text())  # while it ran

    run = subprocess.run(SNAKEMAKE, cwd=workdir, capture_output=True, text=True, timeout=600)
    second = run.stdout + run.stderr
    (tmp_path / "second.log").write_text(second)
    assert run.returncode == 0, second[-4000:] + cluster_logs(slurm_cluster)
    assert submitted_jobs(second)  # the cancelled job and what depends on it ran again, on SLURM

    # Every job SLURM ran was sized by the workflow and ran in the working directory.
    jobs = [line.split("|") for line in squeue("--states=all", "--format=%i|%T|%m|%l|%Z")]
    assert len(jobs) == len(submitted_jobs(first)) + len(submitted_jobs(second))
    for job_id, state, memory, time_limit, cwd in jobs:
        assert state == ("CANCELLED" if job_id == cancelled else "COMPLETED"), (job_id, state, logs.get(job_id))
        assert memory.endswith("M") and int(memory[:-1]) > 0 and time_limit not in ("UNLIMITED", "NOT_SET"), job_id
        assert cwd == str(workdir)

    # What a local run gives: the tracked reports byte for byte, every .bin by its recorded sha256.
    tracked = Path(ROOT) / "reports"
    names = sorted(str(p.relative_to(tracked)) for p in tracked.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(workdir / "reports")) for p in (workdir / "reports").rglob("*") if p.is_file()) == names
    for name in names:
        assert (workdir / "reports" / name).read_bytes() == (tracked / name).read_bytes(), name
    rows = [r for r in json.loads((tracked / "summary.json").read_text())["files"] if r["file"].endswith(".bin")]
    assert rows
    for row in rows:
        assert sha256(str(workdir / "results" / row["model"] / row["file"])) == row["sha256"], row["file"]
    assert not list(workdir.glob("results/**/.*.part"))  # the cancelled job left no partial file


def test_the_tested_profile_sizes_jobs_as_the_users_profile_does():
    """profiles/slurm-local (run on SLURM above) asks for what profiles/slurm asks for."""
    def load(name: str) -> dict:
        return yaml.safe_load(open(os.path.join(ROOT, "profiles", name, "config.yaml")))

    users, tested = load("slurm"), load("slurm-local")
    assert users["executor"] == tested["executor"] == "slurm"
    for key in ("default-resources", "set-resources", "local-cores"):
        assert tested.get(key) == users.get(key), key
