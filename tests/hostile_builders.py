"""Builders of hostile input files for tests/test_hostile_inputs.py, from the small fixtures.

Torch zips are written the way torch.save writes them - a pickle whose tensors are
`torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...)` calls with
storages as persistent ids ("storage", torch.FloatStorage, key, "cpu", numel), plus one
*stored* zip member per storage - but every field is ours to set, so a checkpoint can declare
what torch.save never would (a negative offset, a storage longer than its member, an int as
a storage). A control test checks that the unmodified build exports to the golden bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import pickle
import random
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from helpers import DATA


@dataclasses.dataclass
class StorageRef:
    """A storage as the pickle names it: key of its zip member, declared element count."""

    key: Any
    numel: Any
    storage_type: str = "FloatStorage"


@dataclasses.dataclass
class FakeTensor:
    """Pickles exactly as torch.save pickles a tensor, with any field values we choose."""

    storage: Any
    offset: Any
    size: Any
    stride: Any

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import torch._utils

        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return torch._utils._rebuild_tensor_v2, args


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, StorageRef):
            import torch

            return ("storage", getattr(torch, obj.storage_type), obj.key, "cpu", obj.numel)
        return None


def write_torch_zip(path: str, obj: Any, storages: dict[str, bytes], *, pickle_compression: int = zipfile.ZIP_STORED,
                    pickle_padding: int = 0) -> str:
    """A torch.save-style zip: archive/data.pkl (optionally deflated and padded with zeros the
    unpickler never reads: a zip bomb), archive/byteorder, archive/data/<key> stored."""
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    pkl = buf.getvalue() + bytes(pickle_padding)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl, compress_type=pickle_compression)
        zf.writestr("archive/byteorder", b"little", compress_type=zipfile.ZIP_STORED)
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data, compress_type=zipfile.ZIP_STORED)
        zf.writestr("archive/version", b"3\n", compress_type=zipfile.ZIP_STORED)
    return path


def tiny_a_weights() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """tests/data/tiny_a.pt's state dict (float32 arrays) and model_args."""
    import torch

    ckpt = torch.load(os.path.join(DATA, "tiny_a.pt"), map_location="cpu", weights_only=True)
    return {k: v.contiguous().numpy().copy() for k, v in ckpt["model"].items()}, dict(ckpt["model_args"])


def state_of(arrays: dict[str, np.ndarray]) -> tuple[dict[str, FakeTensor], dict[str, bytes]]:
    """One storage per tensor (keys "0", "1", ...), contiguous, offset 0."""
    state: dict[str, FakeTensor] = {}
    storages: dict[str, bytes] = {}
    for i, (name, a) in enumerate(arrays.items()):
        key = str(i)
        storages[key] = np.ascontiguousarray(a, dtype="<f4").tobytes()
        stride = tuple(int(np.prod(a.shape[d + 1:])) for d in range(a.ndim))
        state[name] = FakeTensor(StorageRef(key, a.size), 0, tuple(a.shape), stride)
    return state, storages


def meta_params(model_args: dict[str, Any]) -> dict[str, Any]:
    return {k: model_args[k] for k in ("dim", "n_layers", "n_heads", "vocab_size", "max_seq_len")} | {"norm_eps": 1e-5}


def repoint_member(path: str, member: str, header_offset: int) -> None:
    """Make the zip's central-directory entry for `member` point at another local header."""
    with open(path, "r+b") as f:
        data = f.read()
        at = data.find(b"PK\x01\x02")
        while at >= 0:
            (name_len,) = struct.unpack_from("<H", data, at + 28)
            if data[at + 46 : at + 46 + name_len] == member.encode():
                f.seek(at + 42)
                f.write(struct.pack("<I", header_offset))
                return
            at = data.find(b"PK\x01\x02", at + 46)
    raise KeyError(member)


def local_header(name: str, size: int) -> bytes:
    """A stored member's zip local header (CRC 0: the storage reader does not check CRCs)."""
    raw = name.encode()
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, size, size, len(raw), 0) + raw


# ---- safetensors ---------------------------------------------------------------------------


def read_safetensors_header(path: str) -> tuple[dict[str, Any], bytes]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        return header, f.read()


def write_safetensors(path: str, header_text: str, data: bytes) -> None:
    """A safetensors file from header JSON *text* (so duplicate keys can be written) and data."""
    raw = header_text.encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)


# ---- whole fixtures, damaged by the cases -----------------------------------------------------


@dataclass
class Base:
    """What the cases are made from, built once per module."""

    arrays: dict[str, np.ndarray]
    model_args: dict[str, Any]
    sp_model: bytes


