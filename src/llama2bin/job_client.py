"""The job's side of the local job server (cli/job_server.py): standard library only, so that a
job whose work the server does costs the interpreter's start and nothing else.

`python -m llama2bin ARGS` calls `forward(ARGS)` first. With $LLAMA2BIN_JOB_SERVER set (by the
workflow's onstart, "PID:SOCKET") and this process a descendant of PID (the Snakemake process that
started the server: a local job, not a cluster job that inherited the variable), it hands the
server its arguments, working directory, environment and its stdin, stdout and stderr, forwards
SIGINT, SIGTERM and SIGHUP to the worker, and exits with the worker's status. In every other case
(no variable, another process tree, no server listening) it returns None and the command runs
here, as it always did: the server only ever saves time, it is never needed.
"""

from __future__ import annotations

# _socket and _signal: the C modules behind `socket` and `signal`, which import `enum` (and
# `selectors`) to wrap their constants: ~7 ms of the ~18 ms this client cost a job, every job.
import _signal
import _socket
import array
import os
import struct

ENV = "LLAMA2BIN_JOB_SERVER"
# A request: its length (4 bytes, big-endian), then NUL-terminated strings (no POSIX argument,
# path or environment entry can hold a NUL; json's import alone cost a job 6 ms): the number of
# arguments, the arguments, the working directory, then the environment's KEY=VALUE entries. fds
# 0, 1, 2 ride along (SCM_RIGHTS). Answers are lines: "pid N" when the worker runs, "exit N" when it ended.
HEADER = struct.Struct("!I")
MAX_REQUEST = 16 << 20


def _ancestors() -> set[int]:
    """Process ids from this process's parent up to init (Linux /proc; empty elsewhere)."""
    seen: set[int] = set()
    pid = os.getppid()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            break
        pid = int(stat[stat.rindex(b")") + 2 :].split()[1])  # the field after the state: ppid
    return seen


def _lines(sock: _socket.socket):
    buf = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode("ascii", "replace")


def forward(argv: list[str]) -> int | None:
    """The exit status of `argv` run by the job server, or None when it is not for this process."""
    spec = os.environ.get(ENV, "")
    owner, _, path = spec.partition(":")
    if not owner.isdigit() or not path or int(owner) not in _ancestors():
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    # the worker's own children start plainly (without ENV)
    env = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in os.environ.items() if k != ENV]
    payload = b"".join(s + b"\0" for s in [str(len(argv)).encode(), *map(os.fsencode, argv), os.fsencode(os.getcwd()), *env])
    fds = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))]
    try:
        try:
            data = HEADER.pack(len(payload)) + payload
            sent = sock.sendmsg([data], fds)  # the descriptors ride with the first bytes
            sock.sendall(data[sent:])
            lines = _lines(sock)
            first = next(lines, "")
        except OSError:
            return None  # the server went away before the worker started: run here
        if not first.startswith("pid "):
            return None
        worker = int(first.split()[1])

        def relay(signum: int, _frame: object) -> None:
            try:
                os.killpg(worker, signum)  # the worker leads its own process group
            except OSError:
                pass

        for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
            _signal.signal(sig, relay)
        for line in lines:
            if line.startswith("exit "):
                return int(line.split()[1])
    finally:
        sock.close()
    os.write(2, b"llama2bin: the job server stopped while running this job\n")
    return 1


def decode_request(payload: bytes) -> tuple[list[str], str, dict[str, str]]:
    """(argv, cwd, env) of a request's payload; ValueError when it is not one."""
    parts = payload.split(b"\0")
    if parts.pop() != b"" or not parts or not parts[0].isdigit():
        raise ValueError("malformed request")
    n = int(parts[0])
    if len(parts) < n + 2:
        raise ValueError("malformed request")
    argv = [os.fsdecode(a) for a in parts[1 : n + 1]]
    env = {}
    for entry in parts[n + 2 :]:
        key, sep, value = entry.partition(b"=")
        if not sep or not key:
            raise ValueError("malformed environment entry")
        env[os.fsdecode(key)] = os.fsdecode(value)
    return argv, os.fsdecode(parts[n + 1]), env
