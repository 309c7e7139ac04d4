"""The report records as types: what records.py builds from the checks' results, what the
tracked `{stem}.json` reports hold, and what summary.py reads back (checked at load by
typed_json) and the renderers read. Key order in the files is records.py's, not these classes'.
A new optional field is one `NotRequired` line here.
"""

# No `from __future__ import annotations`: TypedDict learns NotRequired keys only from evaluated annotations.
from typing import Any, NotRequired, TypedDict

from ..checks.result_json import (
    EvalSummaryJson,
    KldPercentilesJson,
    ModelConfigJson,
    RopeTablesJson,
    SourceDescriptionJson,
    SourceQuantizedJson,
)


class TensorRow(TypedDict):
    """One tensor's round-trip statistics, rounded to 6 significant digits."""

    name: str
    shape: list[int]
    encoding: str
    group_size: int | None
    max_abs_err: float
    rmse: float
    rel_err: float
    snr_db: float | None  # None: exact


class QualityLimitsSection(TypedDict):
    kld_mean_max: float
    kld_p99_max: float
    same_top_min: float
    ppl_ratio_max: float


class QualitySection(TypedDict):
    limits: QualityLimitsSection
    gate: bool
    exceeded: list[str]
    passed: bool


class FunctionalSection(TypedDict):
    """The functional check (logits against the source) and its quality verdict, rounded."""

    arithmetic: str
    eval: EvalSummaryJson
    positions: int
    predicted: int
    quantized: bool
    max_abs_logit: float
    max_abs_dlogit: float
    kld_mean: float
    kld_max: float
    same_top: float
    rms_dp: float | None
    ppl_source: float | None
    ppl_file: float | None
    delta_ppl: float | None
    ppl_ratio: float | None
    kld_percentiles: KldPercentilesJson
    kld_hist: list[int]
    kld_hist_edges: list[float]
    fp32_rtol: float
    quality: QualitySection | None
    passed: bool


class CCheckSection(TypedDict):
    """The C consumer check as the tracked report states it (no compiler-dependent numbers)."""

    arithmetic: str | None
    positions: int
    passed: bool | None  # None: skipped
    skipped: str | None
    rel_tolerance: float | None
    tie_window: NotRequired[float]  # q8 arithmetic


class FileEntry(TypedDict):
    path: str
    sha256: str
    size: int


class SourceRecordJson(TypedDict, total=False):
    """The fields of a fetch's SOURCE.json the reports read (fetch/step.py writes it)."""

    kind: str
    repo: str | None
    revision: str | None
    commit: str | None
    url: str | None
    path: str | None
    files: list[FileEntry]


class FetchedSection(TypedDict, total=False):
    """Where the checkpoint came from, as the reports state it (no local paths but a last component)."""

    kind: str
    repo: str
    revision: str
    commit: str
    url: str
    path: str
    files: list[FileEntry]


class SourceSection(SourceDescriptionJson):
    fetched: NotRequired[FetchedSection]


class TargetFunctional(TypedDict):
    """A target's quality as it computes the file (rounded: what the tracked report shows)."""

    arithmetic: str
    positions: int
    kld_p99: float | None
    delta_ppl: float | None
    ppl_ratio: float | None
    kld_mean: float | None
    same_top: float | None
    rms_dp: float | None
    max_abs_dlogit: float | None


class TargetSection(TypedDict):
    """verify --target: one program reading this file, what it hard-codes, and its cost."""

    name: str
    program: str
    rope_theta: float | None
    activations: str
    norm_eps: float | None
    tokenizer: str
    ports: list[str]
    departures: list[str]
    warnings: list[str]
    functional: TargetFunctional | None


class Report(TypedDict):
    """The tracked report of one model x output (`{stem}.json`)."""

    model: str
    version: int | str
    format: str
    read_by: str | None
    label: str
    file: str
    size: int
    size_mb: float
    parameters: int
    bits_per_weight: float | None
    sha256: str
    quantized: bool
    weights_fingerprint: str
    verified: bool
    failures: list[str]
    group_size: int | None
    header: dict[str, Any]  # the output's own header, as its format has it: shown as stored, not read
    model_config: ModelConfigJson
    source: SourceSection
    accepted_departures: list[str]
    llama2bin: str
    worst_tensor: TensorRow | None
    functional: FunctionalSection | None
    c_check: CCheckSection | None
    plot: str | None
    tensors: list[TensorRow]
    source_quantized: NotRequired[SourceQuantizedJson]
    rope_tables: NotRequired[RopeTablesJson]
    targets: NotRequired[list[TargetSection]]


class SummaryFunctional(TypedDict):
    arithmetic: str
    positions: int
    max_abs_dlogit: float
    kld_mean: float
    kld_max: float
    same_top: float
    rms_dp: float | None
    ppl_source: float | None
    ppl_file: float | None
    delta_ppl: float | None
    ppl_ratio: float | None
    passed: bool
    kld_p99: float


class SummaryCCheck(TypedDict):
    arithmetic: str | None
    passed: bool | None
    skipped: str | None


class SummaryRow(TypedDict):
    """One line of summary.json."""

    model: str
    version: int | str
    label: str
    file: str
    size: int
    size_mb: float
    bits_per_weight: float | None
    encoding: str
    group_size: int | None
    quantized: bool
    sha256: str
    verified: bool
    correct: bool
    quality: str
    quality_exceeded: list[str]
    worst_tensor: str | None
    worst_rel_err: float | None
    worst_max_abs_err: float | None
    functional: SummaryFunctional | None
    c_check: SummaryCCheck | None


class ModelRow(TypedDict):
    """One model of the summary page: its shape and source."""

    model: str
    parameters: int
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    max_seq_len: int
    group_size: str
    source: str


class Quantization(TypedDict):
    """One distinct quantization of a model (outputs holding identical weights): 'v1 = v2'."""

    model: str
    label: str
    bits_per_weight: float | None
    functional: FunctionalSection | None
