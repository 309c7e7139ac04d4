"""RoPE inverse frequencies, as transformers computes them, from a model's base and scaling.

`inv_freq(theta, head_size, scaling)` is the one place llama2bin turns a model's rotary settings
into the float32 per-pair frequencies every implementation multiplies positions by (transformers'
`LlamaRotaryEmbedding.inv_freq`, Meta's `precompute_freqs_cis`, llama2.c's `freq`). Three kinds:

- `default`: inv_freq[j] = 1 / theta^(2j / head_size);
- `linear`: the default divided by `factor` (transformers' `_compute_linear_scaling_rope_parameters`);
- `llama3`: Llama 3.1/3.2's wavelength-banded scaling (transformers' `_compute_llama3_parameters`,
  the same arithmetic as Meta's `apply_scaling` in meta-llama/llama-models): frequencies whose
  wavelength is below original_max_position_embeddings / high_freq_factor are kept, those above
  original_max_position_embeddings / low_freq_factor are divided by `factor`, and the band between
  is interpolated.

Bit-exactness: every step is one float32 operation in transformers' order, and the powers
theta^(2j/hd) are torch's vectorised powf (SLEEF, within 1 ulp, not correctly rounded), which
torch_cpu_math reproduces, so the result is transformers' bit for bit at every head size (a
correctly rounded pow differs from torch's at e.g. head size 96, theta 10000). transformers divides a
scalar by a tensor as reciprocal-then-multiply (`Tensor.__rtruediv__`), which is kept here:
plain division rounds differently in about a quarter of the elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import Llama2binError
from .torch_cpu_math import torch_pow_scalar_base

LINEAR = "linear"
LLAMA3 = "llama3"
SCALING_TYPES = (LINEAR, LLAMA3)


@dataclass(frozen=True)
class RopeScaling:
    """A model's rope scaling: `linear` (factor only) or `llama3` (all four parameters)."""

    rope_type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.rope_type not in SCALING_TYPES:
            raise ValueError(f"rope scaling type must be one of {', '.join(SCALING_TYPES)}, not {self.rope_type!r}")
        llama3_fields = (self.low_freq_factor, self.high_freq_factor, self.original_max_position_embeddings)
        if (self.rope_type == LLAMA3) != all(f is not None for f in llama3_fields):
            raise ValueError(f"rope scaling {self.rope_type}: low_freq_factor, high_freq_factor and "
                             "original_max_position_embeddings belong to llama3 scaling, and only to it")

    def parameters(self) -> dict[str, float | int]:
        """The parameters by their transformers names, in transformers' order (no rope_type)."""
        params: dict[str, float | int] = {"factor": self.factor}
        if self.rope_type == LLAMA3:
            params.update(low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor,  # type: ignore[arg-type]
                          original_max_position_embeddings=self.original_max_position_embeddings)  # type: ignore[arg-type]
        return params

    def describe(self) -> str:
        """'llama3 (factor 32, low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192)'."""
        return f"{self.rope_type} ({', '.join(f'{k} {v:g}' for k, v in self.parameters().items())})"

    def departure(self) -> str:
        """How `accepted_departures` records it: 'rope_scaling=llama3(factor=32,...)'."""
        return f"rope_scaling={self.rope_type}({','.join(f'{k}={v:g}' for k, v in self.parameters().items())})"

    def to_json(self) -> dict[str, Any]:
        return {"rope_type": self.rope_type, **self.parameters()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RopeScaling:
        return cls(**d)


def default_inv_freq(theta: float, head_size: int) -> np.ndarray:
    """float32 1 / theta^(2j / head_size) for j < head_size / 2: transformers' and llama2.c's
    `1.0 / (theta ** (arange(0, hd, 2).float() / hd))`, each step as torch computes it (theta cast
    to float32; pow is torch's SLEEF powf, reproduced in torch_cpu_math; the rest one IEEE
    operation each)."""
    base = np.float32(theta)
    if head_size < 1 or not (np.isfinite(base) and base >= np.finfo(np.float32).tiny):
        raise Llama2binError(f"rope frequencies need a head size >= 1 and a finite rope_theta > 0, not {head_size}, {theta!r}")
    exponents = np.arange(0, head_size, 2, dtype=np.int64)[: head_size // 2].astype(np.float32) / np.float32(head_size)
    return np.float32(1) / torch_pow_scalar_base(float(base), exponents)


def _rdiv(scalar: float, t: np.ndarray) -> np.ndarray:
    """torch's `scalar / tensor` on float32: the reciprocal, then a product with the scalar."""
    return (np.float32(1.0) / t) * np.float32(scalar)


def inv_freq(theta: float, head_size: int, scaling: RopeScaling | None = None) -> np.ndarray:
    """The float32 inverse frequencies [head_size // 2] of a model with this base and scaling."""
    return scale_inv_freq(default_inv_freq(theta, head_size), scaling)


def scale_inv_freq(base: np.ndarray, scaling: RopeScaling | None) -> np.ndarray:
    """The default frequencies `base` (float32) with `scaling` applied (None: unchanged)."""
    f32 = np.float32
    base = np.asarray(base, dtype=np.float32)
    if scaling is None:
        return base
    if scaling.rope_type == LINEAR:
        return base / f32(scaling.factor)
    # llama3, line for line as transformers' _compute_llama3_parameters (python floats are
    # torch scalars: rounded to float32 where they meet a tensor, compared exactly otherwise).
    factor, low, high = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
    old_context_len = scaling.original_max_position_embeddings
    assert low is not None and high is not None and old_context_len is not None
    low_freq_wavelen = old_context_len / low
    high_freq_wavelen = old_context_len / high
    wavelen = _rdiv(2 * math.pi, base)
    scaled = np.where(wavelen > low_freq_wavelen, base / f32(factor), base)
    smooth_factor = (_rdiv(old_context_len, wavelen) - f32(low)) / f32(high - low)
    smoothed = (f32(1.0) - smooth_factor) * scaled / f32(factor) + smooth_factor * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)
