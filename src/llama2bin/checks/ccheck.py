"""The C consumer check: is the file consumable from C, the way llama2.c reads it?

llama2bin ships a small C program of its own (c/consumer.c) that memory-maps a v0, v1 or v2
file the way run.c (v0) and runq.c (v2) do and prints the logits of a forward pass per
position. This module compiles it with the system C compiler, runs it, and compares its
logits with the Python reference forward (forward.py) on the same file, in the same
arithmetic: float32 for v0; for Q8_0 files by default runq.c's (activations quantized to Q8_0
before every matmul), or float32 on dequantized weights. The two implementations share no
code, so agreement means the layout the C side assumes is the layout the file has.

q8 is compared teacher-forced (q8_forcing.py): every activation quantization of the C run is
checked against Python's and Python continues from C's, so a rounding flip at a tie is allowed
where it is provably one and cannot propagate; the logits are then compared as tightly as in
float32. How far C's own q8 logits are from Python's own (the flips propagated) is reported as
quality, "as runq.c computes it", never as a failure.

No compiler: the check is skipped with a visible notice (an error with require_cc).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from .. import native, typed_json
from ..errors import Llama2binError
from ..formats import FORMATS, json_version
from ..formats.reader import BinFile
from ..formats.targets import TargetSpec
from ..model import ModelConfig
from ..native import find_compiler as find_compiler  # the check's compiler: re-exported for the CLI
from .eval_tokens import random_tokens
from .forward import F32, Q8, bin_logits
from .q8_forcing import TeacherForcing, read_dump
from .weights import BinWeights, row_blocks

# Flags the consumer is built with; -ffp-contract=off keeps compilers from fusing a*b+c into
# FMAs, so C and numpy round the same products (retried without it for compilers that lack it).
# -O3: GCC vectorizes the Q8_0 integer dot products (3x faster q8 runs, measured), and no -O level
# reorders floating-point operations without -ffast-math, so the logits are the same bits as at -O2.
CFLAGS = ("-O3", "-std=c11")
NO_FMA = "-ffp-contract=off"
# |C - Python| <= tolerance * max(1, max |Python logit|). float32 sums in a different order
# differ by ~1e-7 relative (measured); q8 is compared teacher-forced (C's quantized activations
# in both), which leaves only float rounding of the scaled group sums, hence the same tolerance.
TOLERANCE = {F32: 1e-4, Q8: 1e-4}


def consumer_source() -> str:
    """Path of the shipped consumer.c (package data)."""
    return str(resources.files("llama2bin") / "c" / "consumer.c")


def build_key(compiler: list[str]) -> str:
    """sha256 of everything the consumer's binary depends on (native.build_key): its sources, the
    compiler, the flags tried and the machine. A cached binary with this key is the one this build
    would make."""
    c_dir = resources.files("llama2bin") / "c"
    sources = [(name, (c_dir / name).read_bytes()) for name in ("consumer.c", "consumer_map.h")]
    return native.build_key(compiler, sources, (*CFLAGS, NO_FMA))


class Consumer:
    """The compiled consumer. Built once per content (build_key) into cache_dir() and published
    there by an atomic rename, so a batch compiles it once however many jobs check files, and
    concurrent jobs never see a half-written binary; runs use a private temporary directory
    (removed by close()). Without a writable cache directory it is built in the private one."""

    def __init__(self, compiler: list[str], cache: str | None = None):
        self.compiler = compiler
        self._dir = tempfile.mkdtemp(prefix="llama2bin-consumer-")
        try:
            self.exe = self._cached_build(cache if cache is not None else native.cache_dir())
        except BaseException:
            self.close()
            raise

    def _cached_build(self, cache: str) -> str:
        return native.cached_build(f"consumer-{build_key(self.compiler)}", self._build, cache, self._dir)

    def _build(self, exe: str) -> None:
        src = consumer_source()
        for extra in ((NO_FMA,), ()):
            proc = subprocess.run([*self.compiler, *CFLAGS, *extra, "-o", exe, src, "-lm"],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                return
        first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:200])
        raise Llama2binError(f"{src}: {' '.join(self.compiler)} failed: {first}")

    def logits(self, bin_path: str, tokens: list[int], arithmetic: str, dump: str | None = None,
               rope: ProgramRope | None = None) -> np.ndarray:
        """Logits [len(tokens), vocab] the C consumer computes for `tokens`; with `dump` (q8 only)
        it also writes every activation quantization there (q8_forcing.read_dump reads it);
        `rope`: a target's RoPE (its base, or the file's tables) instead of run.c's 10000."""
        extra = ["--dump", dump] if dump else []
        if rope is not None:
            extra += rope.consumer_args()
        proc = subprocess.run([self.exe, "--mode", arithmetic, "--logits", "binary", *extra, bin_path, *map(str, tokens)],
                              capture_output=True)
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            reason = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
            raise Llama2binError(f"{bin_path}: the C consumer refused it: {reason}")
        logits = np.frombuffer(proc.stdout, dtype=np.float32)  # raw float32, native order: the values exactly
        if not tokens or logits.size % len(tokens):
            raise Llama2binError(f"{bin_path}: the C consumer wrote {logits.size} logits for {len(tokens)} tokens")
        return logits.reshape(len(tokens), -1)

    def dump_path(self) -> str:
        """Where a run's --dump goes: inside the private directory (one run at a time)."""
        return os.path.join(self._dir, "q8.dump")

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ProgramRope:
    """How a target program computes RoPE: at a hard-coded base, or from v0's stored tables
    (formats/targets.py); the C consumer and the Python reference then do the same."""

    theta: float | None  # None: from the tables

    @classmethod
    def of(cls, target: TargetSpec) -> ProgramRope:
        return cls(target.rope_theta)

    def consumer_args(self) -> list[str]:
        return ["--rope", "tables"] if self.theta is None else ["--theta", repr(self.theta)]

    def describe(self) -> str:
        return "tables" if self.theta is None else f"theta {self.theta:g}"

    def python_kwargs(self, cfg: ModelConfig) -> dict[str, Any]:
        """bin_logits arguments computing the same RoPE (and the program's epsilon is run.c's 1e-5)."""
        if self.theta is None:
            return {"rope_from_tables": True}
        return {"config": dataclasses.replace(cfg, rope_theta=self.theta, rope_scaling=None)}


