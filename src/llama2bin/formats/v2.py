"""v2: the interleaved Q8_0 layout llama2.c `runq.c` reads (each tensor's q, then its scales)."""

from ..model import ModelConfig
from .layout import F32, Q8, SCALE, SectionSpec, ak42_header, norm_order, quantized_order
from .spec import LLAMA2C_BIN, FormatSpec


def _order(cfg: ModelConfig) -> list[SectionSpec]:
    order = [(n, F32) for n in norm_order(cfg)]
    for name in quantized_order(cfg):
        order += [(name, Q8), (name, SCALE)]
    return order


SPEC = FormatSpec(
    name="2",
    description="llama2.c v2 (Q8_0, interleaved; runq.c)",
    family=LLAMA2C_BIN,
    header=ak42_header(2, group_size=True),
    order=_order,
    quantized=True,
    read_by="llama2.c runq.c",
    loses="Q8_0 precision (error <= scale/2 per weight); rope_theta and norm_eps are not stored",
    groups_within_rows=True,
)
