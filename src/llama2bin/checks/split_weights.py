"""Sampling's plain products of a big model on two processes, with the bits of one.

Sampling the evaluation tokens (eval_tokens.py) multiplies every weight once per generated token,
in plain float64 BLAS: at 1.1B each token reads and widens 4.4 GB of weights and multiplies them
with 8 rows of activations, and 31 tokens take about a minute on one core. `SplitWeights` forks
one helper that makes every other row block of every product (`LazyWeights.plain_block`, one BLAS
call per block, the same calls whoever makes them: the same bits as one process), while this
process makes the others; each keeps the blocks it makes resident (ResidentWeights), so the two
together keep twice as many. Everything else of the step (norms, attention, the sampler) stays
here. Where fork is not used, or a product has one block, this process makes it all.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import Llama2binError
from ..parallel import can_fork, fork_child, reap, receive_message, receive_outcome, send_message, send_outcome
from .weights import RESIDENT_BYTES, LazyWeights, ResidentWeights, row_blocks


class SplitWeights(ResidentWeights):
    """`with SplitWeights(inner) as weights:` ResidentWeights whose plain products are shared
    with a forked helper, block by block (see the module's docstring)."""

    def __init__(self, inner: LazyWeights, budget: int = RESIDENT_BYTES, helper: bool = True):
        super().__init__(inner, budget)
        self.helper = helper  # False: ResidentWeights, all in this process
        self._pid = -1
        self._requests = -1
        self._answers: Any = None

    def __enter__(self) -> SplitWeights:
        if not (self.helper and can_fork()):
            return self
        req_r, req_w = os.pipe()
        ans_r, ans_w = os.pipe()

        def serve() -> None:
            os.close(req_w)
            os.close(ans_r)
            requests = os.fdopen(req_r, "rb")
            while True:
                try:
                    name, x, blocks = receive_message(requests)
                except EOFError:  # this process is done
                    return
                send_outcome(ans_w, self._plain_blocks, x, name, blocks)

        self._pid = fork_child(serve)
        os.close(req_r)
        os.close(ans_w)
        self._requests, self._answers = req_w, os.fdopen(ans_r, "rb")
        return self

    def _plain_blocks(self, x: np.ndarray, name: str, blocks: list[tuple[int, int]]) -> list[np.ndarray]:
        return [self.plain_block(x, name, start, stop) for start, stop in blocks]

    def plain_product(self, x: np.ndarray, name: str, first: int, last: int) -> np.ndarray:
        blocks = [(first + start, first + stop) for start, stop in row_blocks(last - first, self.shape(name)[1])]
        if self._pid < 0 or len(blocks) < 2:
            return super().plain_product(x, name, first, last)
        send_message(self._requests, (name, x, blocks[1::2]))  # the helper's share, asked for first
        out = np.empty((x.shape[0], last - first), dtype=np.float64)
        for start, stop in blocks[0::2]:
            out[:, start - first : stop - first] = self.plain_block(x, name, start, stop)
        try:
            theirs = receive_outcome(self._answers)
        except EOFError:
            raise Llama2binError("sampling: the helper process died") from None
        for (start, stop), part in zip(blocks[1::2], theirs, strict=True):
            out[:, start - first : stop - first] = part
        return out

    def __exit__(self, *exc: object) -> None:
        if self._pid > 0:
            os.close(self._requests)  # the helper sees EOF and exits
            self._answers.close()
            reap(self._pid, kill=exc[0] is not None)
            self._pid = -1