@dataclass
class CCheckResult(typed_json.Checked):
    file: str
    version: int | str | None  # formats.json_version of the file's format: 0, 1, 2 or "1f"
    arithmetic: str | None
    tokens: list[int]
    compiler: str | None
    skipped: str | None = None  # why the check did not run (no compiler)
    max_abs_logit: float | None = None
    max_abs_diff: float | None = None  # q8: against the teacher-forced Python logits
    tolerance: float | None = None
    failures: list[str] = field(default_factory=list)
    # q8 only: the teacher-forced comparison of every activation quantization (q8_forcing.py)
    tie_window: float | None = None
    scale_rtol: float | None = None
    q8_sites: int | None = None  # quantization points compared
    q8_flips: int | None = None  # elements C rounded the other way at a tie (legitimate)
    q8_max_flip_tie_distance: float | None = None  # steps; must stay <= tie_window
    q8_max_ratio_diff: float | None = None  # largest |x_C/s_C - x_Py/s_Py| in steps (float rounding)
    q8_max_scale_rel_diff: float | None = None  # largest |s_C - s_Py| / s_Py of an activation group
    # quality, as runq.c computes it: C's own q8 logits against Python's own (flips propagated)
    q8_untethered_max_abs_diff: float | None = None
    # --target: whose arithmetic both sides ran, and its RoPE ("theta 500000", "tables"); None: run.c's
    target: str | None = None
    rope: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is None and not self.failures

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": None if self.skipped else self.passed}

    @classmethod
    def from_json(cls, d: Any, where: str = "C check result") -> CCheckResult:
        """Checked field by field (typed_json): a wrong type is one error naming `where` and the field."""
        return typed_json.load(cls, d, where)

    def json_loaded(self, d: dict[str, Any], where: str, path: str) -> None:
        """The derived `passed` agrees, `version` is a format's."""
        typed_json.derived(d, "passed", None if self.skipped else self.passed, where, path)
        versions = [json_version(name) for name in FORMATS]
        if self.version is not None and self.version not in versions:
            raise typed_json.field_error(where, f"{path}.version" if path else "version",
                                         f"must be one of {', '.join(map(repr, versions))}, got {self.version!r}")


