"""Meta Llama checkpoints: DIR/params.json plus DIR/consolidated.NN.pth (one or several shards).

Meta's tensors already use the canonical names and the interleaved rotary layout; the work is
model-parallel shards. Each shard is opened lazily (TorchZip: only its pickle is read), and
every tensor becomes a `ConcatTensor` over its per-shard pieces that reads, for a row range,
just those rows from each shard. No shard and no whole tensor is ever held in memory.

How Meta splits (docs/formats.md): norms are replicated in every shard; tok_embeddings,
attention.wo and feed_forward.w2 are split along dim 1 (columns); wq, wk, wv, w1, w3 and
output along dim 0 (rows).
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from ..constants import DEFAULT_MAX_SEQ_LEN
from ..errors import Llama2binError
from ..model import ModelConfig
from ..rope_freqs import LLAMA3, RopeScaling
from .base import FilePool, Source, TensorEncoding, TensorRef, check_tensors, split_classifier, tensors_equal
from .policy import (
    bool_field,
    int_field,
    load_json_object,
    optional_int_field,
    positive_float_field,
    require_dir,
    rope_departures,
)
from .torchzip import TorchTensor, TorchZip

PARAMS_FILE = "params.json"
TOKENIZER_FILE = "tokenizer.model"
_SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")

# Not a weight: the rotary frequencies Meta's model.py precomputes (our formats recompute them).
_IGNORED_TENSORS = {"rope.freqs"}

# params.json keys and what we do with them. Anything else may change the architecture, so it is
# refused rather than silently ignored.
_PARAMS_USED = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "norm_eps", "rope_theta", "max_seq_len"}
_PARAMS_HARMLESS = {
    "multiple_of",  # only rounds hidden_dim, which we read from the tensors
    "ffn_dim_multiplier",  # likewise
    "max_batch_size",  # a runtime setting of Meta's generator
    "use_scaled_rope",  # Llama 3.1+: llama3 rope scaling, see meta_rope_scaling
}

# What Meta's reference code (meta-llama/llama-models, models/llama3/model.py `apply_scaling`)
# applies when params.json says use_scaled_rope: llama3 scaling with these constants, the same for
# every Llama 3.1, 3.2 and 3.3 model. For Llama 3.2 1B and 3B, Meta has since said the factor is 32
# (llama-models issue #166; the Hugging Face config.json of those models was corrected to 32 after
# release, and llama-models issue #241 reports the reference code's 8 failing past ~80k tokens).
# Their params.json does not say so, so those two are recognised by their exact shape - the only
# way for a Meta download and the Hugging Face copy of the same model to get the same RoPE.
META_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
# (dim, n_layers, n_heads, n_kv_heads, vocab_size) of Llama 3.2 1B and 3B (base and instruct).
LLAMA_3_2_SMALL_SHAPES = {(2048, 16, 32, 8, 128256): "Llama 3.2 1B", (3072, 28, 24, 8, 128256): "Llama 3.2 3B"}
LLAMA_3_2_SMALL_FACTOR = 32.0


def meta_rope_scaling(dim: int, n_layers: int, n_heads: int, n_kv_heads: int, vocab_size: int) -> RopeScaling:
    """The llama3 scaling a Meta checkpoint with use_scaled_rope: true is run with."""
    params = dict(META_SCALING)
    if (dim, n_layers, n_heads, n_kv_heads, vocab_size) in LLAMA_3_2_SMALL_SHAPES:
        params["factor"] = LLAMA_3_2_SMALL_FACTOR
    return RopeScaling(LLAMA3, params["factor"], params["low_freq_factor"], params["high_freq_factor"],
                       int(params["original_max_position_embeddings"]))

SPLIT_ROWS, SPLIT_COLS, REPLICATED = "rows", "cols", "replicated"


def split_of(name: str) -> str | None:
    """How Meta's model parallelism splits canonical tensor `name`; None for names not in a LLaMA."""
    if name == "tok_embeddings":
        return SPLIT_COLS
    if name in ("norm",):
        return REPLICATED
    if name == "output":
        return SPLIT_ROWS
    m = re.fullmatch(r"layers\.\d+\.(.+)", name)
    if not m:
        return None
    kind = m.group(1)
    if kind in ("attention_norm", "ffn_norm"):
        return REPLICATED
    if kind in ("attention.wo", "feed_forward.w2"):
        return SPLIT_COLS
    if kind in ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3"):
        return SPLIT_ROWS
    return None


