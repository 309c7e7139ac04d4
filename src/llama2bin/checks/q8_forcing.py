"""Teacher-forced comparison of runq.c-style q8 arithmetic between the C consumer and Python.

In q8 arithmetic every matmul input is quantized to Q8_0 (q = round(x / scale), scale = max|x| /
127 per group). C and Python sum in different orders, so their activations differ by float
rounding; an activation that lands within that rounding of a half-integer step rounds one way in
C and the other in Python, and the flip then propagates to the logits (~1e-2 on stories15M-shaped
models, ~1e-7 without one). So the logits alone cannot tell a correct file from a wrong one.

Instead the C consumer dumps (`--dump`) the (x, scales, q) of every activation quantization it
performs, and the Python forward, through a `forward.Q8Hook`, at each of the same points:
- quantizes its own activations and checks C's against them: every group's scale equal within
  SCALE_RTOL (relative); every element's value before quantization equal within TIE_WINDOW steps,
  |x_C/s_C - x_Py/s_Py| <= TIE_WINDOW (continuous: no ties); and every element's q a rounding of
  Python's x / scale, |q_C - x_Py/s_Py| <= 0.5 + TIE_WINDOW - so q may differ from Python's own
  by exactly 1, and only where Python's x/s lies within TIE_WINDOW of a half-integer (a tie);
- then continues with C's (q, scales), so a legitimate flip never propagates. The final logits
  then agree to float rounding of the scaled group sums and are compared with the float32 tolerance.

Each check involves the weights read since the previous quantization point (wq/wk/wv through the
attention output, wo and ffn_norm through the ffn input, w1/w3 through the hidden, w2 and the next
norm through the next layer's input, the classifier through the logits), so a weight the C side
maps differently from Python shows up at the first site after it, named by position, layer, site
and element. The windows are measured (bench/ccheck_rates.py, bench/ccheck_rates.md): they bound C's
float32 rounding against Python's in units of one quantization step, with a wide margin.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import Llama2binError
from ..model import ModelConfig

MAGIC = b"L2BQDMP1"
HEADER_BYTES = 8 + 5 * 4
# The four quantization points of a layer, in the consumer's order, then the final norm.
SITES = ("attention input", "attention output", "ffn input", "ffn hidden")
FINAL = "final norm"
_SITE_OF_KIND = {"attention.wq": 0, "attention.wk": 0, "attention.wv": 0, "attention.wo": 1,
                 "feed_forward.w1": 2, "feed_forward.w3": 2, "feed_forward.w2": 3}

# |q_C - x_Py / s_Py| <= 0.5 + TIE_WINDOW for every element (x/s in quantization steps), and
# |s_C - s_Py| <= SCALE_RTOL * max(s_C, s_Py) for every group: a scale that close moves no
# element's x/s (at most 127 steps) by more than TIE_WINDOW. Both bound C's float32 rounding
# against Python's; measured on 100+ models of 15M-110M shapes, random and trained
# (bench/ccheck_rates.md), it stays 50x or more inside them (x/s: 1.9e-4 steps; scales: 9e-7).
TIE_WINDOW = 0.01
SCALE_RTOL = TIE_WINDOW / 127


def _site_dtype(n: int, gs: int) -> list[tuple[str, str, tuple[int]]]:
    return [("x", "<f4", (n,)), ("s", "<f4", (n // gs,)), ("q", "i1", (n,))]


def dump_record(cfg: ModelConfig, group_size: int) -> np.dtype:
    """One position of a dump: fields l{layer}s{site} (site index into SITES) and `final`, each
    with x (float32 before quantization), s (float32 group scales) and q (int8)."""
    fields = []
    for layer in range(cfg.n_layers):
        for site in range(len(SITES)):
            fields.append((f"l{layer}s{site}", _site_dtype(cfg.hidden_dim if site == 3 else cfg.dim, group_size)))
    fields.append(("final", _site_dtype(cfg.dim, group_size)))
    return np.dtype(fields)


def read_dump(path: str, cfg: ModelConfig, group_size: int, n_positions: int) -> np.ndarray:
    """The consumer's --dump as a structured array [position] of dump_record (the layout is
    documented in consumer.c)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
        if len(head) != HEADER_BYTES or head[:8] != MAGIC:
            raise Llama2binError(f"{path}: not a consumer --dump file")
        got = tuple(int(v) for v in np.frombuffer(head[8:], dtype="<i4"))
        want = (n_positions, cfg.n_layers, cfg.dim, cfg.hidden_dim, group_size)
        if got != want:
            raise Llama2binError(f"{path}: the C consumer dumped (positions, layers, dim, hidden_dim, group_size) "
                                 f"{got}, expected {want}")
        record = dump_record(cfg, group_size)
        size, expect = os.fstat(f.fileno()).st_size, HEADER_BYTES + record.itemsize * n_positions
        if size != expect:
            raise Llama2binError(f"{path}: the C consumer's dump has {size} bytes, expected {expect}")
        return np.fromfile(f, dtype=record, count=n_positions)