def resolve_arithmetic(bf: BinFile, arithmetic: str) -> str:
    if arithmetic == "auto":
        # runq.c's way for Q8_0 files whose groups tile every matmul row; a v1 keeps llama2.c's group
        # size for byte parity (e.g. 64 with stories42M's hidden_dim 1376), which runq.c's grouped
        # matmul cannot run: float32 on the dequantized weights checks its layout all the same.
        runq_can = bf.group_size and bf.config.hidden_dim % bf.group_size == 0
        return Q8 if runq_can else F32
    if arithmetic == Q8 and not bf.group_size:
        raise Llama2binError(f"{bf.path}: q8 arithmetic needs a Q8_0 file (v1 or v2), this is {bf.spec.label}")
    if arithmetic not in (F32, Q8):
        raise Llama2binError(f"unknown arithmetic {arithmetic!r} (auto, f32 or q8)")
    return arithmetic


def weights_key(bf: BinFile) -> str:
    """sha256 of everything the Python forward (forward.bin_logits) reads from an opened file: its
    config, group size, every tensor's stored values (q and scales, or float32) in canonical
    order, and v0's rope tables. Two files with the same key give the same Python logits bit for
    bit, whatever their layout or header (a v1 and a v2 of one model)."""
    h = hashlib.sha256(f"{bf.config!r}\0{bf.group_size}".encode())
    weights = BinWeights(bf)
    for name, shape in bf.config.shapes().items():
        t = weights.tensor(name)
        h.update(f"\0{name}\0{t.encoding.value}\0{t.group_size}\0".encode())
        for start, stop in row_blocks(shape[0] if len(shape) > 1 else 1, shape[-1]):
            if t.group_size:
                q, s = t.read_q8(start, stop)
                h.update(q)
                h.update(s)
            else:
                h.update(t.read_rows(start, stop))
    for table in bf.rope_tables() or ():
        h.update(table.read_rows(0, table.rows))
    return h.hexdigest()


def _is_q8_file(path: str) -> bool:
    """A readable .bin file of Q8_0 tensors (a directory or an unreadable file: no; c_check says
    what is wrong with it)."""
    if os.path.isdir(path):
        return False
    try:
        with BinFile(path) as bf:
            return bool(bf.group_size)
    except (OSError, Llama2binError):
        return False


class PythonSide:
    """The Python logits of one c-check run's files, kept by what they are computed from
    (`weights_key`, tokens, RoPE and config, and for teacher forcing the C run's dump): a v1 and
    a v2 of one model hold the same q and scales, so the second file's forwards are the first's,
    bit for bit, and are not run again. The C consumer still runs on every file.

    `files`: the run's files. Weights are fingerprinted only when two or more of them are Q8_0
    files (the only ones keyed so; v0 runs an f32 forward of its own): fingerprinting reads every
    weight (~0.5 s per GB) for a forward a single file could share with nothing."""

    def __init__(self, files: Sequence[str] | None = None) -> None:
        self._kept: dict[tuple, Any] = {}
        self._fingerprint = files is None or sum(map(_is_q8_file, files)) >= 2

    def key(self, path: str) -> str:
        if not self._fingerprint:
            return path
        with BinFile(path) as bf:
            return weights_key(bf)

    def get(self, key: tuple, compute: Any) -> Any:
        if key not in self._kept:
            self._kept[key] = compute()
        return self._kept[key]