class ConcatTensor(TensorRef):
    """The concatenation of per-shard pieces along rows (axis 0) or columns (axis 1), read lazily.

    A row range costs one contiguous read per shard that holds any of those rows: along
    columns every shard holds part of every row; along rows only the overlapping shards are read.
    """

    def __init__(self, name: str, parts: list[TensorRef], axis: int):
        if axis not in (0, 1) or not parts:
            raise ValueError("ConcatTensor needs parts and axis 0 or 1")
        self.name = name
        self.parts = parts
        self.axis = axis
        first = parts[0].shape
        if axis == 0:
            self.shape = (sum(p.shape[0] for p in parts), *first[1:])
        else:
            self.shape = (first[0], sum(p.shape[1] for p in parts), *first[2:])
        # Row (axis 0) or column (axis 1) at which each part starts.
        sizes = [p.rows if axis == 0 else p.cols for p in parts]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()

    @property  # type: ignore[override]
    def encoding(self) -> TensorEncoding:
        """The shards' storage (torch.save'd shards of one model share a dtype)."""
        return self.parts[0].encoding

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if len(self.parts) == 1:
            return self.parts[0].read_rows(start, stop)
        out = np.empty((stop - start, self.cols), dtype=np.float32)
        if self.axis == 1:
            for part, c0, c1 in zip(self.parts, self._starts, self._starts[1:], strict=False):
                out[:, c0:c1] = part.read_rows(start, stop)
            return out
        for part, r0, r1 in zip(self.parts, self._starts, self._starts[1:], strict=False):
            lo, hi = max(start, r0), min(stop, r1)
            if lo < hi:
                if lo == start and hi == stop:  # the range lies inside one shard: no copy
                    return part.read_rows(lo - r0, hi - r0)
                out[lo - start : hi - start] = part.read_rows(lo - r0, hi - r0)
        return out

    def identity(self) -> Any:
        ids = tuple(p.identity() for p in self.parts)
        return None if any(i is None for i in ids) else (self.axis, ids)


def shard_paths(path: str) -> list[str]:
    """consolidated.00.pth, consolidated.01.pth, ...: numbered from 0 with none missing."""
    found: dict[int, str] = {}
    for entry in os.listdir(path):
        m = _SHARD_RE.match(entry)
        if m:
            i = int(m.group(1))
            if i in found:
                raise Llama2binError(f"{path}: {found[i]} and {entry} both claim to be shard {i}")
            found[i] = entry
    if not found:
        raise Llama2binError(f"{path}: no consolidated.NN.pth files (not a Meta Llama checkpoint directory)")
    for i in range(max(found) + 1):
        if i not in found:
            have = ", ".join(found[k] for k in sorted(found))
            raise Llama2binError(f"{path}: consolidated.{i:02d}.pth is missing (have {have})")
    return [os.path.join(path, found[i]) for i in range(len(found))]


