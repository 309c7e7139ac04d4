"""Which Q8_0 quantizer runs: the compiled one (q8_0_kernel, numba) for big exports, numpy otherwise.

The compiled kernel quantizes ~8x faster than the numpy path (q8_0.quantize_into) and gives the
same bytes (tests/test_q8_kernel.py), but numba costs ~0.3 s to import and ~0.2 s to load the
cached machine code into a process (~1 s more the first time, compiling). That is paid once, in
the parent before the worker processes fork (they inherit the loaded code), and only when an
export quantizes at least `MIN_ELEMENTS` values, where it pays for itself: small models (the
batches of stories15M) never import numba at all.

LLAMA2BIN_Q8_KERNEL=numpy or =numba overrides the size rule (tests run both paths; the bench
compares them); without numba installed the numpy path runs, said only at debug level.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import warnings
from collections.abc import Callable
from types import ModuleType

import numpy as np

from .. import native

log = logging.getLogger(__name__)

# Values quantized by one export from which the kernel pays for numba's ~0.3-0.4 s of import and
# loading, which the parent spends alone before forking: measured (bench/issue21.md), a 307M HF
# bf16 model exports in about the same wall time either way (less CPU with the kernel), 110M
# llama2.c float32 0.3 s slower with it, 1.1B several times faster.
MIN_ELEMENTS = 300_000_000

ENV_SWITCH = "LLAMA2BIN_Q8_KERNEL"

_kernel: ModuleType | None = None  # q8_0_kernel once imported and warmed up in this process
_use = False  # whether the current export quantizes with it (set by `prepare`)


def numba_cache_dir() -> str:
    """Where numba keeps the compiled kernels (this one and verify's, checks/q8_chunk_jit.py):
    <llama2bin cache>/numba, beside the C consumer (native.cache_dir), so that a read-only
    site-packages still gets a cache."""
    return os.path.join(native.cache_dir(), "numba")


def wanted(elements: int, loaded: bool | None = None) -> bool:
    """Whether quantizing `elements` values should use the compiled kernel (before knowing if numba
    is there): LLAMA2BIN_Q8_KERNEL if set, else the size rule, which a kernel already loaded in
    this process (the job server's workers inherit it) always meets: it then costs nothing.
    `loaded`: whether that kernel is loaded (default: this module's; GGUF's encoders pass theirs)."""
    choice = os.environ.get(ENV_SWITCH, "").strip().lower()
    if choice in ("numpy", "numba"):
        return choice == "numba"
    return elements >= MIN_ELEMENTS or (_kernel is not None if loaded is None else loaded)


def prepare(elements: int) -> bool:
    """Decide how the export about to run quantizes `elements` values: with the compiled kernel
    if `wanted` and numba is installed (loading it into this process), else with numpy. Returns
    whether the kernel is used. Call before forking workers, so that they inherit the decision
    and the loaded code."""
    global _use
    _use = wanted(elements) and load()
    return _use


def load() -> bool:
    """Import numba and load the compiled kernel into this process (compiling it into the cache the
    first time); False without a usable numba. `prepare` calls it when the size rule says so; the
    job server calls it once at start, for every export its workers run."""
    global _kernel
    if _kernel is None:
        _kernel = import_compiled(__package__ + ".q8_0_kernel", _warm_up)
    return _kernel is not None


def import_compiled(module: str, warm_up: Callable[[ModuleType], None]) -> ModuleType | None:
    """Import a numba kernel module and run `warm_up` on it (compiling, or loading numba's cache),
    in this process, so that forked workers inherit the machine code; None when numba is not
    installed or cannot work here (numpy then gives the same results). The one way both kernels
    load: export's quantizer (q8_0_kernel) and verify's check (checks/q8_chunk_jit)."""
    # numba reads NUMBA_CACHE_DIR when it is imported; a user's own setting wins.
    os.environ.setdefault("NUMBA_CACHE_DIR", numba_cache_dir())
    # numba's import makes ~10^6 objects: the cyclic collector would run dozens of times over them
    # (~0.05 s, measured with perf); nothing made here is garbage.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        with warnings.catch_warnings():
            # an unwritable cache only costs a compile per process: not worth a warning
            warnings.simplefilter("ignore")
            kernel = importlib.import_module(module)
            warm_up(kernel)
    except Exception as e:  # not installed, or an install that cannot load (no cache location, LLVM)
        log.debug("compiled kernel %s not available (%s: %s): numpy instead", module, type(e).__name__, e)
        return None
    finally:
        if gc_was_on:
            gc.enable()
    return kernel


def _warm_up(kernel: ModuleType) -> None:
    """Compile (or load from the cache) both specializations now, in this process, so forked
    workers inherit them instead of each compiling its own."""
    q, s = np.empty(2, np.int8), np.empty(1, np.float32)
    kernel.quantize_groups(np.zeros(2, np.uint16), np.uint32(16), 2, q, s)
    kernel.quantize_groups(np.zeros(2, np.uint32), np.uint32(0), 2, q, s)


def loaded() -> bool:
    """Whether the current export quantizes with the compiled kernel (the last `prepare` said so)."""
    return _use


_NOT_FINITE = np.uint32(0xFFFFFFFF)


def quantize_bits(bits: np.ndarray, group_size: int, q_out: np.ndarray, s_out: np.ndarray) -> float | None:
    """q8_0.quantize_into with the compiled kernel, on raw bit patterns: `bits` is bf16 (uint16)
    or float32 (uint32) storage, flat, a whole number of groups. Returns the largest group error,
    or None (outputs undefined) if a value is NaN or Inf. Only after `prepare` returned True."""
    assert _kernel is not None and _use, "q8_fast.prepare() first"
    if bits.dtype not in (np.uint16, np.uint32) or bits.ndim != 1 or not bits.flags.c_contiguous:
        # anything else would compile another specialization (or be misread)
        raise TypeError(f"quantize_bits takes flat contiguous uint16 or uint32 bit patterns, not {bits.dtype} {bits.shape}")
    shift = np.uint32(16) if bits.dtype == np.uint16 else np.uint32(0)
    worst = _kernel.quantize_groups(bits, shift, group_size, q_out, s_out)
    if worst == _NOT_FINITE:
        return None
    return float(np.uint32(worst).view(np.float32))