def make_base() -> Base:
    """tiny_a's weights and model_args, and a tiny sentencepiece BPE model trained offline."""
    import sentencepiece as spm

    arrays, model_args = tiny_a_weights()
    rng = random.Random(0)
    words = ["hello", "world", "token", "piece", "llama", "größe", "ñandú"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=300, byte_fallback=True, model_type="bpe",
        character_coverage=1.0, num_threads=1, minloglevel=2,
    )
    return Base(arrays, model_args, buf.getvalue())


def llama2c_pt(b: Base, path: str, mutate: Callable[[dict, dict, dict], None] | None = None, **zip_options) -> str:
    """tiny_a as a llama2.c checkpoint; `mutate(state, model_args, storages)` damages it first."""
    state, storages = state_of(b.arrays)
    args = dict(b.model_args)
    if mutate:
        mutate(state, args, storages)
    return write_torch_zip(path, {"model": state, "model_args": args, "iter_num": 0}, storages, **zip_options)


def meta_dir(b: Base, d: str) -> str:
    """tiny_a as a one-shard Meta directory (the same names; output stored separately)."""
    path = os.path.join(d, "meta")
    os.makedirs(path)
    state, storages = state_of(b.arrays)
    write_torch_zip(os.path.join(path, "consolidated.00.pth"), state, storages)
    with open(os.path.join(path, "params.json"), "w") as f:
        json.dump(meta_params(b.model_args), f)
    return path


def hf_dir(d: str) -> str:
    path = os.path.join(d, "hf")
    shutil.copytree(os.path.join(DATA, "tiny_hf_untied"), path)
    return path


def hf_config_text(d: str, edit: Callable[[str], str]) -> str:
    """The HF fixture with config.json's text replaced by edit(text)."""
    path = hf_dir(d)
    config = os.path.join(path, "config.json")
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(edit(text))
    return path


def hf_config(d: str, **changes: Any) -> str:
    def edit(text: str) -> str:
        return json.dumps(json.loads(text) | changes)

    return hf_config_text(d, edit)


def hf_header(d: str, edit: Callable[[dict], str]) -> str:
    """The HF fixture with its safetensors header rewritten: edit(header dict) -> JSON text."""
    path = hf_dir(d)
    st = os.path.join(path, "model.safetensors")
    header, data = read_safetensors_header(st)
    write_safetensors(st, edit(header), data)
    return path


def replace_with(path: str, kind: str) -> str:
    """Replace file `path` by a FIFO or a symlink to /dev/zero."""
    if os.path.lexists(path):
        os.remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    return path


def yaml_laughs(key: str = "lol", levels: int = 9, width: int = 9, mapping: bool = False) -> str:
    """A pipeline config whose `key` holds YAML's "billion laughs": `levels` anchors, each
    `width` aliases of the one before (9 x 9: 9^9 = 387 million values once expanded, in 600
    bytes). Lists by default; `mapping=True` nests mappings instead."""

    def node(items: list[str]) -> str:
        return "{" + ", ".join(f"k{i}: {v}" for i, v in enumerate(items)) + "}" if mapping else "[" + ", ".join(items) + "]"

    lines = ["models: {m: {source: llama2c, demo: mha}}", f"{key}:", f"  a0: &a0 {node(['lol'] * width)}"]
    lines += [f"  a{i}: &a{i} {node([f'*a{i - 1}'] * width)}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def export(flag: str, src: str, d: str) -> list[str]:
    return ["export", flag, src, os.path.join(d, "out.bin"), "--version", "0"]


def tokenizer(model: str, d: str) -> list[str]:
    return ["tokenizer", model, os.path.join(d, "tokenizer.bin")]


# ---- the corpus registry: name -> (class, build(base, dir) -> (argv, inputs, needle)) --------

Built = tuple[list[str], list[str], str]
CASES: dict[str, tuple[str, Callable[[Base, str], Built]]] = {}


def case(name: str, kind: str):  # type: ignore[no-untyped-def]
    def register(build: Callable[[Base, str], Built]) -> Callable[[Base, str], Built]:
        CASES[name] = (kind, build)
        return build

    return register


__all__ = [
    "CASES", "Built", "case",
    "Base", "FakeTensor", "StorageRef", "export", "hf_config", "hf_config_text", "hf_dir", "hf_header", "llama2c_pt",
    "local_header", "make_base", "meta_dir", "meta_params", "read_safetensors_header", "replace_with", "repoint_member",
    "state_of", "tiny_a_weights", "tokenizer", "write_safetensors", "write_torch_zip", "yaml_laughs",
]