class MetaSource(Source):
    kind = "meta"

    def __init__(self, path: str, max_seq_len: int | None = None, allow_rope_theta: bool = False):
        self.path = path
        require_dir(path, "Meta Llama")
        params_path = os.path.join(path, PARAMS_FILE)
        if not os.path.exists(params_path):
            raise Llama2binError(f"{path}: no {PARAMS_FILE} (not a Meta Llama checkpoint directory)")
        params = load_json_object(params_path, "Meta params")
        shards = shard_paths(path)
        self._pool = FilePool()
        try:
            self._open(path, params_path, params, shards, max_seq_len, allow_rope_theta)
        except BaseException:
            self._pool.close()
            raise
        tokenizer = os.path.join(path, TOKENIZER_FILE)
        self.tokenizer_path = tokenizer if os.path.isfile(tokenizer) else None
        self._shard_names = [os.path.basename(s) for s in shards]

    def _open(
        self,
        path: str,
        params_path: str,
        params: dict[str, Any],
        shards: list[str],
        max_seq_len: int | None,
        allow_rope_theta: bool,
    ) -> None:
        unknown = sorted(set(params) - _PARAMS_USED - _PARAMS_HARMLESS)
        if unknown:
            raise Llama2binError(
                f"{params_path}: unknown field {unknown[0]} = {params[unknown[0]]!r}: it may change the architecture"
            )
        scaled = bool_field(params_path, "use_scaled_rope", params.get("use_scaled_rope", False))
        for field in ("dim", "n_layers", "n_heads"):
            if field not in params:
                raise Llama2binError(f"{params_path}: no {field}")
        # Every value's type before any is used (a fractional dim is refused, never truncated).
        ints = {f: int_field(params_path, f, params[f]) for f in ("dim", "n_layers", "n_heads")}
        for f in ("n_kv_heads", "vocab_size", "max_seq_len"):
            ints[f] = optional_int_field(params_path, f, params.get(f))
        norm_eps = positive_float_field(params_path, "norm_eps", params.get("norm_eps", 1e-5))

        refs = self._concatenated_tensors(shards)
        for needed in ("tok_embeddings", "layers.0.feed_forward.w1", "output"):
            if needed not in refs:
                raise Llama2binError(f"{shards[0]}: missing tensor {needed}.weight")

        vocab = ints["vocab_size"]
        if vocab is None or vocab == -1:  # Meta's convention: the tokenizer decides; the embeddings record it
            vocab = refs["tok_embeddings"].shape[0]
        n_heads = ints["n_heads"]
        n_kv_heads = n_heads if ints["n_kv_heads"] is None else ints["n_kv_heads"]  # 0 is refused
        scaling = meta_rope_scaling(ints["dim"], ints["n_layers"], n_heads, n_kv_heads, vocab) if scaled else None
        # Meta's ModelArgs default rope_theta is 10000 for Llama 2's code and 500000 for Llama 3's;
        # every Llama 3 params.json states it, so a missing one means Llama 2.
        theta, departures = rope_departures(params_path, "rope_theta", params.get("rope_theta", 10000.0), scaling,
                                            "use_scaled_rope", allow_rope_theta)
        if max_seq_len is None:
            max_seq_len = DEFAULT_MAX_SEQ_LEN if ints["max_seq_len"] is None else ints["max_seq_len"]
        # Meta always stores output separately; it is "shared" only if it equals the embeddings.
        shared = split_classifier(refs)
        config = ModelConfig(
            dim=ints["dim"],
            hidden_dim=refs["layers.0.feed_forward.w1"].shape[0],  # multiple_of rounding: trust the tensors
            n_layers=ints["n_layers"],
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            vocab_size=vocab,
            max_seq_len=max_seq_len,
            shared_classifier=shared,
            norm_eps=norm_eps,
            rope_theta=theta,
            rope_scaling=scaling,
            accepted_departures=departures,
        )
        config.validate(params_path)
        check_tensors(path, config, refs, display=lambda name: f"{name}.weight")
        self.config = config
        self._refs = refs

    def _concatenated_tensors(self, shards: list[str]) -> dict[str, TensorRef]:
        """Canonical name -> ConcatTensor over every shard; shards must agree on names and shapes."""
        per_shard: list[dict[str, TorchTensor]] = []
        zips: list[TorchZip] = []
        for shard in shards:
            z = TorchZip(shard, self._pool)
            if not isinstance(z.obj, dict) or not all(isinstance(k, str) for k in z.obj):
                raise Llama2binError(f"{shard}: not a Meta state dict (expected a dict of tensor names to tensors)")
            for key, value in z.obj.items():
                if not isinstance(value, TorchTensor):
                    raise Llama2binError(f"{shard}: entry {key} is not a tensor")
            zips.append(z)
            per_shard.append(z.obj)

        first = per_shard[0]
        names0 = set(first)
        for shard, state in zip(shards[1:], per_shard[1:], strict=True):
            if set(state) != names0:
                missing = sorted(names0 - set(state))
                if missing:
                    raise Llama2binError(f"{shard}: missing tensor {missing[0]} (present in {os.path.basename(shards[0])})")
                extra = sorted(set(state) - names0)[0]
                raise Llama2binError(f"{shard}: tensor {extra} is not in {os.path.basename(shards[0])}")
            for key in first:
                if state[key].shape != first[key].shape:
                    raise Llama2binError(
                        f"{shard}: tensor {key} has shape {list(state[key].shape)}, but "
                        f"{os.path.basename(shards[0])} has {list(first[key].shape)} (Meta shards split evenly)"
                    )

        refs: dict[str, TensorRef] = {}
        for key in first:
            if key in _IGNORED_TENSORS:
                continue
            if not key.endswith(".weight"):
                what = "bias" if key.endswith(".bias") else "tensor"
                raise Llama2binError(f"{shards[0]}: unexpected {what} {key}: the .bin formats hold only LLaMA weights")
            name = key[: -len(".weight")]
            split = split_of(name)
            if split is None:
                raise Llama2binError(f"{shards[0]}: unexpected tensor {key}: not part of a LLaMA model")
            parts = [z.tensor(state[key], key) for z, state in zip(zips, per_shard, strict=True)]
            ndim = len(parts[0].shape)
            if split == REPLICATED:
                if ndim != 1:
                    raise Llama2binError(f"{shards[0]}: tensor {key} has shape {list(parts[0].shape)}, expected 1-D")
                for shard, part in zip(shards[1:], parts[1:], strict=True):
                    if not tensors_equal(parts[0], part):
                        raise Llama2binError(
                            f"{shard}: tensor {key} differs from {os.path.basename(shards[0])} (norms are replicated)"
                        )
                refs[name] = parts[0]
                continue
            if ndim != 2:
                raise Llama2binError(f"{shards[0]}: tensor {key} has shape {list(parts[0].shape)}, expected a matrix")
            # Named as in the shards, so messages about it (e.g. NaN found while writing) match the files.
            refs[name] = ConcatTensor(key, parts, 0 if split == SPLIT_ROWS else 1)
        return refs


    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "shards": list(self._shard_names)}
