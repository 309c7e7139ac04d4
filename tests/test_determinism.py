"""Issue 17.5: a verification is the same bytes whatever the machine does underneath.

The same evaluation-token sampling and `verify --json` run in processes that differ in what made
results machine-dependent before: the BLAS thread count, the kernel OpenBLAS picks for the CPU
(OPENBLAS_CORETYPE, as on a machine without AVX-512 or AVX2) and numpy's SIMD code paths
(NPY_DISABLE_CPU_FEATURES, as on an older CPU). Every process must write identical bytes. So that
the test cannot pass by running the same arithmetic everywhere, each process also reports a
plain float32 BLAS product of the model's shapes, and those must differ somewhere.

The model has dim 288 and hidden 768, as stories15M: float64 BLAS kernels sum differently only
from K = 288 on (measured). Job layouts - the pipeline's verify (2 threads), `snakemake reverify`
(1 thread), the cluster profile's jobs (an empty environment) - are compared where they run:
tests/test_recovery.py (reverify against the pipeline) and tests/test_cluster.py.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from helpers import preset_arrays, save_llama2c

from llama2bin.cli import main

pytestmark = pytest.mark.slow  # one process per environment (~4 CPU seconds each)

SHAPE = {"dim": 288, "n_layers": 1, "n_heads": 6, "n_kv_heads": None, "vocab_size": 512, "multiple_of": 32,
         "max_seq_len": 32}

DRIVER = """
import hashlib, json, sys
import numpy as np, threadpoolctl
from llama2bin.cli import main
prefix, ckpt, *bins = sys.argv[1:]
assert main(["eval-tokens", prefix + ".tokens.json", "--checkpoint", ckpt, "--eval-seqs", "4", "--eval-len", "16",
             "--quiet"]) == 0
assert main(["verify", *bins, "--checkpoint", ckpt, "--eval-tokens", prefix + ".tokens.json", "--quiet",
             "--json", *[prefix + f".{i}.verify.json" for i in range(len(bins))]]) == 0
a = np.random.default_rng(0).standard_normal((256, 288)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((288, 768)).astype(np.float32)
# numpy's own BLAS (OpenBLAS in its wheels), not MKL, which the v0 rope tables load through ctypes
blas = next(i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas")
print(json.dumps({"kernel": blas.get("architecture"), "threads": blas["num_threads"],
                  "float32_product": hashlib.sha256((a @ b).tobytes()).hexdigest()}))
"""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def environments() -> dict[str, dict[str, str]]:
    """Variants of the process environment; only kernels this CPU can run (a kernel it lacks would
    die of an illegal instruction)."""
    one, two = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    envs = {"1 thread": one, "2 threads": two}
    if platform.machine() in ("x86_64", "AMD64"):
        flags = _cpu_flags()
        envs["Nehalem kernel, numpy baseline SIMD"] = {
            **one, "OPENBLAS_CORETYPE": "Nehalem", "NPY_DISABLE_CPU_FEATURES": "X86_V3,X86_V4,AVX512_ICL,AVX512_SPR"}
        if {"avx2", "fma"} <= flags:
            envs["Haswell kernel, numpy without AVX-512"] = {
                **two, "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": "X86_V4,AVX512_ICL,AVX512_SPR"}
    return envs


def test_verification_is_the_same_bytes_under_any_threads_kernel_or_simd(tmp_path):
    ckpt = save_llama2c(str(tmp_path / "m.pt"), preset_arrays("mha", **SHAPE), {**SHAPE, "dropout": 0.0})
    bins = [str(tmp_path / "m.v0.bin"), str(tmp_path / "m.v2.bin")]
    assert main(["export", *bins, "--checkpoint", ckpt, "--version", "0", "2", "--quiet"]) == 0
    outputs: dict[str, list[bytes]] = {}
    probes: dict[str, dict] = {}
    for i, (name, env) in enumerate(environments().items()):
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "OPENBLAS_", "NPY_", "MKL_"))}
        prefix = str(tmp_path / f"run{i}")
        proc = subprocess.run([sys.executable, "-c", DRIVER, prefix, ckpt, *bins], env={**keep, **env},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        probes[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        outputs[name] = [open(f"{prefix}{suffix}", "rb").read()
                         for suffix in (".tokens.json", ".0.verify.json", ".1.verify.json")]
    first, *others = outputs
    for name in others:
        for what, a, b in zip(("evaluation tokens", "v0 verify JSON", "v2 verify JSON"), outputs[first], outputs[name],
                              strict=True):
            assert a == b, f"{what}: {first!r} and {name!r} differ"
    # the environments did change the arithmetic underneath
    assert len({p["threads"] for p in probes.values()}) == 2
    if platform.machine() in ("x86_64", "AMD64"):
        assert len({p["kernel"] for p in probes.values()}) >= 2, probes
        assert len({p["float32_product"] for p in probes.values()}) >= 2, probes
    v2 = json.loads(outputs[first][2])
    assert v2["functional"]["kld_mean"] > 0 and v2["weights_sha256"]  # a real quantization loss was measured
