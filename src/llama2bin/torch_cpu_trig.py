"""torch 2.13's CPU float32 cos and sin as the seed's rope tables use them, without torch.

`cos` and `sin` are NOT SLEEF's on x86-64: ATen's `vml::vcos`/`vsin` call Intel MKL's VML
(`vmsCos`/`vmsSin`, mode HA | FTZDAZ_OFF | ERRMODE_IGNORE; perf shows `mkl_vml_kernel_sCos_Z0HAynn`).
MKL is closed source and its licence forbids disassembly, so its algorithm cannot be rewritten
in numpy; it is called instead, from the `mkl` wheel (pinned to 2024.2.0, the MKL torch 2.13
links). Its AVX2 and AVX512 code paths give the same bits (the seed's on any AVX2 machine); its
SSE4.2 path and MKL 2026 differ, so the AVX2 path is pinned (MKL's conditional numerical
reproducibility), one thread, and a known-answer test refuses any other MKL.

On x86-64 CPUs that are not Intel's (AMD EPYC, measured), MKL refuses its AVX2 path and takes a
generic one whose cos/sin differ (8 of the 16 known answers; torch's own too, so there the seed
writes other bytes than on Intel: 388 of 2 million uniform angles in [0, 131072), none below
10,900, so at 4096 positions or fewer the tables agree). MKL asks one function of its own,
`mkl_serv_intel_cpu_true`, whether the CPU is Intel's: a one-line library defining it
(c/mkl_intel_cpu.c, compiled once into the cache, native.py) is loaded before MKL, which then
takes the AVX2 path there too, and the tables are the golden files' bytes on every x86-64 CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np

from .errors import Llama2binError

F32 = np.float32


MKL_VERSION = "2024.2.0"  # the MKL torch 2.13.0's x86-64 wheels link (torch.__config__.show())
MKL_BUILD = "Version 2024.2-Product Build 20240605"  # MKL_Get_Version_String of that MKL
_VML_HA, _VML_FTZDAZ_OFF, _VML_ERRMODE_IGNORE = 0x2, 0x140000, 0x100  # mkl_vml_defines.h
_VML_MODE = ctypes.c_int64(_VML_HA | _VML_FTZDAZ_OFF | _VML_ERRMODE_IGNORE)  # at::vml's mode
_MKL_THREADING_SEQUENTIAL = 1  # mkl_service.h
_MKL_CBWR_AVX2 = 10  # mkl_types.h: conditional numerical reproducibility, the AVX2 code path
_MKL_INT_MAX = 2**31 - 1  # LP64 interface: the element count is a 32-bit int

# Known answers: float32 inputs (bit patterns) with torch 2.13.0's cos and sin of them, where MKL
# 2024.2's AVX2/AVX512 path differs from the correctly rounded value, from MKL 2026.2 and from
# its SSE4.2 path (picked from 2 million uniform angles in [0, 131072)). Any other MKL is refused.
_KNOWN_ANSWERS = (  # (input, cos, sin)
    (0x4797C552, 0xBF4B3A94, 0x3F1BAC43),
    (0x47A5C5CB, 0xBF2E2074, 0x3F3BA8AF),
    (0x46BA028E, 0xBF284E1A, 0x3F40E5BB),
    (0x47BA679C, 0xBF36CC25, 0xBF33393E),
    (0x47D5E8CB, 0x3F50C693, 0xBF1426A8),
    (0x46387509, 0x3F29A579, 0xBF3FB805),
    (0x4742D62B, 0xBF1F6A0F, 0x3F484EB7),
    (0x477A907C, 0x3F59A6E4, 0xBF06C5C7),
    (0x47646E98, 0x3F0CDF30, 0x3F55C13D),
    (0x46C5288F, 0xBF7DB034, 0x3E094D69),
    (0x474A438C, 0x3F7BB6CF, 0xBE3A9749),
    (0x47F77E6B, 0xBF446A76, 0xBF242F70),
    (0x47CF71D9, 0x3F3E9D46, 0x3F2AE2ED),
    (0x4705F369, 0xBF19CB8B, 0xBF4CA74F),
    (0x47C0EF8D, 0x3ED6D06D, 0xBF6860DF),
    (0x47594DCF, 0x3D6809CB, 0xBF7F96C2),
)


def _find_mkl_rt() -> str:
    """libmkl_rt of the `mkl` wheel: its data files go to <prefix>/lib (the package metadata says
    where for other layouts, e.g. pip install --user)."""
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        candidate = os.path.join(prefix, "lib", "libmkl_rt.so.2")
        if os.path.exists(candidate):
            return candidate
    import importlib.metadata

    try:
        files = importlib.metadata.distribution("mkl").files or ()
    except importlib.metadata.PackageNotFoundError:
        raise OSError("the mkl package is not installed") from None
    for f in files:
        if f.name.startswith(("libmkl_rt.so", "mkl_rt")):
            return str(f.locate())
    raise OSError("the mkl package has no libmkl_rt")


def intel_cpu() -> bool:
    """Whether this is an Intel CPU (its vendor id; True where /proc/cpuinfo does not tell)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip() == "GenuineIntel"
    except OSError:
        pass
    return True


_intel_paths_lock = threading.Lock()
_intel_paths_loaded = False


