"""The functional check split among processes (sequences shared out, functional.py's `workers`)
gives the one-process result bit for bit: on a model trained for real and on a GQA model with an
untied classifier, for float32 and Q8_0 outputs in both arithmetics, a program's view, and
evaluation sequences of several lengths (several batches). And it really runs in several processes."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("torch")

import trained_model  # noqa: E402

from llama2bin import parallel  # noqa: E402
from llama2bin.checks import metrics  # noqa: E402
from llama2bin.checks.as_run import program_config, program_rope  # noqa: E402
from llama2bin.checks.eval_tokens import EvalTokens, sampled_tokens  # noqa: E402
from llama2bin.checks.functional import (  # noqa: E402
    PARALLEL_MIN_WEIGHTS,
    ReferenceModel,
    functional_check,
    functional_workers,
)
from llama2bin.demo import write_demo_checkpoint  # noqa: E402
from llama2bin.formats.families import open_output  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402
from llama2bin.formats.targets import TARGETS  # noqa: E402
from llama2bin.formats.writer import export  # noqa: E402
from llama2bin.model import ModelConfig  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    out = {}
    for name in ("trained", "untied"):
        ckpt = str(root / f"{name}.pt")
        if name == "trained":
            trained_model.train(ckpt)
        else:
            write_demo_checkpoint(name, ckpt)
        bins = {v: str(root / f"{name}.v{v}.bin") for v in (0, 2)}
        with open_source("llama2c", ckpt) as src:
            export(src, list(bins.items()), quiet=True)
        out[name] = (ckpt, bins)
    return out


def _tokens(src) -> EvalTokens:  # type: ignore[no-untyped-def]
    """Sampled sequences of two lengths: two batches, shared out unevenly (5 and 2 sequences)."""
    long, short = sampled_tokens(src, 5, 12, seed=1), sampled_tokens(src, 2, 7, seed=2)
    return EvalTokens(long.sequences + short.sequences, {"kind": "file"})


def _check(ckpt: str, path: str, workers: int, view: str | None, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with open_source("llama2c", ckpt) as src, open_output(path) as output:
        if view is not None:  # a program's view: its RoPE (v0's tables, or its base) and epsilon
            target = TARGETS[view]
            kwargs.update(file_config=program_config(target, src.config), rope=program_rope(target, output))
        reference = ReferenceModel(src, _tokens(src))
        first = functional_check(output, reference, workers=workers, **kwargs).to_json()
        again = functional_check(output, reference, workers=workers, **kwargs).to_json()  # the kept source forward
        assert again == first
        return json.dumps(first, sort_keys=True)


@pytest.mark.parametrize("name", ["trained", "untied"])
@pytest.mark.parametrize("version,view,kwargs", [
    (0, None, {}), (0, None, {"source_weights": True}), (2, None, {}), (2, None, {"arithmetic": "q8"}),
    (0, "tables", {}), (2, "runq.c", {"arithmetic": "q8"}),
])
def test_shared_out_sequences_give_the_one_process_result(models, monkeypatch, name, version, view, kwargs):
    ckpt, bins = models[name]
    pools = []
    real = parallel.ForkPool

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **k):  # type: ignore[no-untyped-def]
            super().__init__(*a, **k)
            pools.append(self.workers)

    monkeypatch.setattr(parallel, "ForkPool", Counting)
    # vocabulary blocks of a few entries (the whole batch's, however it is shared out), passes of a few rows
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 900)
    monkeypatch.setattr(metrics, "_PASS_ELEMENTS", 200)
    one = _check(ckpt, bins[version], 1, view, **kwargs)
    assert set(pools) == {1}
    for workers in (2, 3):
        pools.clear()
        assert _check(ckpt, bins[version], workers, view, **kwargs) == one, workers
        assert set(pools) == {workers}  # forked: 4 shares of 5 + 2 sequences among the workers


def test_big_models_take_every_core_and_small_ones_one():
    small = ModelConfig(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000,
                        max_seq_len=256, shared_classifier=True)  # stories15M
    big = ModelConfig(dim=768, hidden_dim=2048, n_layers=12, n_heads=12, n_kv_heads=12, vocab_size=32000,
                      max_seq_len=1024, shared_classifier=True)  # stories110M
    assert functional_workers(small) == functional_workers(small, 4) == 1
    assert sum(math.prod(shape) for shape in big.shapes().values()) >= PARALLEL_MIN_WEIGHTS
    assert functional_workers(big, 3) == 3
    assert functional_workers(big) == parallel.default_workers(1 << 40)