class TeacherForcing:
    """A forward.Q8Hook: checks each of Python's activation quantizations against C's dumped one,
    then hands C's (q, scales) to the matmul. Findings accumulate in the attributes below."""

    def __init__(self, dump: np.ndarray, cfg: ModelConfig, tie_window: float = TIE_WINDOW,
                 scale_rtol: float = SCALE_RTOL):
        self.dump = dump
        self.cfg = cfg
        self.tie_window = tie_window
        self.scale_rtol = scale_rtol
        self._done: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.sites = 0  # quantization points compared (x positions)
        self.bad_sites = 0  # of which at least one group or element was out of bounds
        self.bad_elements = 0
        self.bad_scales = 0
        self.first_failure: str | None = None
        self.flips = 0  # elements where C's q is the other rounding of a near-tie
        self.max_flip_tie_distance: float | None = None  # largest distance from the tie of a flip (steps)
        self.max_ratio_diff = 0.0  # largest |x_C/s_C - x_Py/s_Py| (steps), diagnostics
        self.max_scale_rel_diff = 0.0

    def _site(self, name: str) -> tuple[str, str]:
        """(dump field, description) of the quantization feeding tensor `name`."""
        if name in ("tok_embeddings", "output"):
            return "final", FINAL
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "layers" or parts[2] not in _SITE_OF_KIND:
            raise Llama2binError(f"q8 teacher forcing: no quantization point for tensor {name}")
        site = _SITE_OF_KIND[parts[2]]
        return f"l{parts[1]}s{site}", f"layer {parts[1]}, {SITES[site]}"

    def __call__(self, name: str, x: np.ndarray, q: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key, where = self._site(name)
        if key not in self._done:  # wq/wk/wv (and w1/w3) share one quantization, compared once
            rec = self.dump[key]
            if rec["x"].shape != x.shape:
                raise Llama2binError(f"q8 teacher forcing: {where}: C dumped {rec['x'].shape}, Python has {x.shape}")
            self._compare(where, x, q, scales, rec)
            self._done[key] = (rec["q"].astype(q.dtype), rec["s"].astype(scales.dtype))
        return self._done[key]

    def _compare(self, where: str, x: np.ndarray, q: np.ndarray, scales: np.ndarray, rec: np.ndarray) -> None:
        # Compared in float64 whatever Python computes in: the bounds are about C's float32 rounding.
        n_pos, n = x.shape
        gs = n // scales.shape[1]
        s_py = scales.astype(np.float64)
        s_c = rec["s"].astype(np.float64)
        per_elem = np.repeat(s_py, gs, axis=1)
        ratio_py = np.divide(x.astype(np.float64), per_elem, out=np.zeros((n_pos, n)), where=per_elem > 0)
        q_c = rec["q"].astype(np.float64)
        excess = np.abs(q_c - ratio_py) - 0.5  # > 0: q_C is not the nearest integer of x_Py / s_Py
        bad_q = excess > self.tie_window
        bad_s = ~(np.abs(s_c - s_py) <= self.scale_rtol * np.maximum(s_c, s_py))  # NaN is bad too
        flipped = (q_c != q.astype(np.float64)) & ~bad_q
        self.sites += 1
        self.flips += int(flipped.sum())
        if flipped.any():
            d = float(np.maximum(excess[flipped], 0.0).max())
            self.max_flip_tie_distance = max(d, self.max_flip_tie_distance or 0.0)
        # C's values before quantization, in steps of its own scales, against Python's: float rounding
        # apart, continuous (no ties), so a change too small to move a q (a wrong weight whose effect
        # stays under half a step) is still seen. Only where both scales are non-zero (else bad_s).
        both = (s_c > 0) & (s_py > 0)
        per_c = np.repeat(np.where(both, s_c, 1.0), gs, axis=1)
        ratio_diff = np.where(np.repeat(both, gs, axis=1), np.abs(rec["x"].astype(np.float64) / per_c - ratio_py), 0.0)
        bad_x = ~(ratio_diff <= self.tie_window)  # NaN is bad too
        if both.any():
            rel = np.abs(s_c - s_py)[both] / s_py[both]
            self.max_scale_rel_diff = max(self.max_scale_rel_diff, float(np.nan_to_num(rel, nan=np.inf).max()))
            self.max_ratio_diff = max(self.max_ratio_diff, float(np.nan_to_num(ratio_diff, nan=np.inf).max()))
        bad_q |= bad_x
        if not (bad_q.any() or bad_s.any()):
            return
        self.bad_sites += 1
        self.bad_elements += int(bad_q.sum())
        self.bad_scales += int(bad_s.sum())
        if self.first_failure is None:
            if bad_s.any():
                t, g = (int(i) for i in np.argwhere(bad_s)[0])
                self.first_failure = (f"position {t}, {where}, group {g}: C's activation scale {s_c[t, g]:.9g}, "
                                      f"Python's {s_py[t, g]:.9g}")
            else:
                t, j = (int(i) for i in np.argwhere(bad_q)[0])
                self.first_failure = (f"position {t}, {where}, element {j}: C's q {int(q_c[t, j])} and x/scale "
                                      f"{float(rec['x'][t, j]) / float(s_c[t, j // gs] or 1):.4f}, Python's x/scale "
                                      f"{ratio_py[t, j]:.4f}")

    def failure(self) -> str | None:
        """One line for the check's failures, or None when every quantization point agreed."""
        if self.first_failure is None:
            return None
        return (f"C consumer's q8 activations differ from the Python reference at {self.bad_sites} of {self.sites} "
                f"quantization points ({self.bad_elements} elements, {self.bad_scales} group scales), first at "
                f"{self.first_failure} (allowed: scales within {self.scale_rtol:.3g} relative, x/scale within "
                f"{self.tie_window:g}, q a step apart only within {self.tie_window:g} of a tie)")
