"""Interruptions: an export killed mid-write leaves nothing under a final name, and a re-run
recovers results byte-identical to an uninterrupted run.

The checkpoint is big enough (~40 MB) that an export spends about a second between creating
its hidden `.NAME.*.part` files and renaming them; every test signals inside that window
(it waits for the .part files to appear) and then checks that the signal really landed
mid-export (killed by the signal, or "interrupted" in the job's log), so a too-fast export
fails the test instead of passing it vacuously.
"""

from __future__ import annotations

import filecmp
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import snakemake as run_snakemake
from conftest import snakemake_argv, workflow_copy
from helpers import ROOT, preset_arrays, run_cli, save_llama2c

from llama2bin.atomic import AtomicOutput

pytestmark = pytest.mark.slow  # kills and re-runs real exports and Snakemake runs

VERSIONS = (0, 1, 2)
SHAPE = {"dim": 320, "n_layers": 5, "n_heads": 5, "n_kv_heads": None, "vocab_size": 8192, "multiple_of": 256,
         "max_seq_len": 128}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    arrays = preset_arrays("mha", seed=11, **SHAPE)
    args = {**SHAPE, "dropout": 0.0}
    return save_llama2c(str(tmp_path_factory.mktemp("ckpt") / "big.pt"), arrays, args)


def workdir_for(path, checkpoint: str) -> str:
    return workflow_copy(path, {"models": {"big": {"source": "llama2c", "path": checkpoint}}, "versions": [0, 1, 2]})


def snakemake_cmd(*args: str) -> list[str]:
    return snakemake_argv(*args, "--configfile", "c.yaml")


def snakemake(workdir: str, *args: str) -> subprocess.CompletedProcess:
    return run_snakemake(workdir, *args, "--configfile", "c.yaml")


def parts(folder: str) -> list[str]:
    """Hidden partial files left in `folder`."""
    return sorted(glob.glob(os.path.join(folder, ".*.part")))


