"""1f: llama2.c's current `export.py --version 1` (float32, "ak42" header, no group size).

Same header start as the seed's Q8_0 v1 but group_size bytes 0; float32 norms first, then the
matrices in the Q8_0 formats' order; no rope tables.
"""

from ..model import ModelConfig
from .layout import F32, SectionSpec, ak42_header, matrix_order, norm_order
from .spec import LLAMA2C_BIN, FormatSpec


def _order(cfg: ModelConfig) -> list[SectionSpec]:
    return [(n, F32) for n in norm_order(cfg) + matrix_order(cfg)]


SPEC = FormatSpec(
    name="1f",
    description="llama2.c v1 (float32, current export.py --version 1; 'ak42' header version 1, group_size 0)",
    family=LLAMA2C_BIN,
    header=ak42_header(1, group_size=False),
    order=_order,
    read_by="a few ports (a Zig port, a C/CUDA port; an open llama2.c pull request moves run.c to it); not run.c",
    loses="nothing of the weights (float32); rope_theta and norm_eps are not stored",
)
