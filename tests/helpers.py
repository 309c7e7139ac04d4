"""Builders for llama2.c-format checkpoints used across tests (offline, seeded)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np

from llama2bin.demo import PRESETS, hidden_dim_for, state_dict_arrays

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")


def preset_args(name: str) -> dict:
    p = PRESETS[name]
    return {"dim": p.dim, "n_layers": p.n_layers, "n_heads": p.n_heads, "n_kv_heads": p.n_kv_heads,
            "vocab_size": p.vocab_size, "multiple_of": p.multiple_of, "max_seq_len": p.max_seq_len, "dropout": 0.0}


def preset_arrays(name: str, **changes) -> dict[str, np.ndarray]:
    return state_dict_arrays(dataclasses.replace(PRESETS[name], **changes))


def save_llama2c(path: str, arrays: dict[str, np.ndarray], model_args: dict, prefix: str = "", tie: bool = True) -> str:
    """torch.save a llama2.c training checkpoint; `tie` shares one storage for output and embeddings."""
    import torch

    sd = {prefix + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    if tie and prefix + "output.weight" in sd and np.array_equal(arrays["output.weight"], arrays["tok_embeddings.weight"]):
        sd[prefix + "output.weight"] = sd[prefix + "tok_embeddings.weight"]
    torch.save({"model": sd, "model_args": model_args, "iter_num": 0}, path)
    return path


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `llama2bin` process (exit codes and stderr exactly as a user sees them)."""
    return subprocess.run([sys.executable, "-m", "llama2bin", *args], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("llama2bin: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def no_outputs(folder: str) -> list[str]:
    """Files left in `folder` (final names and hidden partials alike)."""
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


__all__ = ["DATA", "ROOT", "hidden_dim_for", "preset_args", "preset_arrays", "save_llama2c", "run_cli",
           "assert_one_line_error", "no_outputs"]