def default_sigint() -> None:
    """In the child before exec: SIGINT as a terminal's processes have it. A test run started in the
    background of a non-interactive shell inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: the Ctrl-C under test would be ignored by Snakemake and its jobs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_parts(folder: str, proc: subprocess.Popen, n: int = len(VERSIONS)) -> None:
    """Until the writer has created its n hidden outputs (it is then mid-export)."""
    deadline = time.monotonic() + 120  # a safety net against hanging, not a timing assertion
    while len(parts(folder)) < n:
        assert proc.poll() is None, "the export ended before it created its partial files"
        assert time.monotonic() < deadline, "no partial files appeared"
        time.sleep(0.005)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def writer_process(snakemake_pid: int, folder: str) -> int:
    """The process writing partial files in `folder` among a running Snakemake's descendants (the
    export job's own process, or the job server's worker running it): the first of them to hold
    one open, not one of its forked helpers."""
    writers = []
    for pid in descendants(snakemake_pid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
        except OSError:
            continue
        if any(os.path.dirname(t) == folder and t.endswith(".part") for t in targets):
            writers.append(pid)
    for pid in writers:
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        if parent not in writers:
            return pid
    raise AssertionError("no process writes partial files")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, checkpoint) -> str:
    """An uninterrupted run of the pipeline."""
    workdir = workdir_for(tmp_path_factory.mktemp("reference") / "w", checkpoint)
    proc = snakemake(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def result_files(workdir: str) -> list[str]:
    """Every file under results/ and reports/, relative to `workdir`."""
    return sorted(os.path.relpath(os.path.join(d, f), workdir) for top in ("results", "reports")
                  for d, _, files in os.walk(os.path.join(workdir, top)) for f in files)


def assert_same_results(workdir: str, reference: str) -> None:
    """Byte-identical to the uninterrupted run, file for file, and no partial file anywhere."""
    names = result_files(workdir)
    assert names == result_files(reference)
    assert not [n for n in names if n.endswith(".part")]
    assert "results/big/big.v0.bin" in names and "reports/summary.json" in names
    for rel in names:
        assert filecmp.cmp(os.path.join(reference, rel), os.path.join(workdir, rel), shallow=False), rel


def test_sigkill_mid_export_leaves_only_a_hidden_part_which_the_rerun_removes(tmp_path, checkpoint, reference):
    out = tmp_path / "out"
    outputs = [str(out / f"big.v{v}.bin") for v in VERSIONS]
    args = ["export", *outputs, "--checkpoint", checkpoint, "--version", *map(str, VERSIONS), "--threads", "2", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "llama2bin", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_parts(str(out), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed mid-export, not finished before the signal
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in parts(str(out)))  # no final name at all
    assert len(parts(str(out))) == len(VERSIONS)

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(os.listdir(out)) == [f"big.v{v}.bin" for v in VERSIONS]  # the dead writer's partials are gone
    for v, path in zip(VERSIONS, outputs, strict=True):
        assert filecmp.cmp(path, os.path.join(reference, f"results/big/big.v{v}.bin"), shallow=False)


def test_ctrl_c_during_a_snakemake_export_then_rerun_incomplete(tmp_path, checkpoint, reference):
    """Ctrl-C in a terminal: SIGINT to Snakemake and its jobs (the whole process group)."""
    workdir = workdir_for(tmp_path / "w", checkpoint)
    proc = subprocess.Popen(snakemake_cmd(), cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=default_sigint)
    wait_for_parts(os.path.join(workdir, "results/big"), proc)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait() != 0
    assert "llama2bin: interrupted" in open(os.path.join(workdir, "logs/export/big.log")).read()
    results = os.path.join(workdir, "results/big")
    # interrupted cleanly: no final, no partial (eval_tokens.json is another job's, done or not)
    assert not os.path.isdir(results) or set(os.listdir(results)) <= {"eval_tokens.json"}

    rerun = snakemake(workdir, "--rerun-incomplete")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_results(workdir, reference)


def test_job_killed_by_sigkill_under_snakemake_then_rerun(tmp_path, checkpoint, reference):
    """What the OOM killer or a scheduler's hard limit does: SIGKILL to the process writing, only
    (with the job server, its worker: killing the job's own process makes the server stop the
    worker with SIGTERM, which cleans up, test_job_server.py)."""
    workdir = workdir_for(tmp_path / "w", checkpoint)
    results = os.path.join(workdir, "results/big")
    proc = subprocess.Popen(snakemake_cmd(), cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for_parts(results, proc)
        os.kill(writer_process(proc.pid, os.path.realpath(results)), signal.SIGKILL)
        assert proc.wait() != 0  # the run fails ...
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    leftovers = [name for name in os.listdir(results) if name != "eval_tokens.json"]  # another job's output
    assert leftovers and all(name.startswith(".") and name.endswith(".part") for name in leftovers)  # ... mid-write

    rerun = snakemake(workdir, "--rerun-incomplete")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_results(workdir, reference)  # the dead writer's partial files are gone too


def test_ctrl_c_under_the_cluster_executor_cancels_jobs_then_rerun(tmp_path, checkpoint, reference):
    """profiles/local-cluster: Ctrl-C reaches only Snakemake (jobs run in their own sessions, as on
    a cluster); Snakemake cancels them with cancel.sh (SIGTERM, like scancel), and the export
    deletes its partial files. The re-run through the cluster executor matches the local run."""
    workdir = workdir_for(tmp_path / "w", checkpoint)
    cluster = ["--profile", "profiles/local-cluster"]
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", *cluster, "--configfile", "c.yaml"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=default_sigint)
    try:
        wait_for_parts(os.path.join(workdir, "results/big"), proc)
        os.killpg(proc.pid, signal.SIGINT)  # Snakemake's process group; the jobs are not in it
        assert proc.wait() != 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = os.path.join(workdir, "logs/export/big.log")
    deadline = time.monotonic() + 60  # the cancelled job ends on its own, after Snakemake
    while "llama2bin: interrupted" not in open(log).read():
        assert time.monotonic() < deadline, open(log).read()[-2000:]
        time.sleep(0.05)

    rerun = subprocess.run([sys.executable, "-m", "snakemake", *cluster, "--rerun-incomplete", "--configfile", "c.yaml"],
                           cwd=workdir, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_results(workdir, reference)


def test_sigterm_mid_export_deletes_its_partial_files(tmp_path, checkpoint):
    """SIGTERM (kill, scancel, a scheduler's time limit) unwinds like Ctrl-C: nothing is left."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "llama2bin", "export", str(out / "a.v0.bin"), str(out / "a.v2.bin"),
                             "--checkpoint", checkpoint, "--version", "0", "2", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_parts(str(out), proc, n=2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate()
    assert proc.returncode == 130 and "llama2bin: interrupted" in stderr, stderr
    assert os.listdir(out) == []


def test_a_live_writers_partial_file_is_never_removed(tmp_path):
    final = str(tmp_path / "x.bin")
    first = AtomicOutput(final)  # still writing: holds the lock on its .part
    stale = tmp_path / ".x.bin.dead.part"  # a killed writer's leftover: nobody holds its lock
    stale.write_bytes(b"half")
    other = tmp_path / ".y.bin.dead.part"  # another output's leftover is not this writer's business
    other.write_bytes(b"half")
    (tmp_path / ".x.bin.dir.part").mkdir()  # not a regular file: left alone
    second = AtomicOutput(final)
    assert os.path.exists(first.tmp_path) and not stale.exists() and other.exists()
    assert (tmp_path / ".x.bin.dir.part").is_dir()
    os.write(second.fd, b"second")
    second.commit()
    os.write(first.fd, b"first")
    first.commit()  # the later commit wins; both were complete files
    assert open(final, "rb").read() == b"first"
    assert sorted(os.listdir(tmp_path)) == [".x.bin.dir.part", ".y.bin.dead.part", "x.bin"]


@pytest.fixture()
def reference_copy(tmp_path, reference) -> str:
    """A finished run to tamper with (copied with mtimes and Snakemake's records)."""
    return shutil.copytree(reference, tmp_path / "w", symlinks=True)


def flip_byte_keeping_mtime(path: str, offset: int) -> None:
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ 0x40]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_reverify_reads_every_output_again_and_fails_on_a_silent_corruption(reference_copy):
    workdir = reference_copy
    first = snakemake(workdir, "reverify")
    assert first.returncode == 0, first.stderr[-3000:]
    records = [os.path.join(workdir, f"results/big/reverify/big.v{v}.verify.json") for v in VERSIONS]
    for v, record in zip(VERSIONS, records, strict=True):
        with open(record) as f:
            assert json.load(f)["passed"]
        assert filecmp.cmp(record, os.path.join(workdir, f"results/big/big.v{v}.verify.json"), shallow=False)

    # A byte changes on disk and the mtime does not: Snakemake itself sees nothing to do ...
    flip_byte_keeping_mtime(os.path.join(workdir, "results/big/big.v1.bin"), 300)
    dry = snakemake(workdir, "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    # ... and `reverify` (a target Snakemake never considers done) runs again and finds it.
    again = snakemake(workdir, "reverify")
    assert again.returncode != 0
    with open(os.path.join(workdir, "logs/reverify/reverify.log")) as f:
        log = f.read()
    assert "big.v1.bin: FAILED: tensor" in log and "big.v0.bin: OK" in log and "big.v2.bin: OK" in log
    with open(records[1]) as f:
        assert not json.load(f)["passed"]


# ---- disk space: refused before anything is written -----------------------------------------


def _golden_size(name: str) -> int:
    return os.path.getsize(os.path.join(ROOT, "tests", "data", name))


def _export_in_process(capsys, out: str, *versions: str) -> tuple[int, str]:
    from llama2bin.cli import main

    outputs = [os.path.join(out, f"b.v{v}.bin") for v in versions]
    rc = main(["export", *outputs, "--checkpoint", os.path.join(ROOT, "tests", "data", "tiny_b.pt"),
               "--version", *versions, "--group-size", "8", "--quiet"])
    return rc, capsys.readouterr().err


def test_too_little_free_space_is_refused_up_front_with_numbers(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real_statvfs = os.statvfs

    def nearly_full(path):
        st = real_statvfs(path)
        return os.statvfs_result((st.f_bsize, 4096, st.f_blocks, 10, 10, *st[5:]))  # 10 blocks of 4 KiB free

    monkeypatch.setattr(os, "statvfs", nearly_full)
    rc, err = _export_in_process(capsys, str(out), "0", "2")
    need = _golden_size("tiny_b.v0.bin") + _golden_size("tiny_b.v2.bin")  # what the header implies
    assert rc == 1
    assert err == f"llama2bin: error: {out}: not enough disk space: the outputs need {need / 1e6:.1f} MB, 0.0 MB free\n"
    assert os.listdir(out) == []


def test_a_failed_reservation_leaves_nothing(tmp_path, monkeypatch, capsys):
    """Space taken by someone else between the check and the write: posix_fallocate fails."""
    out = tmp_path / "out"

    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    rc, err = _export_in_process(capsys, str(out), "0", "2")
    assert rc == 1
    size = _golden_size("tiny_b.v0.bin")
    assert err == f"llama2bin: error: {out}/b.v0.bin: cannot reserve {size} bytes: No space left on device\n"
    assert os.listdir(out) == []


def test_a_real_small_file_system(tmp_path):
    """A 128 KiB tmpfs in a private mount namespace (root only; gone when the command ends)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ckpt = os.path.join(ROOT, "tests", "data", "tiny_b.pt")

    def in_tmpfs(*versions: str) -> subprocess.CompletedProcess:
        outputs = " ".join(f"{mnt}/b.v{v}.bin" for v in versions)
        script = (f"mount -t tmpfs -o size=128k tmpfs {mnt} || exit 99\n"
                  f"{sys.executable} -m llama2bin export {outputs} --checkpoint {ckpt} --version {' '.join(versions)}"
                  f" --group-size 8 --quiet 2>&1; status=$?\n"
                  f"echo; echo listing:; ls -A {mnt}; cmp {mnt}/b.v2.bin {ROOT}/tests/data/tiny_b.v2.bin && echo same\n"
                  f"exit $status")
        return subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True)

    try:
        proc = in_tmpfs("0", "2")
    except FileNotFoundError:
        pytest.skip("no unshare command")
    if proc.returncode == 99 or "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    message, listing = proc.stdout.split("\nlisting:\n")
    need = _golden_size("tiny_b.v0.bin") + _golden_size("tiny_b.v2.bin")  # 220 KB: more than 128 KiB
    assert proc.returncode == 1 and message.strip() == (
        f"llama2bin: error: {mnt}: not enough disk space: the outputs need {need / 1e6:.1f} MB, 0.1 MB free")
    assert listing.strip() == ""  # not even v2, which alone would have fit

    proc = in_tmpfs("2")  # 60 KB fits: the check is not over-cautious
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split("\nlisting:\n")[1].split() == ["b.v2.bin", "same"]