def load_intel_code_paths(cache: str | None = None) -> None:
    """On an x86-64 CPU that is not Intel's, make every MKL loaded from now on in this process (the
    `mkl` wheel's, or torch's if torch is imported afterwards) take the code paths it takes on
    Intel's; the library is built into `cache` (default native.cache_dir()). OSError when that needs
    a C compiler and there is none, or the build fails."""
    global _intel_paths_loaded
    if platform.machine() not in ("x86_64", "AMD64") or intel_cpu():
        return
    with _intel_paths_lock:
        if _intel_paths_loaded:
            return
        from importlib import resources

        from . import native

        compiler = native.find_compiler()
        if compiler is None:
            raise OSError("on this non-Intel CPU MKL's AVX2 code path needs a small library built with a C compiler, "
                          "and none was found (set CC)")
        source = resources.files("llama2bin") / "c" / "mkl_intel_cpu.c"
        flags = ("-O2", "-shared", "-fPIC")

        def build(path: str) -> None:
            proc = subprocess.run([*compiler, *flags, "-o", path, str(source)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise OSError(f"{source}: {' '.join(compiler)} failed: {proc.stderr.strip()[:200]}")

        key = native.build_key(compiler, [("mkl_intel_cpu.c", source.read_bytes())], flags)
        private = tempfile.mkdtemp(prefix="llama2bin-mkl-")
        try:
            path = native.cached_build(f"mkl-intel-cpu-{key}.so", build, cache or native.cache_dir(), private)
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # first in the global scope: MKL resolves the name to it
        finally:
            shutil.rmtree(private, ignore_errors=True)  # a loaded library needs no file
        _intel_paths_loaded = True


class _Mkl:
    """libmkl_rt from the `mkl` wheel, checked to be the MKL whose cos/sin the seed's torch has."""

    def __init__(self) -> None:
        load_intel_code_paths()
        lib = ctypes.CDLL(_find_mkl_rt())
        # Before any other MKL call: one thread (no OpenMP runtime), and the AVX2 code path on every
        # AVX2 or AVX512 CPU, so the bits do not depend on the machine.
        lib.MKL_Set_Threading_Layer.restype = ctypes.c_int
        if lib.MKL_Set_Threading_Layer(ctypes.c_int(_MKL_THREADING_SEQUENTIAL)) != _MKL_THREADING_SEQUENTIAL:
            raise OSError("MKL refused its sequential threading layer (was it loaded by something else first?)")
        lib.MKL_CBWR_Set.restype = ctypes.c_int
        status = lib.MKL_CBWR_Set(ctypes.c_int(_MKL_CBWR_AVX2))
        if status != 0:
            raise OSError(f"MKL cannot run its AVX2 code path here (MKL_CBWR_Set returned {status}); "
                          "without AVX2 its cos/sin differ from the seed's")
        version = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(version, ctypes.c_int(len(version)))
        if MKL_BUILD.encode() not in version.value:
            raise OSError(f"{version.value.decode(errors='replace')} is installed; the seed's cos/sin are "
                          f"MKL {MKL_VERSION}'s ({MKL_BUILD})")
        for name in ("vmsCos", "vmsSin"):
            fn = getattr(lib, name)
            fn.restype = None
            fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        self._lib = lib
        x = np.array([a for a, _, _ in _KNOWN_ANSWERS], dtype=np.uint32).view(F32)
        cos, sin = self.cos_sin(x)
        want_cos = np.array([c for _, c, _ in _KNOWN_ANSWERS], dtype=np.uint32)
        want_sin = np.array([s for _, _, s in _KNOWN_ANSWERS], dtype=np.uint32)
        if not (np.array_equal(cos.view(np.uint32), want_cos) and np.array_equal(sin.view(np.uint32), want_sin)):
            raise OSError("this MKL's cos/sin differ from the seed's on the known answers")

    def cos_sin(self, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(angles, F32)
        cos, sin = np.empty_like(x), np.empty_like(x)
        flat = x.reshape(-1)
        for start in range(0, flat.size, _MKL_INT_MAX):
            part = flat[start : start + _MKL_INT_MAX]
            for fn, out in ((self._lib.vmsCos, cos), (self._lib.vmsSin, sin)):
                fn(part.size, part.ctypes.data, out.reshape(-1)[start:].ctypes.data, _VML_MODE)
        return cos, sin


class _Torch:
    """torch's own cos/sin, on one thread (its multi-threaded ones were seen to return values off by
    ~1e-4 for the rows a second OpenMP thread computed, on a loaded 2-core VM, ~1 run in 10)."""

    def __init__(self) -> None:
        if "torch" not in sys.modules:  # torch's own MKL: on Intel's code paths too, when that can be done
            with contextlib.suppress(OSError):
                load_intel_code_paths()
        import torch

        self._torch = torch

    def cos_sin(self, angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            a = torch.from_numpy(np.ascontiguousarray(angles, F32))
            return torch.cos(a).numpy(), torch.sin(a).numpy()
        finally:
            torch.set_num_threads(threads)


_backend_lock = threading.Lock()
_backend: _Mkl | _Torch | None = None


def cos_sin_backend() -> _Mkl | _Torch:
    """MKL when the pinned `mkl` wheel is installed and passes its known answers; else torch (whose
    own MKL or SLEEF gives the seed's tables on that machine); else an error naming both."""
    global _backend
    with _backend_lock:
        if _backend is None:
            try:
                _backend = _Mkl()
            except OSError as mkl_error:
                try:
                    _backend = _Torch()
                except ImportError:
                    raise Llama2binError(
                        f"version 0 rope tables need MKL {MKL_VERSION}'s cos/sin (pip install 'llama2bin[v0]', "
                        f"x86-64) or torch: {mkl_error}") from None
        return _backend


def torch_cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(torch.cos(angles), torch.sin(angles)) of a float32 array, bit for bit, on torch 2.13's CPU path."""
    return cos_sin_backend().cos_sin(angles)
