"""The q8 C check compares teacher-forced (checks/q8_forcing.py): every activation quantization
of the C run is checked against Python's, a one-step difference allowed only within TIE_WINDOW of a
tie, and Python continues from C's quantized activations.

The window rules are tested on constructed quantizations (no compiler needed); the detection on
real files, where C reads a copy whose layout differs from what Python reads."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import save_llama2c
from realistic_models import copy_with, double_scale, swap_tensors

from llama2bin.checks.ccheck import TOLERANCE, CCheckResult, c_check, q8_compare
from llama2bin.checks.eval_tokens import random_tokens
from llama2bin.checks.forward import quantize_activations
from llama2bin.checks.q8_forcing import SCALE_RTOL, TIE_WINDOW, TeacherForcing, dump_record
from llama2bin.demo import PRESETS, state_dict_arrays
from llama2bin.errors import Llama2binError
from llama2bin.formats.reader import BinFile
from llama2bin.formats.source_registry import open_source
from llama2bin.formats.writer import export
from llama2bin.model import ModelConfig

CFG = ModelConfig(dim=64, hidden_dim=128, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=32, max_seq_len=8,
                  shared_classifier=True)
GS = 32


def _site(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Python's (x, q, s) for activations x (positions, dim), as forward.py quantizes them."""
    q, s = quantize_activations(x.astype(np.float32), GS)
    return x.astype(np.float32), q, s


def _forcing(x: np.ndarray, q_c: np.ndarray, s_c: np.ndarray) -> TeacherForcing:
    """A TeacherForcing whose dump holds C's (x, q_c, s_c) at layer 1's attention input."""
    dump = np.zeros(x.shape[0], dtype=dump_record(CFG, GS))
    dump["l1s0"]["x"], dump["l1s0"]["q"], dump["l1s0"]["s"] = x, q_c, s_c
    return TeacherForcing(dump, CFG)


@pytest.fixture
def activations() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, CFG.dim)).astype(np.float32)


def test_identical_quantizations_pass_and_the_matmul_gets_cs(activations):
    x, q, s = _site(activations)
    forcing = _forcing(x, q.astype(np.int8), s)
    got_q, got_s = forcing("layers.1.attention.wk", x, q, s)
    assert np.array_equal(got_q, q) and np.array_equal(got_s, s) and got_q.dtype == q.dtype
    assert forcing.failure() is None and forcing.flips == 0 and forcing.sites == 1
    forcing("layers.1.attention.wv", x, q, s)  # wq/wk/wv share one quantization: compared once
    assert forcing.sites == 1


def _inner(x: np.ndarray, t: int, group: int) -> int:
    """An element of the group that is not its largest (moving it keeps the group's scale)."""
    return group * GS + int(np.argmin(np.abs(x[t, group * GS : (group + 1) * GS])))


