"""checks/numerics.py (arithmetic that is the same on every machine) against independent
references: Python's exact rationals and its libm, and the top-p selection of the evaluation
tokens against a plain full sort."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from llama2bin.checks import numerics
from llama2bin.checks.eval_tokens import _nucleus


def _ulps(got: np.ndarray, want: np.ndarray) -> float:
    return float((np.abs(got - want) / np.spacing(np.abs(want))).max())


def test_exp_log_sin_cos_are_within_a_few_ulp_of_libm():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-708, 709, 20000), rng.standard_normal(20000), rng.uniform(-1e-6, 1e-6, 1000)])
    assert _ulps(numerics.exp(x), np.array([math.exp(v) for v in x])) <= 2
    y = np.exp(rng.uniform(-700, 700, 20000))
    assert _ulps(numerics.log(y), np.array([math.log(v) for v in y])) <= 2
    a = np.concatenate([rng.uniform(-4, 4, 10000), rng.uniform(-2**19, 2**19, 10000)])
    sin, cos = numerics.sin_cos(a)
    assert np.abs(sin - np.sin(a)).max() <= 2**-51 and np.abs(cos - np.cos(a)).max() <= 2**-51


def test_special_values():
    got = numerics.exp(np.array([-np.inf, np.inf, np.nan, 0.0, -800.0, 800.0]))
    assert got[0] == 0 and got[1] == np.inf and np.isnan(got[2]) and got[3] == 1 and got[4] == 0 and got[5] == np.inf
    got = numerics.log(np.array([0.0, np.inf, -1.0, np.nan, 1.0, 5e-324]))
    assert got[0] == -np.inf and got[1] == np.inf and np.isnan(got[2]) and np.isnan(got[3]) and got[4] == 0
    assert got[5] == pytest.approx(math.log(5e-324), rel=1e-15)
    assert numerics.powers_of_ten(-2, 2, 2) == [0.1, 10**-0.5, 1.0, 10**0.5, 10.0]


@pytest.mark.parametrize("n,k,r", [(5, 288, 7), (3, 2048, 4), (4, 3, 6), (2, 64, 5)])
def test_matmul_is_the_exact_product_of_operands_kept_to_40_bits(n, k, r):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((n, k)) * np.exp(rng.uniform(-3, 3, (n, 1)))
    w = (rng.standard_normal((r, k)) * 0.02).astype(np.float32)
    exact = np.array([[float(sum(Fraction(a) * Fraction(float(b)) for a, b in zip(x[i], w[j], strict=True)))
                       for j in range(r)] for i in range(n)])
    scale = np.abs(x).max(axis=1, keepdims=True) * np.abs(w).max(axis=1) * k
    assert (np.abs(numerics.matmul(x, w) - exact) / scale).max() < 2.0**-40  # >= 40 bits kept, then exact


def test_matmul_does_not_depend_on_how_rows_are_grouped():
    """Each output element is a function of its own row of each operand: multiplying more rows
    at once, or other blocks of weights, never changes a bit (what lets a logit be reproduced)."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((9, 300)), rng.standard_normal((1000, 300)).astype(np.float32)
    whole = numerics.matmul(x, w)
    assert np.array_equal(numerics.matmul(x[3:4], w[10:500]), whole[3:4, 10:500])
    batched = numerics.matmul(np.stack([x, x[::-1]]), np.stack([w[:7], w[7:14]]))
    assert np.array_equal(batched[0], whole[:, :7]) and np.array_equal(batched[1], whole[::-1, 7:14])


def test_matmul_does_not_depend_on_blas_threads():
    """The slice products are exact, so BLAS's thread count (which changes a float32 product's
    bits) cannot change them: checks pin BLAS to one thread for cost, not for the results."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((256, 768)), rng.standard_normal((2048, 768)).astype(np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        one = numerics.matmul(x, w)
    with threadpool_limits(limits=2, user_api="blas"):
        two = numerics.matmul(x, w)
    assert np.array_equal(one, two)


def _full_sort_nucleus(probs: np.ndarray, top_p: float, u: float) -> int:
    """run.c's sample_topp done plainly: sort every candidate, walk the cumulative sum."""
    cand = np.flatnonzero(probs >= (1.0 - top_p) / max(len(probs) - 1, 1))
    order = cand[np.lexsort((cand, -probs[cand]))]
    cum = np.cumsum(probs[order])
    crossed = np.flatnonzero(cum > top_p)
    last = crossed[0] if crossed.size else len(order) - 1
    picked = np.flatnonzero(cum[: last + 1] > u * cum[last])
    return int(order[picked[0]] if picked.size else order[last])


