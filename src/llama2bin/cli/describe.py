"""What `inspect` shows about any output: its format in words, header, and tensor table.

A .bin is described from its header and layout (reader.BinFile); the hf directory is read back
through its source (formats.FormatSpec.open), so both go through the format registry.
"""

from __future__ import annotations

import os
from typing import Any

from ..formats import DIRECTORY
from ..formats.layout import PARAM_NAMES
from ..formats.reader import BinFile, open_output, output_format
from ..model import hf_name


def describe_output(path: str) -> dict[str, Any]:
    """JSON-ready description of an output of any registered format."""
    spec = output_format(path)
    if spec.kind == DIRECTORY:
        return _describe_directory(path)
    with BinFile(path) as bf:
        return {
            "file": path,
            "format": bf.format,
            "format_description": bf.description,
            "header": bf.header_json(),
            "size": bf.size,
            "expected_size": bf.layout.size,
            "size_matches": bf.size == bf.layout.size,
            "tensors": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "dtype": t.dtype,
                    "offset": t.offset,
                    "nbytes": t.values.nbytes,
                    **({"scales_offset": t.scales_offset} if t.scales is not None else {}),
                }
                for t in bf.tensors.values()
            ],
        }


def _describe_directory(path: str) -> dict[str, Any]:
    spec = output_format(path)
    with open_output(spec, path) as source:
        cfg = source.config
        tensors = []
        for name in cfg.shapes():
            t = source.tensor(name)
            raw = getattr(t, "src", t)  # q_proj/k_proj are read through the un-permutation
            dtype = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(getattr(raw, "dtype", ""), "?")
            tensors.append({"name": name, "hf_name": hf_name(name), "shape": list(t.shape), "dtype": dtype,
                            "offset": getattr(raw, "offset", None), "nbytes": t.numel * 4 if dtype == "float32" else None})
        size = sum(os.path.getsize(os.path.join(path, f)) for f in sorted(os.listdir(path))
                   if os.path.isfile(os.path.join(path, f)))
        header = {**{k: getattr(cfg, k) for k in PARAM_NAMES}, "shared_classifier": cfg.shared_classifier,
                  "rope_theta": cfg.rope_theta, "norm_eps": cfg.norm_eps}
    return {"file": path, "format": spec.name, "format_description": spec.description, "header": header,
            "size": size, "expected_size": None, "size_matches": None, "tensors": tensors}


def render_text(info: dict[str, Any]) -> str:
    """`inspect`'s human-readable form of `describe_output`."""
    lines = [f"{info['file']}: version {info['format']}: {info['format_description']}"]
    if info["expected_size"] is not None:
        state = "matches" if info["size_matches"] else "MISMATCH"
        lines.append(f"  {info['size']} bytes (header implies {info['expected_size']}: {state})")
    else:
        lines.append(f"  {info['size']} bytes in its files")
    lines.append("  " + ", ".join(f"{k}={v}" for k, v in info["header"].items() if k != "version"))
    lines.append(f"  {'offset':>12}  {'bytes':>12}  {'dtype':<22} {'shape':<16} name")
    for t in info["tensors"]:
        lines.append(f"  {t['offset']!s:>12}  {t['nbytes']!s:>12}  {t['dtype']:<22} {str(t['shape']):<16} {t['name']}")
    return "\n".join(lines) + "\n"
