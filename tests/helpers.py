"""Builders for llama2.c-format checkpoints used across tests (offline, seeded)."""

from __future__ import annotations

import dataclasses
import os
import shutil
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


# Shell metacharacters of every kind; a shell that ever parsed one would create a file PWNED.
SHELL_SYNTAX = "x $(touch PWNED) `touch PWNED` \"q\" 'q' || touch PWNED; touch PWNED & $HOME"


def pwned(*folders) -> list[str]:
    """Files named PWNED under `folders`: proof that a shell parsed a value it never should have."""
    return [os.path.join(d, f) for folder in folders for d, _, files in os.walk(folder) for f in files if "PWNED" == f]


__all__ = ["DATA", "ROOT", "SHELL_SYNTAX", "hidden_dim_for", "preset_args", "preset_arrays", "pwned", "run_cli",
           "save_llama2c"]


def flipped_copy(src: str, dst: str | os.PathLike, offset: int, mask: int = 0x01) -> str:
    """A copy of `src` at `dst` with the byte at `offset` XORed with `mask`: one wrong bit."""
    shutil.copy(src, dst)
    with open(dst, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))
    return str(dst)
