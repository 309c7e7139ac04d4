"""Argument types that refuse out-of-range numbers at parse time (argparse's usage error, exit 2).

A count read from the command line sizes arrays and process pools: `--eval-seqs 1000000000`
would otherwise allocate gigabytes before failing with a traceback, `--threads 0` or
`--group-size 0` divide by zero, and a NaN threshold makes every comparison false, so a check
would silently pass.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..constants import MAX_DIM, MAX_SEQ_LEN, MAX_VOCAB

# Worker processes: far more than any machine this runs on, far less than a fork bomb.
MAX_THREADS = 1024
# Sequences of the functional evaluation set; the token count seqs x len is capped separately
# (checks.eval_tokens.check_size).
MAX_EVAL_SEQS = 1 << 16


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse `type=` accepting integers in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range [{low}, {high}]")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def finite_float(low: float, high: float = math.inf) -> Callable[[str], float]:
    """An argparse `type=` accepting finite floats in [low, high] (no NaN, no infinity)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not low <= value <= high:
            bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"{text} is not a finite number {bounds}")
        return value

    parse.__name__ = "number"
    return parse


threads = bounded_int(1, MAX_THREADS)
group_size = bounded_int(1, MAX_DIM)
max_seq_len = bounded_int(1, MAX_SEQ_LEN)
vocab_size = bounded_int(1, MAX_VOCAB)
token_id = bounded_int(0, MAX_VOCAB - 1)
eval_seqs = bounded_int(1, MAX_EVAL_SEQS)
eval_len = bounded_int(1, MAX_SEQ_LEN)
eval_seed = bounded_int(0, 2**63 - 1)  # numpy's default_rng refuses negative seeds
non_negative = finite_float(0.0)
fraction = finite_float(0.0, 1.0)
