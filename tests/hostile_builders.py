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
import struct
import zipfile
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


__all__ = ["FakeTensor", "StorageRef", "meta_params", "read_safetensors_header", "state_of", "tiny_a_weights",
           "write_safetensors", "write_torch_zip"]
