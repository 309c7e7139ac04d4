"""Small C programs and libraries llama2bin compiles itself, once per content, into a private cache.

Two users: the C consumer check (checks/ccheck.py, an executable) and, on x86-64 CPUs that are not
Intel's, a one-function library that lets MKL take its Intel AVX2 code path for the v0 rope tables
(torch_cpu_math.py). Each build is keyed by everything its output depends on (sources, compiler
command, resolved path and `--version`, flags, machine), published in the cache by an atomic
rename (concurrent jobs of a batch build it once and never see half a file) and used only when it
belongs to this user and nobody else can write it, since what is found there is run or loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable

from .errors import Llama2binError


def find_compiler(cc: str | None = None) -> list[str] | None:
    """The compiler command: `cc` if given (an error if it does not exist), else $CC, else `cc`;
    None when neither is installed."""
    if cc:
        cmd = shlex.split(cc)
        if not cmd or shutil.which(cmd[0]) is None:
            raise Llama2binError(f"C compiler {cc!r} not found")
        return cmd
    cmd = shlex.split(os.environ.get("CC") or "cc")
    return cmd if cmd and shutil.which(cmd[0]) else None


def cache_dir() -> str:
    """Where compiled programs are kept: $LLAMA2BIN_CACHE_DIR, else $XDG_CACHE_HOME/llama2bin,
    else ~/.cache/llama2bin."""
    explicit = os.environ.get("LLAMA2BIN_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llama2bin")


def build_key(compiler: list[str], sources: Iterable[tuple[str, bytes]], flags: Iterable[str]) -> str:
    """sha256 of everything a build depends on: the named sources' bytes, the compiler (command,
    resolved path and `--version` text), the flags and the machine architecture."""
    h = hashlib.sha256()
    for name, data in sources:
        h.update(name.encode() + b"\0" + data + b"\0")
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True)
    for part in (*compiler, str(shutil.which(compiler[0])), version.stdout, *flags, platform.machine()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def trusted(path: str, directory: bool = False) -> bool:
    """An existing executable (or directory) owned by this user that nobody else can write: a build
    found in the cache is run or loaded, so one another user could have planted is never used."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else (stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IXUSR)
    return bool(kind_ok) and st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def cached_build(name: str, build: Callable[[str], None], cache: str, private_dir: str) -> str:
    """Path of the build `name` (its key in the name) in `cache`, made by `build(path)` when absent.
    Without a writable private cache it is built in `private_dir` (the caller's, removed by it)."""
    final = os.path.join(cache, name)
    if trusted(final):
        return final
    try:
        os.makedirs(cache, mode=0o700, exist_ok=True)
        if not trusted(cache, directory=True):
            raise OSError(f"{cache}: not a private directory of this user")
        lock = os.open(f"{final}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:  # read-only or foreign cache: a private build still does the job
        path = os.path.join(private_dir, name)
        build(path)
        return path
    try:
        # concurrent jobs of one batch: the first builds, the others wait for it and reuse it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if trusted(final):
            return final
        staging = tempfile.mkdtemp(prefix=".build-", dir=cache)
        try:
            path = os.path.join(staging, name)
            build(path)
            os.replace(path, final)  # same directory: atomic, never a half-written file under the name
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(lock)  # releases the lock
    return final
