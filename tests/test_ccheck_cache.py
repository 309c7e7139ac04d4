"""The C consumer is compiled once per content (sources, compiler, flags, machine) and published
into the cache by an atomic rename: a batch of c_check jobs compiles it once."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from helpers import DATA

from llama2bin.checks.ccheck import Consumer, build_key, c_check, find_compiler

REAL_CC = find_compiler()
pytestmark = pytest.mark.skipif(REAL_CC is None, reason="no C compiler (cc or $CC)")


def counting_compiler(tmp_path, name: str = "cc-wrapper") -> tuple[list[str], str]:
    """A compiler command that records each compile (not `--version`) in a log, then runs cc."""
    log = tmp_path / f"{name}.log"
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\n[ "$1" = --version ] || echo compile >> "{log}"\nexec {" ".join(REAL_CC)} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)], str(log)


def compiles(log: str) -> int:
    return len(open(log).read().splitlines()) if os.path.exists(log) else 0


def test_the_consumer_is_compiled_once_per_content_and_reused(tmp_path):
    cache = str(tmp_path / "cache")
    compiler, log = counting_compiler(tmp_path)
    with Consumer(compiler, cache=cache) as first:
        exe = first.exe
        assert os.path.dirname(exe) == cache and os.path.basename(exe) == f"consumer-{build_key(compiler)}"
    assert compiles(log) == 1 and os.path.isfile(exe)  # kept after close(): the cache outlives a job
    with Consumer(compiler, cache=cache) as second:
        assert second.exe == exe
        result = c_check(os.path.join(DATA, "tiny_b.v1.bin"), second)
        assert result.passed, result.failures
    assert compiles(log) == 1
    name = os.path.basename(exe)
    assert sorted(os.listdir(cache)) == [name, f"{name}.lock"]  # no staging directories left

    # another compiler command is another key (here: the same cc behind another name)
    other, other_log = counting_compiler(tmp_path, "cc-other")
    assert build_key(other) != build_key(compiler)
    with Consumer(other, cache=cache) as third:
        assert third.exe != exe
    assert compiles(other_log) == 1


def test_concurrent_jobs_compile_once(tmp_path):
    """Four processes starting at once (a batch's first c_check jobs): one compile, one binary."""
    cache = str(tmp_path / "cache")
    compiler, log = counting_compiler(tmp_path)
    code = ("import sys; from llama2bin.checks.ccheck import Consumer; "
            "c = Consumer(sys.argv[1:2], cache=sys.argv[2]); print(c.exe); c.close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, compiler[0], cache], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    exes = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(exes) == 1 and compiles(log) == 1


def test_an_unwritable_cache_falls_back_to_a_private_build(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    compiler, log = counting_compiler(tmp_path)
    with Consumer(compiler, cache=str(blocker / "cache")) as built:
        private = built.exe
        assert not private.startswith(str(blocker)) and os.path.isfile(private)
        assert c_check(os.path.join(DATA, "tiny_b.v1.bin"), built).passed
    assert not os.path.exists(private) and compiles(log) == 1  # removed with its private directory


def test_a_binary_others_can_write_is_never_run(tmp_path):
    """A cache entry writable by the group or others (possibly planted) is rebuilt privately, not run."""
    cache = tmp_path / "cache"
    compiler, log = counting_compiler(tmp_path)
    cache.mkdir(mode=0o700)
    planted = cache / f"consumer-{build_key(compiler)}"
    planted.write_text("#!/bin/sh\necho planted\n")
    planted.chmod(0o777)
    with Consumer(compiler, cache=str(cache)) as built:
        assert open(built.exe, "rb").read(4) == b"\x7fELF" and compiles(log) == 1
        assert c_check(os.path.join(DATA, "tiny_b.v1.bin"), built).passed
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # a world-writable cache directory: private builds only
    with Consumer(compiler, cache=str(shared)) as built:
        assert not built.exe.startswith(str(shared)) and compiles(log) == 2
