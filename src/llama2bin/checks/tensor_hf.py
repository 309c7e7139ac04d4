"""Verify the hf format: read the directory back as a Hugging Face source and compare.

The directory is read through `sources/hf.py` like any Hugging Face checkpoint (the one
safetensors parser, the one q/k un-permutation), so this module only compares: config.json's
fields against what `formats.hf.hf_config` writes for the source, then every canonical tensor
bit for bit in row chunks (peak memory a few chunks, whatever the model size).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from ..formats import FORMATS
from ..formats.hf import CHECKED_CONFIG_KEYS, CONFIG_NAME, WEIGHTS_NAME, hf_config
from ..formats.layout import F32
from ..model import hf_name
from ..progress import Progress
from ..sources.base import FilePool, Source, TensorRef, row_chunks
from ..sources.policy import load_json_object
from ..sources.safetensors import SafetensorsFile
from .tensor import TensorCheckResult, TensorStats, sha256_file, weights_digest

HF = FORMATS["hf"]


def verify_hf_dir(out_dir: str, source: Source, quiet: bool = False) -> TensorCheckResult:
    """Compare an exported HF directory with `source`; failures are listed in the result."""
    cfg = source.config
    weights = os.path.join(out_dir, WEIGHTS_NAME)
    config = load_json_object(os.path.join(out_dir, CONFIG_NAME), "Hugging Face config")
    result = TensorCheckResult(
        file=os.path.basename(os.path.normpath(out_dir)),
        format=HF.name,
        size=os.path.getsize(weights),
        sha256=sha256_file(weights),
        group_size=None,
        header=config,
        source={**source.describe(), "config": cfg.to_json()},
    )
    want = hf_config(cfg)
    for key in CHECKED_CONFIG_KEYS:
        if config.get(key) != want[key]:
            result.failures.append(f"{CONFIG_NAME}: {key} is {config.get(key)!r}, the source has {want[key]!r}")
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta"))
    if theta != cfg.rope_theta:
        result.failures.append(f"{CONFIG_NAME}: rope_theta is {theta!r}, the source has {cfg.rope_theta!r}")
    if result.failures:
        return result
    pool = FilePool()
    try:  # the one safetensors parser, for what the source view hides: bytes outside every tensor
        unaccounted = SafetensorsFile(weights, pool).unaccounted_bytes
    finally:
        pool.close()
    if unaccounted:
        result.failures.append(f"{WEIGHTS_NAME}: {unaccounted} bytes of its data section belong to no tensor")
    with HF.open_directory(out_dir) as exported:
        names = list(cfg.shapes())
        for name in sorted(set(exported.config.shapes()) - set(names)):
            result.failures.append(f"{WEIGHTS_NAME}: unexpected tensor {hf_name(name)}")
        if result.failures:
            return result
        progress = Progress(sum(source.tensor(n).numel for n in names), f"verify {result.file}", unit="el", quiet=quiet)
        digests: dict[str, bytes] = {}
        for name in names:
            got_t = exported.tensor(name)
            raw = getattr(got_t, "src", got_t)  # under the un-permutation of q_proj/k_proj
            if getattr(raw, "dtype", "F32") != "F32":
                result.failures.append(f"tensor {got_t.name}: stored as {raw.dtype}, not F32")
                continue
            stats, digests[name] = _compare(name, source.tensor(name), got_t, result.failures)
            stats.hf_name = got_t.name
            result.tensors.append(stats)
            progress.update(got_t.numel)
        progress.close()
        result.weights_sha256 = weights_digest(names, result.tensors, digests)
    return result


def _compare(canonical: str, ref_t: TensorRef, got_t: TensorRef, failures: list[str]) -> tuple[TensorStats, bytes]:
    """Float32 bit-for-bit comparison in row chunks; the first differing element becomes a failure.
    Also the tensor's digest: sha256 over the sha256 of each chunk's float32 bytes, in the same
    chunks as a .bin's check (tensor.py), so equal weights give equal fingerprints."""
    stats = TensorStats(canonical, list(ref_t.shape), F32.json_name, None)
    digest = hashlib.sha256()
    for start, stop in row_chunks(ref_t):
        ref = ref_t.read_rows(start, stop).reshape(-1)
        got = np.ascontiguousarray(got_t.read_rows(start, stop), dtype=np.float32).reshape(-1)
        digest.update(hashlib.sha256(got).digest())
        differs = got.view(np.uint32) != ref.view(np.uint32)
        if differs.any():
            bad = int(np.flatnonzero(differs)[0]) + start * ref_t.cols
            failures.append(f"tensor {got_t.name}: element {bad} differs from the float32 source")
            break
        stats.add(ref, got)
    return stats.finish(), digest.digest()