def test_top_p_selection_without_sorting_the_vocabulary_picks_what_a_full_sort_picks():
    rng = np.random.default_rng(0)
    for trial in range(600):
        vocab = int(rng.choice([1, 2, 3, 10, 1000, 5000, 70000]))
        logits = [rng.standard_normal(vocab) * rng.uniform(0.1, 10),  # peaked to flat
                  np.round(rng.standard_normal(vocab) * 3),  # many exact ties
                  np.zeros(vocab),  # all equal
                  rng.standard_normal(vocab) * 1e-9,  # nearly flat: buckets narrowed to the last bits
                  np.concatenate([[20.0], rng.standard_normal(vocab - 1)])][trial % 5]  # one dominant token
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        u = float(rng.random()) if trial % 7 else 1 - 2**-53
        assert _nucleus(probs, 0.9, u) == _full_sort_nucleus(probs, 0.9, u), (trial, vocab)


def test_a_nan_logit_reaches_the_statistics():
    """A NaN logit of the file must show as NaN max |Δlogit| (the float32 check's `not <= tol`
    then fails it), not vanish in a running maximum."""
    from llama2bin.checks.metrics import compare_logits

    ref = np.random.default_rng(3).standard_normal((6, 40))
    got = ref.copy()
    got[4, 7] = np.nan
    assert np.isnan(compare_logits(ref, got)["max_abs_dlogit"])
    assert compare_logits(ref, ref.copy())["max_abs_dlogit"] == 0 and compare_logits(ref, ref.copy())["kld_max"] == 0


def test_equal_logits_give_zeros_without_a_sign():
    """A float32 output's statistics are exactly 0, never -0.0 (which SIMD maxima may return for
    equal zeros, and which the JSON would print)."""
    from llama2bin.checks.metrics import compare_logits

    ref = np.random.default_rng(4).standard_normal((5, 30))
    stats = compare_logits(ref, ref.copy(), np.arange(5))
    for key in ("max_abs_dlogit", "kld_mean", "kld_max", "delta_ppl", "rms_dp", *stats["kld_percentiles"]):
        value = stats["kld_percentiles"][key] if key.startswith("p") else stats[key]
        assert value == 0 and str(value) == "0.0", key


@pytest.mark.parametrize("special", [None, np.inf, -np.inf, np.nan])
def test_the_same_logits_object_gives_the_statistics_of_an_equal_copy(special):
    """The functional check passes the reference's own logits for an output proven identical
    (metrics._add_same_rows skips the file's side): the statistics are those of an equal copy, bit
    for bit, across blocks of positions and vocabulary, non-finite logits included."""
    from llama2bin.checks import metrics
    from llama2bin.checks.metrics import compare_logits

    ref = np.random.default_rng(5).standard_normal((40, 3000)) * 4
    if special is not None:
        ref[7, 1234] = special
    nxt = np.random.default_rng(6).integers(-1, 3000, 40)
    shortcuts = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "_PASS_ELEMENTS", 1 << 12)  # several passes per block
        mp.setattr(metrics, "BLOCK_ELEMENTS", 1 << 15)  # several blocks per row
        real = metrics._Positions._add_same_rows
        mp.setattr(metrics._Positions, "_add_same_rows", lambda self, *a: shortcuts.append(1) or real(self, *a))
        same = compare_logits(ref, ref, nxt)
        assert len(shortcuts) > 10
        calls = len(shortcuts)
        copy = compare_logits(ref, ref.copy(), nxt)
        assert len(shortcuts) == calls  # an equal copy takes the full path
    assert repr(same) == repr(copy)