def c_check(bin_path: str, consumer: Consumer | None, tokens: list[int] | None = None,
            arithmetic: str = "auto", target: TargetSpec | None = None,
            python_side: PythonSide | None = None) -> CCheckResult:
    """Run the C consumer on `bin_path` and compare with the Python reference; `consumer` None
    records a skipped check (no compiler). With a `target`, both run that program's arithmetic:
    its RoPE (base or tables) and, for `auto`, its activations. `python_side`: shared by the
    files of one run, so files with equal weights share their Python forwards."""
    if os.path.isdir(bin_path):
        raise Llama2binError(f"{bin_path}: is a directory (the C check reads .bin files)")
    rope = ProgramRope.of(target) if target is not None else None
    with BinFile(bin_path) as bf:
        version = json_version(bf.format)
        if target is not None and target.format != bf.format:
            raise Llama2binError(f"{bin_path}: {target.name} reads v{target.format}, this file is {bf.spec.label}")
        if target is not None and arithmetic == "auto":
            arithmetic = target.activations if bf.group_size else F32
        arith = resolve_arithmetic(bf, arithmetic)
        toks = list(tokens) if tokens else random_tokens(bf.config.vocab_size, bf.config.max_seq_len, 1, 16).sequences[0]
        kwargs = rope.python_kwargs(bf.config) if rope is not None else {}
    result = CCheckResult(os.path.basename(bin_path), version, arith, toks,
                          " ".join(consumer.compiler) if consumer else None,
                          target=target.name if target else None, rope=rope.describe() if rope else None)
    if consumer is None:
        result.skipped = "no C compiler found (cc, or $CC)"
        return result
    if arith == Q8:
        q8_compare(result, consumer, toks, bin_path, rope=rope, python_kwargs=kwargs, python_side=python_side)
    else:
        want = bin_logits(bin_path, toks, arithmetic=arith, **kwargs)  # refuses bad tokens with a clear message
        _compare_logits(result, consumer.logits(bin_path, toks, arith, rope=rope), want)
    return result


def _compare_logits(result: CCheckResult, got: np.ndarray, want: np.ndarray) -> None:
    if got.shape != want.shape:
        result.failures.append(f"the C consumer gave logits of shape {got.shape}, Python {want.shape}")
        return
    result.max_abs_logit = float(np.abs(want).max())
    result.max_abs_diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    result.tolerance = TOLERANCE[result.arithmetic] * max(1.0, result.max_abs_logit)
    if not result.max_abs_diff <= result.tolerance:  # also catches NaN
        result.failures.append(
            f"C consumer logits differ from the Python reference by {result.max_abs_diff:.3g} (tolerance {result.tolerance:.3g})"
        )


def q8_compare(result: CCheckResult, consumer: Consumer, toks: list[int], bin_path: str,
               python_path: str | None = None, rope: ProgramRope | None = None,
               python_kwargs: dict[str, Any] | None = None, python_side: PythonSide | None = None) -> None:
    """One C run on `bin_path` that dumps its quantizations; Python teacher-forced on them (the
    verdict) and once on its own (the untethered deviation, quality only). Python reads
    `python_path` when given (the detection benchmark: a file whose layout Python and C read
    differently, simulated by giving C a corrupted copy), else the same file."""
    python_path = python_path or bin_path
    kwargs = python_kwargs or {}
    side = python_side or PythonSide()
    key = (side.key(python_path) if python_side else python_path, tuple(toks), repr(sorted(kwargs.items())))
    # refuses bad tokens with a clear message
    own = side.get((*key, "own"), lambda: bin_logits(python_path, toks, arithmetic=Q8, **kwargs))
    dump = consumer.dump_path()
    try:
        got = consumer.logits(bin_path, toks, Q8, dump=dump, rope=rope)
        with BinFile(python_path) as bf:
            cfg, gs = bf.config, bf.group_size
        with open(dump, "rb") as f:
            dumped = hashlib.sha256(f.read()).hexdigest()

        def forced() -> tuple[np.ndarray, TeacherForcing]:
            forcing = TeacherForcing(read_dump(dump, cfg, gs, len(toks)), cfg)
            return bin_logits(python_path, toks, arithmetic=Q8, q8_hook=forcing, **kwargs), forcing

        want, forcing = side.get((*key, "forced", dumped), forced)
    finally:
        if os.path.exists(dump):
            os.unlink(dump)
    result.tie_window, result.scale_rtol = forcing.tie_window, forcing.scale_rtol
    result.q8_sites, result.q8_flips = forcing.sites, forcing.flips
    result.q8_max_flip_tie_distance = forcing.max_flip_tie_distance
    result.q8_max_ratio_diff = forcing.max_ratio_diff
    result.q8_max_scale_rel_diff = forcing.max_scale_rel_diff
    if (failure := forcing.failure()) is not None:
        result.failures.append(failure)
    _compare_logits(result, got, want)
    if got.shape == own.shape:
        result.q8_untethered_max_abs_diff = float(np.abs(got.astype(np.float64) - own.astype(np.float64)).max())
