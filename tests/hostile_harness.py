"""One harness for the hostile-input corpus (issue 14): every case is judged on the same seven points.

A case is a CLI invocation plus the files it must not touch and the paths it must not create.
`run_hostile` runs the real `llama2bin` process (or, with `program`, another module such as
`snakemake`, whose config refusals are `llama2bin: error:` lines too) under an address-space
cap and a wall-clock limit, and asserts, in this order:

1. it finished within `timeout` seconds (a hang is killed and fails the case);
2. exit status non-zero;
3. no Python traceback on stderr;
4. exactly one `llama2bin: error:` line (and, if given, that it names `needle`), and not the
   CLI's last-resort `internal error` line: hostile input is refused for a named reason, not by
   an exception nobody anticipated;
5. no file under a final output name (`outputs` must not exist afterwards, unless it existed
   before, in which case it is unchanged);
6. every input unchanged: sha256 (or, for special files, the stat identity) before and after;
7. memory under the cap: the child runs with RLIMIT_AS = `cap_bytes`; an allocation sized from
   a hostile field dies with MemoryError, which is a traceback or a non-one-line error, and fails.

A case with `expect_success` is hostile input that must be *handled*, not refused (a legal but
extreme file, such as a 2^20-token vocabulary): points 1, 3, 6 and 7 hold, and instead of 2, 4
and 5 the exit status is 0 and no `llama2bin: error:` line appears.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import resource
import stat
import subprocess
import sys
import time

# importing numpy + torch (v0 rope tables) maps ~0.8 GB of address space that is never touched;
# the cap is on address space, not RSS, so 1 GiB is the ceiling for everything else.
DEFAULT_CAP = 1 << 30
DEFAULT_TIMEOUT = 60.0


@dataclasses.dataclass
class HostileCase:
    """`argv` without the program name; `inputs` must stay unchanged; `outputs` must not appear."""

    name: str
    argv: list[str]
    inputs: list[str] = dataclasses.field(default_factory=list)
    outputs: list[str] = dataclasses.field(default_factory=list)
    needle: str | None = None
    cap_bytes: int = DEFAULT_CAP
    timeout: float = DEFAULT_TIMEOUT
    cwd: str | None = None
    stdin: bytes | None = None
    program: tuple[str, ...] = ("-m", "llama2bin")
    expect_success: bool = False
    judge_stdout: bool = False  # Snakemake logs its errors on stdout: judge both streams


def fingerprint(path: str) -> tuple:
    """What "unchanged" means for `path`: content hash for regular files and directory trees
    (without following symlinks or reading special files), identity for everything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ("missing",)
    if stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return ("file", h.hexdigest(), st.st_ino, st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        entries = []
        for entry in sorted(os.listdir(path)):
            entries.append((entry, fingerprint(os.path.join(path, entry))))
        return ("dir", st.st_ino, tuple(entries))
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path))
    return ("special", stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev)


def _limit(cap: int):  # type: ignore[no-untyped-def]
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return apply


def run_hostile(case: HostileCase) -> subprocess.CompletedProcess:
    """Run one case and assert all seven points; returns the process for extra checks."""
    before_inputs = {p: fingerprint(p) for p in case.inputs}
    before_outputs = {p: fingerprint(p) for p in case.outputs}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, *case.program, *case.argv],
            capture_output=True,
            input=case.stdin if case.stdin is not None else b"",
            timeout=case.timeout,
            cwd=case.cwd,
            preexec_fn=_limit(case.cap_bytes),
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{case.name}: no answer within {case.timeout:g} s (hang)") from e
    elapsed = time.monotonic() - started
    stderr = proc.stderr.decode("utf-8", "replace")
    if case.judge_stdout:
        stderr += proc.stdout.decode("utf-8", "replace")
    where = f"{case.name} ({elapsed:.1f} s): exit {proc.returncode}\nstderr:\n{stderr}"
    assert "Traceback" not in stderr, where
    assert "MemoryError" not in stderr, where
    errors = [line for line in stderr.splitlines() if line.startswith("llama2bin: error:")]
    if case.expect_success:
        assert proc.returncode == 0 and not errors, where
        for path, before in before_inputs.items():
            assert fingerprint(path) == before, f"{case.name}: input {path} changed\n{where}"
        proc.stderr = stderr  # type: ignore[assignment]
        return proc
    assert proc.returncode != 0, where
    assert len(errors) == 1, where
    assert "internal error" not in errors[0], where
    if case.needle is not None:
        assert case.needle in errors[0], where
    for path, before in before_outputs.items():
        assert fingerprint(path) == before, f"{case.name}: output {path} was created or changed\n{where}"
    for path, before in before_inputs.items():
        assert fingerprint(path) == before, f"{case.name}: input {path} changed\n{where}"
    proc.stderr = stderr  # type: ignore[assignment]
    return proc


__all__ = ["DEFAULT_CAP", "DEFAULT_TIMEOUT", "HostileCase", "fingerprint", "run_hostile"]
