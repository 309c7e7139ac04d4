"""Run chunk jobs on forked worker processes: both cores, no GIL.

Why processes: a chunk's work is a few dozen numpy calls on L2-sized blocks. Each call
releases the GIL, but two threads then hand the GIL back and forth dozens of times per
block, and on a small VM every hand-over costs about as much as the call: measured on a
2-core machine, two threads quantize only ~1.1x as fast as one, two processes 2.0x.

How: the task list is built before forking, so every worker inherits it (and the opened
source and output files) and needs nothing pickled but its results. Worker k runs tasks
k, k + W, k + 2W, ... in order and streams each result back through its own pipe; the parent
reads them back in task order, so what it computes from them never depends on timing.
Workers write their outputs themselves (positional writes to inherited descriptors).

Workers die with the parent (PR_SET_PDEATHSIG on Linux) and on SIGTERM, ignore Ctrl-C (the
parent unwinds and kills them), and never run atexit handlers or flush inherited stdio.
Fork is used on Linux only; elsewhere, or with one worker, tasks run in this process.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import Llama2binError

_LEN = struct.Struct("<Q")


def can_fork() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork")


# Work below this many bytes runs in one process: a fork, and the pages it copies on write, cost
# more than the work (a verify of a 17 MB Q8_0 file: 0.12 CPU s in its forked helpers, 0.03 s of
# comparing; measured in the job server, whose address space numba's libraries make large).
SMALL_WORK_BYTES = 32 << 20


def default_workers(total_bytes: int) -> int:
    """Worker processes when the caller does not say: every usable core, at most 2 (beyond that
    the page cache, not the CPU, limits a conversion), and 1 for work too small to repay a fork."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return 1 if total_bytes < SMALL_WORK_BYTES else min(2, cores)


def workers_for(total_bytes: int, requested: int | None) -> int:
    """Worker processes for `total_bytes` of work when the caller allows `requested` (None: the
    default): never more than one for small work, whatever was allowed."""
    if total_bytes < SMALL_WORK_BYTES:
        return 1
    return requested if requested is not None else default_workers(total_bytes)


def die_with_parent(parent: int) -> None:
    """In a forked child: be killed when `parent` dies (Linux), or exit now if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(f: Any, n: int) -> bytes:
    data = f.read(n)
    if data is None or len(data) < n:
        raise EOFError
    return data


def send_message(fd: int, value: Any) -> None:
    """`value`, pickled and length-prefixed, written whole to the pipe `fd` (`receive_message` reads it)."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, _LEN.pack(len(data)) + data)


def receive_message(f: Any) -> Any:
    """The next value `send_message` wrote to the pipe `f` (a binary file); EOFError at its end."""
    (n,) = _LEN.unpack(_read_exact(f, _LEN.size))
    return pickle.loads(_read_exact(f, n))


def send_outcome(fd: int, fn: Callable[..., Any], *args: Any) -> bool:
    """Send (True, fn(*args)), or (False, the exception it raised), for `receive_outcome`; an
    exception that cannot be pickled goes as its text. Returns whether fn succeeded."""
    try:
        msg: tuple[bool, Any] = (True, fn(*args))
    except BaseException as e:  # the receiving side re-raises it
        msg = (False, e)
    try:
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that cannot be pickled: its text
        data = pickle.dumps((False, Llama2binError(f"{type(msg[1]).__name__}: {msg[1]}")))
    _write_all(fd, _LEN.pack(len(data)) + data)
    return msg[0]


def receive_outcome(f: Any) -> Any:
    """The value `send_outcome` sent, or its exception raised here; EOFError when none came."""
    ok, value = receive_message(f)
    if not ok:
        raise value
    return value


def fork_child(run: Callable[[], None]) -> int:
    """Fork a child that runs `run()` and exits (status 0 when it returns, 1 when it raises), never
    returning into this process's code; returns its pid. Standard output is flushed first (the
    child would print it again), and SIGINT and SIGTERM stay blocked across the fork, so neither
    can land in the child before it has left this process's code (whose cleanup would delete the
    outputs); in the child Ctrl-C is ignored (the parent unwinds and kills it), SIGTERM kills, and
    the death of this process kills it too. Create children before starting any thread."""
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        pid = os.fork()
        if pid == 0:  # the child
            status = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                die_with_parent(parent)
                run()
                status = 0
            except BaseException:  # parent gone (broken pipe) or killed: nothing left to tell
                pass
            finally:
                os._exit(status)
        return pid
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def reap(pid: int, kill: bool = False) -> None:
    """Wait for the child `pid`; with `kill`, SIGKILL it first (if it still runs)."""
    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.waitpid(pid, 0)