def _near_tie(x: np.ndarray, s: np.ndarray, t: int, j: int, below_tie: float) -> np.ndarray:
    """x with element (t, j) moved to (k + 0.5 - below_tie) steps of its group's scale."""
    x = x.copy()
    step = float(s[t, j // GS])
    k = 7 + int(abs(x[t, j]) / step) % 90  # stays below the group's max (127 steps)
    x[t, j] = np.float32((k + 0.5 - below_tie) * step)
    return x


@pytest.mark.parametrize("below_tie", [TIE_WINDOW / 2, TIE_WINDOW / 100, 0.0])
def test_a_flip_within_the_window_of_a_tie_is_allowed_and_counted(activations, below_tie):
    x, q, s = _site(activations)
    j = _inner(x, 1, 0)
    x, q, s = _site(_near_tie(x, s, 1, j, below_tie))
    q_c = q.astype(np.int8)
    q_c[1, j] += 1 if q[1, j] == np.floor(x[1, j] / s[1, 0]) else -1  # C rounded the other way
    forcing = _forcing(x, q_c, s)
    got_q, _ = forcing("layers.1.attention.wq", x, q, s)
    assert forcing.failure() is None
    assert forcing.flips == 1 and forcing.max_flip_tie_distance <= below_tie + 1e-6
    assert got_q[1, j] == q_c[1, j]  # Python continues from C's rounding: the flip cannot propagate


def test_a_flip_away_from_a_tie_fails_naming_position_layer_site_and_element(activations):
    x, q, s = _site(activations)
    j = _inner(x, 2, 1)
    x, q, s = _site(_near_tie(x, s, 2, j, 3 * TIE_WINDOW))
    q_c = q.astype(np.int8)
    q_c[2, j] += 1 if q[2, j] == np.floor(x[2, j] / s[2, 1]) else -1
    forcing = _forcing(x, q_c, s)
    forcing("layers.1.attention.wq", x, q, s)
    msg = forcing.failure()
    assert msg and f"position 2, layer 1, attention input, element {j}:" in msg and "1 of 1 quantization points" in msg


def test_a_value_off_by_less_than_half_a_step_fails(activations):
    """C's q can still be a rounding of Python's x/s while C's x is off by 0.35 steps - far outside
    float rounding (a doubled weight scale whose neuron is nearly silent does this, measured on a
    42M-shaped model): the values before quantization are compared too, continuously."""
    x, q, s = _site(activations)
    j = _inner(x, 2, 1)
    x_c = x.copy()
    x_c[2, j] = x[2, j] + np.float32(0.35) * s[2, 1] * (1 if x[2, j] / s[2, 1] % 1 < 0.15 else -1)
    q_c, _ = quantize_activations(x_c, GS)
    assert abs(q_c[2, j] - x[2, j] / s[2, 1]) <= 0.5  # the q rule alone would pass it
    dump = np.zeros(x.shape[0], dtype=dump_record(CFG, GS))
    dump["l1s0"]["x"], dump["l1s0"]["q"], dump["l1s0"]["s"] = x_c, q_c, s
    forcing = TeacherForcing(dump, CFG)
    forcing("layers.1.attention.wq", x, q, s)
    assert forcing.failure() and f"element {j}:" in forcing.failure() and forcing.max_ratio_diff > 0.3


def test_a_two_step_difference_fails_even_at_a_tie(activations):
    x, q, s = _site(activations)
    j = _inner(x, 0, 0)
    x, q, s = _site(_near_tie(x, s, 0, j, 0.0))
    q_c = q.astype(np.int8)
    q_c[0, j] += 2
    forcing = _forcing(x, q_c, s)
    forcing("layers.1.attention.wq", x, q, s)
    assert forcing.failure() and f"element {j}:" in forcing.failure()


@pytest.mark.parametrize("factor,fails", [(1 + SCALE_RTOL / 10, False), (1 + 10 * SCALE_RTOL, True), (2.0, True),
                                          (np.nan, True)])
def test_activation_scales_must_agree(activations, factor, fails):
    x, q, s = _site(activations)
    s_c = s.copy()
    s_c[1, 1] = np.float32(s_c[1, 1] * factor)
    forcing = _forcing(x, q.astype(np.int8), s_c)
    forcing("layers.1.attention.wq", x, q, s)
    assert (forcing.failure() is not None) == fails
    if fails:
        assert "position 1, layer 1, attention input, group 1" in forcing.failure()


def test_the_bounds_hold_in_float64_too(activations):
    """Whether Python computes in float32 or float64, the comparison is the same (float64)."""
    x, q, s = _site(activations)
    forcing = _forcing(x, q.astype(np.int8), s)
    forcing("layers.1.attention.wq", x.astype(np.float64), q.astype(np.float64), s.astype(np.float64))
    assert forcing.failure() is None and forcing.max_ratio_diff == 0


# ---- real files: C reads one layout, Python another ---------------------------------------


@pytest.fixture(scope="module")
def untied_v2(tmp_path_factory):
    import dataclasses

    root = tmp_path_factory.mktemp("q8")
    preset = dataclasses.replace(PRESETS["untied"], n_layers=3)
    arrays = state_dict_arrays(preset)
    args = {"dim": preset.dim, "n_layers": preset.n_layers, "n_heads": preset.n_heads, "n_kv_heads": preset.n_kv_heads,
            "vocab_size": preset.vocab_size, "multiple_of": preset.multiple_of, "max_seq_len": preset.max_seq_len,
            "dropout": 0.0}
    ckpt = save_llama2c(str(root / "m.pt"), arrays, args, tie=False)
    path = str(root / "m.v2.bin")
    with open_source("llama2c", ckpt) as src:
        export(src, [(2, path)], quiet=True)
    return path


def test_the_correct_file_passes_with_the_q8_fields_recorded(untied_v2, consumer):
    result = c_check(untied_v2, consumer)
    assert result.passed, result.failures
    assert result.tolerance == TOLERANCE["q8"] * max(1.0, result.max_abs_logit)
    assert result.q8_sites == 3 * 4 + 1 and result.tie_window == TIE_WINDOW and result.scale_rtol == SCALE_RTOL
    assert result.q8_max_ratio_diff < TIE_WINDOW and result.q8_untethered_max_abs_diff is not None
    assert CCheckResult.from_json(result.to_json()) == result


@pytest.mark.parametrize("mode", ["f32", "q8"])
def test_the_consumer_s_binary_logits_are_its_printed_ones(untied_v2, consumer, mode):
    """What c_check reads (--logits binary) is, bit for bit, what the consumer prints for a person."""
    import subprocess

    tokens = ["1", "7", "3", "12"]
    binary = consumer.logits(untied_v2, [int(t) for t in tokens], mode)
    text = subprocess.run([consumer.exe, "--mode", mode, untied_v2, *tokens], capture_output=True, text=True, check=True)
    printed = np.array([line.split() for line in text.stdout.splitlines()], dtype=np.float64).astype(np.float32)
    assert binary.shape == printed.shape and binary.shape[0] == len(tokens)
    assert np.array_equal(binary.view(np.uint32), printed.view(np.uint32))


@pytest.mark.parametrize("edit,where", [
    (swap_tensors("layers.0.attention.wq", "layers.1.attention.wq"), "layer 0, attention output"),
    (swap_tensors("layers.1.feed_forward.w1", "layers.1.feed_forward.w3"), "layer 1, ffn hidden"),
    (swap_tensors("layers.2.feed_forward.w2", "layers.0.feed_forward.w2"), "layer 1, attention input"),  # w2 of layer 0
    (double_scale("layers.2.attention.wo", 0), "layer 2, ffn input"),
])
def test_a_layout_disagreement_fails_at_the_first_quantization_after_it(untied_v2, consumer, tmp_path, edit, where):
    """C reads a copy whose bytes differ from the layout Python reads (a writer and reader sharing a
    mistake, which the round trip cannot see): the q8 check fails and names where it surfaced."""
    bad = copy_with(untied_v2, str(tmp_path / "bad.v2.bin"), edit)
    with BinFile(untied_v2) as bf:
        toks = random_tokens(bf.config.vocab_size, bf.config.max_seq_len, 1, 16).sequences[0]
    result = CCheckResult("bad.v2.bin", 2, "q8", toks, "cc")
    q8_compare(result, consumer, toks, bad, untied_v2)
    assert not result.passed
    assert "quantization points" in result.failures[0] and f", {where}, " in result.failures[0], result.failures


def test_a_classifier_disagreement_fails_on_the_logits(untied_v2, consumer, tmp_path):
    """The classifier is read after the last quantization point: the logits catch it, tightly."""
    with BinFile(untied_v2) as bf:
        toks = random_tokens(bf.config.vocab_size, bf.config.max_seq_len, 1, 16).sequences[0]
        row = toks[0]  # any row: every classifier row makes a logit
        group = row * bf.config.dim // bf.group_size
    bad = copy_with(untied_v2, str(tmp_path / "bad.v2.bin"), double_scale("output", group))
    result = CCheckResult("bad.v2.bin", 2, "q8", toks, "cc")
    q8_compare(result, consumer, toks, bad, untied_v2)
    assert len(result.failures) == 1 and "logits differ" in result.failures[0]
    assert os.path.exists(untied_v2)


def test_auto_checks_in_f32_a_v1_whose_group_size_runq_cannot_run(consumer, tmp_path):
    """stories42M's hidden_dim 1376 is no multiple of 64, the group size v1 keeps (v2 backs off to
    32): runq.c's grouped matmul cannot run it, so auto checks that v1 in float32, not q8 (an error)."""
    import dataclasses

    preset = dataclasses.replace(PRESETS["mha"], multiple_of=4)  # hidden_dim 172, as stories260K
    args = {"dim": preset.dim, "n_layers": preset.n_layers, "n_heads": preset.n_heads, "n_kv_heads": None,
            "vocab_size": preset.vocab_size, "multiple_of": 4, "max_seq_len": preset.max_seq_len, "dropout": 0.0}
    ckpt = save_llama2c(str(tmp_path / "m.pt"), state_dict_arrays(preset), args)
    v1, v2 = str(tmp_path / "m.v1.bin"), str(tmp_path / "m.v2.bin")
    with open_source("llama2c", ckpt) as src:
        export(src, [(1, v1), (2, v2)], quiet=True)
    r1, r2 = c_check(v1, consumer), c_check(v2, consumer)
    assert (r1.arithmetic, r2.arithmetic) == ("f32", "q8") and r1.passed and r2.passed, (r1.failures, r2.failures)
    with pytest.raises(Llama2binError, match="not a multiple of group size"):
        c_check(v1, consumer, arithmetic="q8")
