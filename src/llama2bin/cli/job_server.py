"""The local job server: Snakemake jobs without Python's start-up.

Every rule runs `python -m llama2bin ...` as its own process. For a stories15M-sized model most
of a job's CPU is start-up, not work: numpy and llama2bin's modules (~0.2 CPU s per job) and, for
a report, matplotlib (~0.55 s) - about a third of a batch's CPU with the functional and C checks
off (bench/issue21.md). With `job_server: true` (the default; local execution only) the
workflow's onstart starts this server, which imports all of that once and then forks one worker
per job: the job's own process (job_client.py, standard library only) hands over its arguments,
working directory, environment and stdin/stdout/stderr, and exits with the worker's status.

What stays as it was: every job is still a process of its own that Snakemake starts, waits for and
can kill (its signals are relayed to the worker's process group, and a worker whose job process
went away is killed); outputs are the same bytes (a worker runs the same `main` on the same
arguments, in a process forked before any job's data was read); a cluster job never uses it (the
client only does when it descends from the Snakemake process that started the server).
What changes: Snakemake's `benchmark:` files measure the job process, i.e. the client, so its CPU
and peak memory are the client's; the worker's are appended to the server's ledger
(`logs/job_server.tsv`: command, wall, user and system CPU seconds, peak RSS), which
bench/batch.py reads.

Safety: the socket lives in a fresh 0700 directory, and a connection from another user id
(SO_PEERCRED) is closed unanswered. The server is single-threaded (one selector loop), so a fork
never copies a lock another thread holds; it exits when its parent does (PR_SET_PDEATHSIG) and
on SIGTERM, killing the workers still running.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

from ..job_client import HEADER, MAX_REQUEST, decode_request
from . import BLAS_THREAD_VARIABLES

# Imported once in the server, before any worker is forked: what the pipeline's commands use.
# (found by diffing sys.modules around each command of a pipeline run)
PRELOAD = (
    "numpy", "llama2bin.cli", "llama2bin.cli.export", "llama2bin.cli.verify", "llama2bin.cli.report",
    "llama2bin.cli.tools", "llama2bin.cli.fetch", "llama2bin.checks.verification", "llama2bin.formats.writer",
    "llama2bin.sources.llama2c", "llama2bin.sources.hf", "llama2bin.sources.meta",
    "llama2bin.report", "llama2bin.report.plots", "llama2bin.report.html", "llama2bin.report.markdown",
    "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.pyplot",
)
# BLAS on one thread in the server, so in every worker: llama2bin's checks pin it to one thread
# anyway (numerics.blas_threads), and setting it per job (threadpoolctl) cost each job its scan.
BLAS_ENV = {name: "1" for name in BLAS_THREAD_VARIABLES}
LEDGER_COLUMNS = ("command", "s", "cpu_user_s", "cpu_sys_s", "max_rss_mb")
_PR_SET_PDEATHSIG = 1


@dataclass
class _Job:
    conn: socket.socket
    pid: int
    pidfd: int
    command: str
    started: float


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    try:
        if len(msg) < HEADER.size:
            raise ValueError("short request")
        (length,) = HEADER.unpack_from(msg)
        if length > MAX_REQUEST:
            raise ValueError("request too large")
        data = msg[HEADER.size :]
        while len(data) < length:
            chunk = conn.recv(min(1 << 20, length - len(data)))
            if not chunk:
                raise ValueError("truncated request")
            data += chunk
        if len(fds) != 3:
            raise ValueError("a request passes stdin, stdout and stderr")
        argv, cwd, env = decode_request(data)
        return {"argv": argv, "cwd": cwd, "env": env}, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _run_worker(request: dict, fds: list[int], listener: socket.socket, jobs: list[_Job]) -> None:
    """In the forked child: become the job's process and run its command; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the server's, not the job's
        os.setpgid(0, 0)  # a group of its own: the client's relayed signals reach its children too
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
        listener.close()
        for job in jobs:
            job.conn.close()
            os.close(job.pidfd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # recomputed from the job's TMPDIR
        sys.argv = ["llama2bin", *request["argv"]]
        from . import main

        code = main(request["argv"])
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # what a normal interpreter exit runs
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def _status_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def serve(path: str, ledger: str | None, parent: int) -> None:
    """Accept jobs on the Unix socket `path` until SIGTERM or the death of process `parent`."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        return
    os.environ.update(BLAS_ENV)  # before numpy's import, which reads them
    for name in PRELOAD:
        importlib.import_module(name)
    with contextlib.suppress(Exception):
        from PIL import Image

        from ..report.plots import render_notice_png

        Image.init()  # PIL registers its image plugins on first use: here, once
        render_notice_png("warm-up")  # matplotlib's fonts loaded and cached once, not by every report
    with contextlib.suppress(Exception):  # v0's cos/sin (MKL): loaded once here, not by every v0 job
        from ..torch_cpu_trig import cos_sin_backend

        cos_sin_backend()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    # The compiled Q8_0 kernels (export's, GGUF's and verify's): loaded once here, so every worker quantizes
    # and checks with them (same bytes as numpy, several times faster) without paying numba's load
    # (~0.4 s), which a small model's job alone would not repay. Without numba: numpy, as before.
    # After listen(): a job arriving meanwhile waits for this (~0.3 s) rather than running on its own.
    with contextlib.suppress(Exception):
        from ..checks import gguf_readback, q8_chunk
        from ..formats import gguf_encode, q8_fast

        q8_fast.load()
        q8_chunk.load_compiled()
        gguf_encode.load()
        gguf_readback.load_compiled()
    # What the workers inherit stays out of their garbage collections: fewer pages copied on write
    gc.freeze()
    jobs: list[_Job] = []
    stopping = []
    # SIGTERM wakes the loop at once (the signal's byte on a socket it watches), not at select's timeout
    wake_read, wake_write = socket.socketpair()
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno())
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the jobs; Snakemake then stops the server
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    log = open(ledger, "a", buffering=1, encoding="utf-8") if ledger else None
    if log is not None and log.tell() == 0:
        log.write("\t".join(LEDGER_COLUMNS) + "\n")
    try:
        while not stopping:
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is listener:
                    _accept(listener, selector, jobs)
                elif key.fileobj is wake_read:
                    wake_read.recv(64)
                else:
                    job: _Job = key.data
                    if key.fileobj is job.conn:  # the job process went away (or wrote): stop its worker
                        selector.unregister(job.conn)
                        with contextlib.suppress(OSError):
                            os.killpg(job.pid, signal.SIGTERM)
                        continue
                    _finish(job, selector, jobs, log)
            if os.getppid() != parent:
                break
    finally:
        for job in jobs:
            with contextlib.suppress(OSError):
                os.killpg(job.pid, signal.SIGTERM)
        listener.close()
        with contextlib.suppress(OSError):  # also when Snakemake died without stopping it (PDEATHSIG)
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
        if log is not None:
            log.close()


def _accept(listener: socket.socket, selector: selectors.BaseSelector, jobs: list[_Job]) -> None:
    conn, _ = listener.accept()
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] != os.getuid():
            conn.close()
            return
        conn.settimeout(10.0)
        request, fds = _receive(conn)
    except (OSError, ValueError):
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _run_worker(request, fds, listener, jobs)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    job = _Job(conn, pid, pidfd, (request["argv"] or ["?"])[0], time.monotonic())
    jobs.append(job)
    try:
        conn.sendall(f"pid {pid}\n".encode())
    except OSError:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGTERM)
    conn.setblocking(False)
    selector.register(conn, selectors.EVENT_READ, job)
    selector.register(pidfd, selectors.EVENT_READ, job)


def _finish(job: _Job, selector: selectors.BaseSelector, jobs: list[_Job], log) -> None:
    _, status, usage = os.wait4(job.pid, 0)
    with contextlib.suppress(KeyError):
        selector.unregister(job.conn)
    selector.unregister(job.pidfd)
    os.close(job.pidfd)
    jobs.remove(job)
    if log is not None:  # before the job's process hears it ended: its row is there when the job is done
        row = (job.command, f"{time.monotonic() - job.started:.3f}", f"{usage.ru_utime:.3f}", f"{usage.ru_stime:.3f}",
               f"{usage.ru_maxrss / 1024:.1f}")
        log.write("\t".join(row) + "\n")
    with contextlib.suppress(OSError):
        job.conn.setblocking(True)
        job.conn.sendall(f"exit {_status_code(status)}\n".encode())
    job.conn.close()


@dataclass
class JobServer:
    """A running server: `env` is the value of $LLAMA2BIN_JOB_SERVER for the jobs."""

    proc: subprocess.Popen
    directory: str
    env: str

    @classmethod
    def start(cls, ledger: str | None, wait: bool = True) -> JobServer:
        """Start a server for this process's jobs; with `wait`, return once it listens (or has
        failed: then the jobs simply run on their own). Without, at once: jobs that start before it
        listens run on their own, as with no server (the workflow's first jobs, the fetch records,
        import no numpy anyway), instead of Snakemake waiting ~0.5 s for the server's imports."""
        directory = tempfile.mkdtemp(prefix="llama2bin-jobs-")  # 0700: only this user reaches the socket
        path = os.path.join(directory, "socket")
        proc = subprocess.Popen([sys.executable, "-m", "llama2bin.cli.job_server", path, ledger or "", str(os.getpid())],
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while wait and not os.path.exists(path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return cls(proc, directory, f"{os.getpid()}:{path}")

    def stop(self) -> None:
        """Stop the server (it kills workers still running) and remove its socket directory."""
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2] or None, int(sys.argv[3]))
