"""v1: the seed's `version1_export` (Q8_0; all int8 values, then all scales)."""

from ..model import ModelConfig
from .layout import F32, Q8, SCALE, FormatSpec, SectionSpec, norm_order, quantized_header, quantized_order


def _order(cfg: ModelConfig) -> list[SectionSpec]:
    quantized = quantized_order(cfg)
    return [(n, F32) for n in norm_order(cfg)] + [(n, Q8) for n in quantized] + [(n, SCALE) for n in quantized]


SPEC = FormatSpec(
    version=1,
    quantized=True,
    header=lambda cfg, gs: quantized_header(1, cfg, gs),
    order=_order,
    read_by="no llama2.c program (the seed's v1; kept for files already in use)",
    loses="Q8_0 precision (error <= scale/2 per weight); rope_theta and norm_eps are not stored",
)
