"""Which Q8_0 group size each quantized version gets (issue 12.3).

Two rules meet here:

* the seed's back-off: halve the group size until it divides dim. v1 keeps exactly this (its
  golden files depend on it), whatever the hidden_dim.
* runq.c (v2, `groups_within_rows`) quantizes activations and walks weights in groups that must
  not straddle a row, so the group size must divide hidden_dim too. The *default* group size
  backs off further until it does (stories260K: dim 64, hidden_dim 172 -> 4) and the export says
  so on one line; a group size the user asked for explicitly is never changed behind their back,
  and is refused if it straddles rows.

When versions end up with different group sizes each gets its own quantization; versions with
equal group sizes share one.
"""

from __future__ import annotations

import logging
import math

from ..constants import DEFAULT_GROUP_SIZE
from ..errors import Llama2binError
from ..model import ModelConfig
from .q8_0 import choose_group_size
from .registry import format_spec

log = logging.getLogger(__name__)


def _divides_rows(cfg: ModelConfig, gs: int) -> bool:
    return cfg.dim % gs == 0 and cfg.hidden_dim % gs == 0


def plan_group_sizes(
    cfg: ModelConfig,
    versions: list,
    requested: int | None,
    source_group_size: int | None = None,
) -> dict:
    """version -> group size for every quantized version in `versions`.

    `requested` is the user's explicit --group-size, or None for the default: 64, or the group
    size of an already-quantized source (so that its q and scales can be carried over as they
    are instead of being quantized a second time)."""
    start = requested if requested is not None else (source_group_size or DEFAULT_GROUP_SIZE)
    plan = {}
    notes: dict[str, None] = {}  # one line per distinct back-off (v1 and v2 often share one)
    for v in versions:
        spec = format_spec(v)
        if not spec.quantized:
            continue
        gs = choose_group_size(cfg.dim, start)
        if gs != start:
            notes[f"BACKOFF: reducing group size to {gs} to fit dim {cfg.dim}"] = None
        if spec.groups_within_rows and cfg.hidden_dim % gs:
            if requested is not None:
                raise Llama2binError(
                    f"version {v}: hidden_dim {cfg.hidden_dim} is not a multiple of group size {gs}, so runq.c's "
                    f"groups would straddle rows of feed_forward.w2; choose --group-size dividing both {cfg.dim} "
                    f"and {cfg.hidden_dim} (or leave it out: the default backs off to one that does)"
                )
            seed_gs = gs
            while not _divides_rows(cfg, gs):
                gs //= 2
            notes[f"BACKOFF: version {v} group size {gs} instead of {seed_gs}: runq.c needs it to divide dim "
                  f"{cfg.dim} and hidden_dim {cfg.hidden_dim}"] = None
        for name, shape in cfg.shapes().items():
            numel = math.prod(shape)
            if len(shape) == 2 and numel % gs:
                raise Llama2binError(f"tensor {name} has {numel} elements, not a multiple of group size {gs}")
        plan[v] = gs
    for note in notes:
        log.info(note)
    return plan