class ForkPool:
    """`with ForkPool(tasks, fn, workers) as pool: for r in pool.results(): ...`

    fn(task) runs in the workers; results come back in task order; the first exception a task
    raises is re-raised by results() (after which the workers are killed). Fork happens in
    __enter__: start threads only after it (a thread running during fork can leave a lock
    held forever in the child).
    """

    def __init__(self, tasks: Sequence[Any], fn: Callable[[Any], Any], workers: int):
        self.tasks = tasks
        self.fn = fn
        self.workers = max(1, min(workers, len(tasks))) if can_fork() else 1
        self._pids: list[int] = []
        self._pipes: list[Any] = []

    def __enter__(self) -> ForkPool:
        if self.workers > 1:
            try:
                for k in range(self.workers):
                    r, w = os.pipe()
                    earlier = list(self._pipes)

                    def work(k: int = k, r: int = r, w: int = w, earlier: list[Any] = earlier) -> None:
                        os.close(r)
                        for other in earlier:
                            other.close()
                        self._work(k, w)

                    pid = fork_child(work)
                    os.close(w)
                    self._pids.append(pid)
                    self._pipes.append(os.fdopen(r, "rb"))
            except BaseException:
                self.__exit__(*sys.exc_info())
                raise
        return self

    def _work(self, k: int, fd: int) -> None:
        """Worker k: tasks k, k + W, ... in order, each result sent as it is made; the first
        failure is sent and ends the worker."""
        for i in range(k, len(self.tasks), self.workers):
            if not send_outcome(fd, self.fn, self.tasks[i]):
                break

    def results(self) -> Iterator[Any]:
        if self.workers == 1:
            for task in self.tasks:
                yield self.fn(task)
            return
        for i in range(len(self.tasks)):
            pipe = self._pipes[i % self.workers]
            try:
                value = receive_outcome(pipe)
            except EOFError:
                raise Llama2binError(self._death(i % self.workers)) from None
            yield value

    def _death(self, k: int) -> str:
        _, status = os.waitpid(self._pids[k], 0)
        self._pids[k] = -1
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            why = " (out of memory?)" if sig == signal.SIGKILL else ""
            return f"worker process {k} was killed by signal {signal.Signals(sig).name}{why}"
        return f"worker process {k} exited with status {os.waitstatus_to_exitcode(status)}"

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        failed = exc_type is not None
        for pipe in self._pipes:
            pipe.close()
        for pid in self._pids:
            if pid > 0:
                reap(pid, kill=failed)
        self._pids, self._pipes = [], []


class ForkedCall:
    """`with ForkedCall(fn, *args) as call: ... call.result()`: fn(*args) in a forked child process,
    so a GIL-holding side job (importing torch for v0's rope tables) or a long one (sha256 of a
    multi-GB file) runs beside the workers without slowing this process. Where fork is not
    used (or `fork` is False: work too small to repay one), fn runs in result(). Like ForkPool:
    create it before starting any thread."""

    def __init__(self, fn: Callable[..., Any], *args: Any, fork: bool = True):
        self.fn, self.args = fn, args
        self.fork = fork
        self._pid = -1
        self._pipe: Any = None

    def __enter__(self) -> ForkedCall:
        if self.fork and can_fork():
            r, w = os.pipe()

            def call() -> None:
                os.close(r)
                send_outcome(w, self.fn, *self.args)

            self._pid = fork_child(call)
            os.close(w)
            self._pipe = os.fdopen(r, "rb")
        return self

    def result(self) -> Any:
        if self._pid < 0:
            return self.fn(*self.args)
        try:
            return receive_outcome(self._pipe)
        except EOFError:
            _, status = os.waitpid(self._pid, 0)
            self._pid = -1
            raise Llama2binError(f"side process for {getattr(self.fn, '__name__', 'a task')} died (status {status})") from None
        finally:
            self._pipe.close()
            if self._pid > 0:
                os.waitpid(self._pid, 0)
                self._pid = -1

    def __exit__(self, *exc: object) -> None:
        if self._pid > 0:
            reap(self._pid, kill=True)
            self._pid = -1
        if self._pipe is not None:
            self._pipe.close()
