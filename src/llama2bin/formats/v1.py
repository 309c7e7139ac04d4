"""v1: the seed's `version1_export` (Q8_0; all int8 values, then all scales)."""

from ..model import ModelConfig
from .layout import F32, Q8, SCALE, SectionSpec, ak42_header, norm_order, quantized_order
from .spec import LLAMA2C_BIN, FormatSpec


def _order(cfg: ModelConfig) -> list[SectionSpec]:
    quantized = quantized_order(cfg)
    return [(n, F32) for n in norm_order(cfg)] + [(n, Q8) for n in quantized] + [(n, SCALE) for n in quantized]


SPEC = FormatSpec(
    name="1",
    description="seed v1 (Q8_0: all q, then all scales; 'ak42' header version 1, group_size > 0)",
    family=LLAMA2C_BIN,
    header=ak42_header(1, group_size=True),
    order=_order,
    quantized=True,
    read_by="no llama2.c program (the seed's v1; kept for files already in use)",
    loses="Q8_0 precision (error <= scale/2 per weight); rope_theta and norm_eps are not stored",
)
