"""Sampling's products shared with a helper process (checks/split_weights.py) give the bits of one
process: the same products block by block, the same sampled tokens; a failure in the helper is
the one-line error; and the helper really runs."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from helpers import DATA

from llama2bin.checks import weights as weights_module
from llama2bin.checks.eval_tokens import sampled_tokens
from llama2bin.checks.forward import classify, hidden_states
from llama2bin.checks.split_weights import SplitWeights
from llama2bin.checks.weights import ResidentWeights, SourceWeights
from llama2bin.errors import Llama2binError
from llama2bin.formats.source_registry import open_source
from llama2bin.parallel import can_fork

pytestmark = pytest.mark.skipif(not can_fork(), reason="the helper is forked on Linux only")

SOURCES = [("llama2c", "tiny_a.pt"), ("llama2c", "tiny_b.pt"), ("hf", "tiny_hf_untied")]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows: every product of the tiny models has several, shared out."""
    monkeypatch.setattr(weights_module, "CHUNK_BYTES", 512)


@pytest.mark.parametrize("kind,name", SOURCES)
def test_products_and_tokens_are_the_one_process_bits(small_blocks, kind, name):
    with open_source(kind, os.path.join(DATA, name)) as src:
        cfg = src.config
        tok = np.random.default_rng(2).integers(0, cfg.vocab_size, (4, 3))
        results = []
        for weights in (ResidentWeights(SourceWeights(src)), SplitWeights(SourceWeights(src), budget=0)):
            with weights if isinstance(weights, SplitWeights) else contextlib.nullcontext():
                hidden = hidden_states(weights, cfg, tok, exact=False)
                results.append((hidden, classify(weights, cfg, hidden, exact=False)))
        assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])
        one, two = (sampled_tokens(src, 3, 9, seed=4, workers=w) for w in (1, 2))
    assert one.sequences == two.sequences


def test_the_helper_makes_every_other_block(small_blocks, monkeypatch):
    made = []
    real = weights_module.LazyWeights.plain_block
    monkeypatch.setattr(weights_module.LazyWeights, "plain_block",
                        lambda self, x, name, start, stop: made.append(os.getpid()) or real(self, x, name, start, stop))
    with open_source("llama2c", os.path.join(DATA, "tiny_a.pt")) as src, SplitWeights(SourceWeights(src)) as weights:
        out = weights.plain_product(np.ones((2, src.config.dim)), "tok_embeddings", 0, src.config.vocab_size)
    assert out.shape == (2, src.config.vocab_size)
    assert made and set(made) == {os.getpid()}  # the helper's blocks are counted in the helper, not here
    assert len(made) == -(-len(list(weights_module.row_blocks(src.config.vocab_size, src.config.dim))) // 2)


def test_a_failure_in_the_helper_is_the_one_line_error(small_blocks, monkeypatch):
    parent = os.getpid()
    real = weights_module.LazyWeights.plain_block

    def failing(self, x, name, start, stop):  # type: ignore[no-untyped-def]
        if os.getpid() != parent:
            raise Llama2binError(f"tensor {name}: rows {start}..{stop} could not be read")
        return real(self, x, name, start, stop)

    monkeypatch.setattr(weights_module.LazyWeights, "plain_block", failing)
    with open_source("llama2c", os.path.join(DATA, "tiny_a.pt")) as src, SplitWeights(SourceWeights(src)) as weights:
        with pytest.raises(Llama2binError, match="tensor tok_embeddings: rows .* could not be read"):
            weights.plain_product(np.ones((2, src.config.dim)), "tok_embeddings", 0, src.config.vocab_size)
