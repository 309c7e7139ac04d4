"""The local job server (cli/job_server.py, job_client.py): a job it runs is the same command -
same output, error line and exit status - and a job that is stopped stops its worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import DATA

from llama2bin.cli.job_server import LEDGER_COLUMNS, JobServer
from llama2bin.job_client import ENV


@pytest.fixture
def server(tmp_path):
    ledger = tmp_path / "ledger.tsv"
    srv = JobServer.start(str(ledger))
    assert os.path.exists(srv.env.split(":", 1)[1]), "the server did not start listening"
    yield srv, ledger
    srv.stop()
    assert not os.path.exists(srv.directory)


def _cli(*args: str, env_value: str | None = None, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if env_value is not None:
        env[ENV] = env_value
    return subprocess.Popen([sys.executable, "-m", "llama2bin", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _run(*args: str, env_value: str | None = None) -> tuple[int, str, str]:
    proc = _cli(*args, env_value=env_value)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _ledger_rows(ledger) -> list[list[str]]:
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    assert not lines or lines[0].split("\t") == list(LEDGER_COLUMNS)
    return [line.split("\t") for line in lines[1:]]


def test_a_job_run_by_the_server_is_the_same_command(server, tmp_path):
    srv, ledger = server
    good = ("inspect", os.path.join(DATA, "tiny_a.v2.bin"), "--json")
    bad = ("inspect", str(tmp_path / "missing.bin"))
    for args in (good, bad):
        alone = _run(*args)
        served = _run(*args, env_value=srv.env)
        assert served == alone
    assert alone[0] == 1 and alone[2].count("\n") == 1 and "missing.bin" in alone[2]
    rows = _ledger_rows(ledger)
    assert [r[0] for r in rows] == ["inspect", "inspect"]  # both ran in the server's workers
    assert all(float(r[4]) > 0 for r in rows)  # the worker's own peak RSS


def test_the_working_directory_and_environment_are_the_job_s(server, tmp_path):
    srv, ledger = server
    os.symlink(os.path.join(DATA, "tiny_a.v2.bin"), tmp_path / "here.bin")
    proc = _cli("inspect", "here.bin", "--json", env_value=srv.env, cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert '"version": 2' in out
    assert len(_ledger_rows(ledger)) == 1


def test_a_large_environment_reaches_the_worker_whole(server, tmp_path):
    """A request bigger than a socket buffer (1 MB of environment): the server reads it whole and
    runs it (a truncated one would be refused, and the job would run on its own: no ledger row)."""
    srv, ledger = server
    os.symlink(os.path.join(DATA, "tiny_a.v2.bin"), tmp_path / "here.bin")
    big = {f"BIG{i}": "x" * 100_000 for i in range(10)}  # 1 MB: exec takes up to 128 KB a variable
    env = {k: v for k, v in os.environ.items() if k != ENV} | {ENV: srv.env} | big
    proc = subprocess.run([sys.executable, "-m", "llama2bin", "inspect", "here.bin"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(_ledger_rows(ledger)) == 1


def test_a_process_outside_the_server_s_tree_runs_its_own_command(server):
    srv, ledger = server
    path = srv.env.split(":", 1)[1]
    # a cluster job inheriting the variable: the named Snakemake process is none of its ancestors
    assert _run("inspect", os.path.join(DATA, "tiny_a.v2.bin"), env_value=f"{srv.proc.pid}:{path}")[0] == 0
    assert _run("inspect", os.path.join(DATA, "tiny_a.v2.bin"), env_value=f"{os.getpid()}:{path}.gone")[0] == 0
    assert _ledger_rows(ledger) == []


def _worker_of(srv: JobServer, timeout: float = 30.0) -> int:
    """The pid of the server's one running worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children") as f:
            kids = [int(p) for p in f.read().split()]
        if kids:
            return kids[0]
        time.sleep(0.02)
    raise AssertionError("no worker started")


def _gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith("Z"):  # reaped any moment now
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A model whose evaluation-token sampling takes the worker several CPU seconds (stopped long before)."""
    from conftest import CheckpointFactory

    folder = tmp_path_factory.mktemp("wide")
    return CheckpointFactory(str(folder))("llama2c", dim=512, n_heads=8, n_layers=4, vocab_size=32000)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_job_stops_its_worker(server, tmp_path, wide_model, how):
    """SIGTERM to the job's process is relayed to the worker; a job process killed outright
    (it cannot relay anything) is noticed by the server, which stops the worker."""
    srv, ledger = server
    proc = _cli("eval-tokens", "--checkpoint", wide_model, "--eval-seqs", "64", "--eval-len", "32",
                str(tmp_path / "tokens.json"), env_value=srv.env)
    worker = _worker_of(srv)
    time.sleep(0.5)
    assert not _gone(worker, timeout=0), "the worker ended before it was stopped: give it more work"
    proc.send_signal(getattr(signal, how))
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert _gone(worker), "the worker outlived its job"
    deadline = time.monotonic() + 30
    while not _ledger_rows(ledger) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r[0] for r in _ledger_rows(ledger)] == ["eval-tokens"]
    assert not (tmp_path / "tokens.json").exists()
