"""The nested objects of the checks' JSON results, as types (`typed_json` checks them at load).

The results themselves are dataclasses (TensorCheckResult, FunctionalResult, CCheckResult,
QualityVerdict, Verification); the objects inside them that other modules produce as JSON
(a source's description, the model config, a v0's rope tables, the evaluation tokens' summary)
are described here, so `Verification.from_json` refuses a wrong type where the file is read,
naming the field, and the reports read typed values. A new optional field is one `NotRequired`
line here (or a dataclass field with a default in its result).
"""

# No `from __future__ import annotations`: TypedDict learns NotRequired keys only from evaluated annotations.
from typing import Any, NotRequired, TypedDict


class RopeScalingJson(TypedDict):
    """rope_freqs.RopeScaling.to_json(): the type and transformers' parameters (llama3 adds three)."""

    rope_type: str
    factor: float


class ModelConfigJson(TypedDict):
    """model.ModelConfig.to_json()."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    max_seq_len: int
    shared_classifier: bool
    norm_eps: float
    rope_theta: float
    rope_scaling: NotRequired[RopeScalingJson]
    bos_id: NotRequired[int]
    eos_ids: NotRequired[list[int]]
    accepted_departures: list[str]


class SourceQuantizedJson(TypedDict):
    """sources.base.SourceQuantization.to_json(): a source that was already Q8_0."""

    format: str
    group_size: int


class SourceDescriptionJson(TypedDict):
    """Source.describe(): the kind and the checkpoint's name, and what some kinds add."""

    kind: str
    name: str
    format: NotRequired[str]  # a .bin source
    source_quantized: NotRequired[SourceQuantizedJson]
    shards: NotRequired[list[str]]  # Meta
    weights: NotRequired[dict[str, Any]]  # Hugging Face: how its weights were found
    gguf_version: NotRequired[int]
    tensor_types: NotRequired[dict[str, int]]


class SourceJson(SourceDescriptionJson):
    """What verification records of the source: its description and config."""

    config: ModelConfigJson


class RopeTablesJson(TypedDict):
    """formats.rope.rope_json(): a v0's stored rotary tables and which readers use them."""

    theta: float
    scaling: NotRequired[RopeScalingJson]
    read_from_table_by: list[str]
    ignored_by: list[str]
    all_readers_agree: bool


class EvalSummaryJson(TypedDict):
    """eval_tokens.EvalTokens.summary(): how the evaluation tokens were made (not the ids)."""

    recipe: dict[str, str | int | float | None]
    seqs: int
    positions: int
    sha256: str


# metrics.PERCENTILES of the per-position KL divergence
KldPercentilesJson = TypedDict("KldPercentilesJson", {"p50": float, "p90": float, "p99": float, "p99.9": float})
