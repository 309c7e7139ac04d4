"""The C check at the shapes users have: stories15M-shaped models (MHA, GQA, untied), llama2.c's
init. Correct files pass in q8 and f32 arithmetic; a layout disagreement between C and Python and a
corrupted file both fail. The full measurement (about 100 models up to 110M, trained ones too) is
bench/ccheck_rates.py; this is its smallest slice that still meets the rounding ties of real sizes."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # four 15M-shaped models: export and check, ~15 s of CPU

pytest.importorskip("torch")

from realistic_models import SHAPES, copy_with, double_scale, swap_tensors, write_checkpoint  # noqa: E402

from llama2bin.checks.ccheck import CCheckResult, c_check, q8_compare  # noqa: E402
from llama2bin.checks.q8_forcing import TIE_WINDOW  # noqa: E402
from llama2bin.checks.verification import verify_output  # noqa: E402
from llama2bin.formats.source_registry import open_source  # noqa: E402
from llama2bin.formats.writer import export  # noqa: E402

# seeds whose untethered q8 logits differ from C's by ~1e-2 here (the old check failed them)
MODELS = [("15M", 1000), ("15M-gqa", 1001), ("15M-untied", 1004), ("15M-gqa-untied", 1009)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("realistic")
    out = {}
    for shape, seed in MODELS:
        ckpt = write_checkpoint(str(root / f"{shape}-{seed}.pt"), SHAPES[shape], seed)
        v2 = str(root / f"{shape}-{seed}.v2.bin")
        with open_source("llama2c", ckpt) as src:
            export(src, [(2, v2)], quiet=True)
        out[shape] = (ckpt, v2)
    return out


@pytest.mark.parametrize("shape", [shape for shape, _ in MODELS])
def test_correct_15M_shaped_files_pass_in_both_arithmetics(models, consumer, shape):
    _, v2 = models[shape]
    q8 = c_check(v2, consumer)
    assert q8.arithmetic == "q8" and q8.passed, q8.failures
    assert q8.q8_sites == 6 * 4 + 1 and q8.q8_max_ratio_diff < TIE_WINDOW / 10
    f32 = c_check(v2, consumer, arithmetic="f32")
    assert f32.passed, f32.failures


def test_a_layout_disagreement_fails_the_c_check(models, consumer, tmp_path):
    _, v2 = models["15M-gqa"]
    toks = c_check(v2, consumer).tokens
    for name, edit in [("swap", swap_tensors("layers.3.attention.wk", "layers.3.attention.wv")),
                       ("scale", double_scale("layers.5.feed_forward.w2", 7))]:
        bad = copy_with(v2, str(tmp_path / f"{name}.v2.bin"), edit)
        result = CCheckResult(os.path.basename(bad), 2, "q8", toks, "cc")
        q8_compare(result, consumer, toks, bad, v2)  # C reads the changed bytes, Python the correct layout
        assert not result.passed, name


def test_a_corrupted_file_fails_verification(models, consumer, tmp_path):
    """Both readers see the corruption, so the C check agrees; the round trip against the
    checkpoint is what fails it."""
    ckpt, v2 = models["15M-untied"]
    bad = copy_with(v2, str(tmp_path / "bad.v2.bin"), swap_tensors("layers.1.feed_forward.w1", "layers.1.feed_forward.w3"))
    with open_source("llama2c", ckpt) as src:
        result = verify_output(bad, src, consumer=consumer)
    assert not result.correct and result.tensor.failures and result.c_check.passed
    assert np.isfinite(result.c_check.max_abs_diff)
