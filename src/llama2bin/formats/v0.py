"""v0: the legacy float32 layout (the seed's `legacy_export`; llama2.c `run.c`)."""

from ..model import ModelConfig
from .layout import F32, ROPE_COS, ROPE_SIN, V0_HEADER, Layout, SectionSpec, build_layout, v0_weight_order
from .spec import LLAMA2C_BIN, FormatSpec


def _order(cfg: ModelConfig) -> list[SectionSpec]:
    order = [(name, F32) for name in v0_weight_order(cfg)] + [(ROPE_COS, F32), (ROPE_SIN, F32)]
    # Departure from the seed: an untied classifier is appended (and vocab_size negated)
    # instead of silently dropped.
    return order + ([] if cfg.shared_classifier else [("output", F32)])


SPEC = FormatSpec(
    name="0",
    description="llama2.c v0 (float32, legacy export; no magic)",
    family=LLAMA2C_BIN,
    header=V0_HEADER,
    order=_order,
    negative_vocab_unshared=True,
    rope_tables=True,
    read_by="llama2.c run.c (and the ports that read its file: Rust, Mojo, C#, TypeScript, WASM)",
    loses="nothing of the weights (float32); rope_theta and norm_eps are not stored (run.c assumes 10000 and 1e-5)",
)


def v0_layout_without_rope(cfg: ModelConfig) -> Layout:
    """A v0 file as some writers leave it: no freqs_cos/freqs_sin (run.c skips them anyway)."""
    order = [sec for sec in _order(cfg) if sec[0] not in (ROPE_COS, ROPE_SIN)]
    return build_layout(SPEC.name, cfg, None, SPEC.header_bytes(cfg, None), order)
