"""The hf format read back: a Hugging Face directory as an `Output`.

The directory is read through `sources/hf.py` like any Hugging Face checkpoint (the one
safetensors parser, the one q/k un-permutation); its config.json is its header, checked field
by field against what `formats.hf.hf_config` writes for the source.
"""

from __future__ import annotations

import os
from typing import Any

from ..model import ModelConfig, hf_name
from ..sources.base import FilePool, TensorEncoding, TensorRef
from ..sources.hf import HfSource
from ..sources.policy import load_json_object, object_field
from ..sources.safetensors import SafetensorsFile
from .hf import CHECKED_CONFIG_KEYS, CONFIG_NAME, SPEC, WEIGHTS_NAME, hf_config
from .layout import PARAM_NAMES
from .output import Output


class HfDirectory(Output):
    """An hf output read back: its config.json as the header, its tensors through sources/hf.py
    (canonical names, q/k un-permuted), its model.safetensors as the file verify hashes."""

    def __init__(self, path: str):
        self.spec, self.path, self.group_size = SPEC, path, None
        self.hashed_path = os.path.join(path, WEIGHTS_NAME)
        # what the directory holds is checked against the source, so no rotary base is refused here
        self._source = HfSource(path, allow_rope_theta=True)
        self.config = self._source.config
        self.size = os.path.getsize(self.hashed_path)

    @property
    def tensors(self) -> dict[str, TensorRef]:
        return self._source.tensors

    def expected_encoding(self, name: str) -> TensorEncoding:
        return TensorEncoding.F32  # hf_export writes float32 only

    def header_json(self) -> dict[str, Any]:
        return load_json_object(os.path.join(self.path, CONFIG_NAME), "Hugging Face config")

    def header_failures(self, want: ModelConfig) -> list[str]:
        """config.json's fields against what hf_config writes for the source; bytes of
        model.safetensors outside every tensor; tensors the source does not have."""
        config, expected = self.header_json(), hf_config(want)
        rope = config.get("rope_parameters")
        if rope is not None:
            object_field(os.path.join(self.path, CONFIG_NAME), "rope_parameters", rope)
        failures = [f"{CONFIG_NAME}: {key} is {config.get(key)!r}, the source has {expected[key]!r}"
                    for key in CHECKED_CONFIG_KEYS if config.get(key) != expected[key]]
        theta = (rope or {}).get("rope_theta", config.get("rope_theta"))
        if theta != want.rope_theta:
            failures.append(f"{CONFIG_NAME}: rope_theta is {theta!r}, the source has {want.rope_theta!r}")
        failures += [f"{CONFIG_NAME}: {key} is {config.get(key)!r}, the source has {expected.get(key)!r}"
                     for key in ("rope_parameters", "rope_scaling", "bos_token_id", "eos_token_id")
                     if config.get(key) != expected.get(key)]
        if failures:
            return failures
        pool = FilePool()
        try:  # the one safetensors parser, for what the source view hides: bytes outside every tensor
            unaccounted = SafetensorsFile(self.hashed_path, pool).unaccounted_bytes
        finally:
            pool.close()
        if unaccounted:
            failures.append(f"{WEIGHTS_NAME}: {unaccounted} bytes of its data section belong to no tensor")
        failures += [f"{WEIGHTS_NAME}: unexpected tensor {hf_name(name)}"
                     for name in sorted(set(self.config.shapes()) - set(want.shapes()))]
        return failures

    def describe(self) -> dict[str, Any]:
        tensors = []
        for name in self.config.shapes():
            stored = self._source.stored[hf_name(name)]  # as the file stores it (q/k before un-permutation)
            tensors.append({"name": name, "hf_name": hf_name(name), "shape": list(stored.shape),
                            "dtype": stored.encoding.dtype_name, "offset": stored.offset,
                            "nbytes": stored.numel * 4 if stored.encoding == TensorEncoding.F32 else None})
        size = sum(os.path.getsize(os.path.join(self.path, f)) for f in sorted(os.listdir(self.path))
                   if os.path.isfile(os.path.join(self.path, f)))
        cfg = self.config
        header = {**{k: getattr(cfg, k) for k in PARAM_NAMES}, "shared_classifier": cfg.shared_classifier,
                  "rope_theta": cfg.rope_theta, "norm_eps": cfg.norm_eps}
        return {"file": self.path, "format": SPEC.name, "format_description": SPEC.description, "header": header,
                "size": size, "expected_size": None, "size_matches": None, "tensors": tensors}

    def close(self) -> None:
        self._source.close()
