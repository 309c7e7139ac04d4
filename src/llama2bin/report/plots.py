"""Deterministic PNG figures for the reports.

- `render_model_png`: one row per distinct quantization of a model (outputs holding identical
  weights, like v1 and v2, share a row), three panels each:
  1. relative error ‖w−ŵ‖/‖w‖ of every quantized matrix, by layer, one line per tensor kind
     (embeddings and a separate classifier as points at either end);
  2. histogram of the largest error of every Q8_0 group (all tensors);
  3. histogram of the per-position KL divergence of the functional verification.
  Float32 outputs are exact and are said so once, in the tables: they get no panel.
- `render_tradeoff_png`: every distinct quantization of every model, bits per weight against
  quality (ΔPPL when measured, else mean KL divergence).

Tracked PNGs must not churn: the Agg backend, matplotlib's own defaults (no user matplotlibrc),
the bundled DejaVu Sans font, a fixed size and dpi, values rounded as the reports round them,
and no "Software" or date metadata in the file. Two renders of one report are byte-identical.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

import numpy as np

from ..checks.tensor import TensorStats
from ..model import LAYER_MATRICES
from .record_types import FunctionalSection, Quantization

_KIND_LABELS = {
    "attention.wq": "wq", "attention.wk": "wk", "attention.wv": "wv", "attention.wo": "wo",
    "feed_forward.w1": "w1 (gate)", "feed_forward.w2": "w2 (down)", "feed_forward.w3": "w3 (up)",
}
# Sized for the Snakemake report's content frame (~1000 px): the figure is drawn at that width
# so 10-point text stays 10 points on screen.
_WIDTH_IN = 10.0
_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 10.0,
    "axes.titlesize": 10.5,
    "legend.fontsize": 9.0,
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "path.simplify": False,
    "svg.hashsalt": "llama2bin",
}
_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def _sig(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}"


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _rel_err_panel(ax: Any, tensors: list[TensorStats], n_layers: int) -> None:
    ax.set_title("relative error by layer")
    by_kind: dict[str, dict[int, float]] = {}
    ends: dict[str, float] = {}
    for t in tensors:
        if not t.rel_err:
            continue
        m = _LAYER.fullmatch(t.name)
        if m:
            by_kind.setdefault(m.group(2), {})[int(m.group(1))] = t.rel_err
        else:
            ends[t.name] = t.rel_err
    for kind in LAYER_MATRICES:
        points = by_kind.get(kind)
        if points:
            layers = sorted(points)
            ax.plot(layers, [points[i] for i in layers], marker="o", markersize=3, linewidth=1, label=_KIND_LABELS[kind])
    if "tok_embeddings" in ends:
        ax.plot([-1], [ends["tok_embeddings"]], marker="s", linestyle="none", color="black", label="embeddings")
    if "output" in ends:
        ax.plot([n_layers], [ends["output"]], marker="D", linestyle="none", color="dimgray", label="classifier")
    last = n_layers if "output" in ends else n_layers - 1  # "cls" only for a separate classifier
    ticks = list(range(-1, last + 1))
    if n_layers > 8:  # keep the axis legible for deep models: ~8 labels, none touching the ends
        step = math.ceil(n_layers / 6)
        ticks = [-1, *(t for t in range(step, last, step) if last - t > step // 2), last]
    labels = ["emb" if t == -1 else "cls" if t == n_layers else str(t) for t in ticks]
    ax.set_xticks(ticks, labels)
    values = [v for points in by_kind.values() for v in points.values()] + list(ends.values())
    if max(values) >= 10 * min(values):
        ax.set_yscale("log")
        # short labels (0.01, 0.02, 0.05): matplotlib's "6×10^-2" minor labels do not fit the margin
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_minor_formatter(lambda v, _: f"{v:.3g}" if f"{v:.1e}"[0] in "25" else "")
        ax.set_ylabel("‖w−ŵ‖ / ‖w‖")
    else:  # Q8_0 errors usually lie within one decade, where a log axis shows one or two ticks
        _label_with_power(ax, "‖w−ŵ‖ / ‖w‖", math.floor(math.log10(max(values))))
    ax.set_xlabel("layer")
    ax.grid(True, which="major", linewidth=0.3)


def _label_with_power(ax: Any, label: str, power: int) -> None:
    """Y tick labels divided by 10**power, which the axis label states: not matplotlib's "1e-3"
    offset above the axis, where the panel title is."""
    ax.yaxis.set_major_formatter(lambda v, _: f"{v / 10.0**power:.6g}")
    ax.set_ylabel(f"{label} (×10$^{{{power}}}$)")


def _log_hist_panel(ax: Any, counts: list[int], edges: list[float], xlabel: str, first_label: str) -> None:
    """A histogram over log-spaced bins whose first bin is [0, edges[1]) (zeros and tiny values)."""
    counts_arr = np.asarray(counts, dtype=np.float64)
    shown = np.asarray(edges, dtype=np.float64).copy()
    shown[0] = shown[1] / (shown[2] / shown[1])  # draw the [0, e1) bin one decade-step left of e1
    nonzero = np.flatnonzero(counts_arr)
    lo, hi = max(0, nonzero[0] - 1), min(len(counts_arr), nonzero[-1] + 2)
    ax.stairs(counts_arr[lo:hi], shown[lo : hi + 1], fill=True, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    if counts_arr.max() >= 1e6:  # seven digits and more: a power of ten in the label
        _label_with_power(ax, "count", math.floor(math.log10(counts_arr.max())))
    else:
        ax.set_ylabel("count")
    ax.grid(True, which="major", linewidth=0.3)
    if counts_arr[0] > 0:
        ax.annotate(first_label, xy=(np.sqrt(shown[0] * shown[1]), counts_arr[0]), ha="center", va="bottom")


def _group_err_panel(ax: Any, hists: list[list[int]], edges: list[float]) -> None:
    ax.set_title("largest error per Q8_0 group")
    total = np.sum(np.asarray(hists, dtype=np.int64), axis=0) if hists else np.zeros(1)
    if not total.any():
        _message(ax, "no Q8_0 groups")  # only reachable for a malformed report: quantized rows have groups
        return
    _log_hist_panel(ax, total.tolist(), edges, "max |w−ŵ| in the group", f"< {edges[1]:.0e}")


def _kld_panel(ax: Any, functional: FunctionalSection | None) -> None:
    ax.set_title("KL divergence per position")
    if not functional:
        _message(ax, "functional verification\nnot run")
        return
    counts = functional["kld_hist"]
    if not any(counts[1:]):
        _message(ax, f"KL divergence below {functional['kld_hist_edges'][1]:.0e}\n"
                     f"at all {functional['positions']} positions")
        return
    _log_hist_panel(ax, counts, functional["kld_hist_edges"], "KL(source ‖ file), nats", "0")
    p = functional["kld_percentiles"]
    text = (f"mean {_sig(functional['kld_mean'])}\np99 {_sig(p['p99'])}\nmax {_sig(functional['kld_max'])}\n"
            f"same top {functional['same_top']:.1%}")
    ax.text(0.98, 0.97, text, ha="right", va="top", transform=ax.transAxes, fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "linewidth": 0.5})


@contextmanager
def _figure_context() -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # ignore any matplotlibrc of the user (the backend stays Agg)
        matplotlib.rcParams.update(_STYLE)
        yield plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _draw(plt: Any, size: tuple[float, float], draw: Callable[[Any], None], layout: str | None = "constrained") -> bytes:
    fig = plt.figure(figsize=size, layout=layout)
    try:
        draw(fig)
        return _png(fig)
    finally:
        plt.close(fig)


# A model figure's rows have one fixed geometry (inches, at 10-point text), sized for the widest
# labels the panels get: six-digit counts (beyond, and for the errors, a power of ten goes into the
# axis label). Not matplotlib's constrained layout: measuring every label to place the axes was
# half of a report's CPU time (bench/issue21.md), and fixed panels line up from figure to figure.
_ROW_IN = 3.9
_LEFT_IN, _RIGHT_IN, _GAP_IN = 0.8, 0.1, 0.95  # y label and tick labels left of each panel
_TOP_IN, _BOTTOM_IN = 0.6, 0.86  # row title and panel titles above; ticks, x label and legend below
_ROW_GRID = {
    "left": _LEFT_IN / _WIDTH_IN, "right": 1 - _RIGHT_IN / _WIDTH_IN,
    "top": 1 - _TOP_IN / _ROW_IN, "bottom": _BOTTOM_IN / _ROW_IN,
    "wspace": _GAP_IN / ((_WIDTH_IN - _LEFT_IN - _RIGHT_IN - 2 * _GAP_IN) / 3),
}


class FigureRow(TypedDict):
    """One distinct quantization in a model's figure."""

    title: str
    tensors: list[TensorStats]  # verify's per-tensor statistics, rel_err rounded as the reports round it
    functional: FunctionalSection | None  # the rounded functional section of a report


def render_model_png(model: str, rows: list[FigureRow], n_layers: int, group_err_edges: list[float]) -> bytes:
    """The figure of one model: one row of panels per distinct quantization."""
    if not rows:
        raise ValueError("a model figure needs at least one quantized output")
    with _figure_context() as plt:

        def draw(fig: Any) -> None:
            subfigs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0]
            for sub, row in zip(subfigs, rows, strict=True):
                sub.suptitle(f"{model}: {row['title']}", fontsize=11, fontweight="bold", y=1 - 0.1 / _ROW_IN)
                axes = sub.subplots(1, 3, gridspec_kw=_ROW_GRID)
                _rel_err_panel(axes[0], row["tensors"], n_layers)
                hists = [t.group_err_hist for t in row["tensors"] if t.group_err_hist]
                _group_err_panel(axes[1], hists, group_err_edges)
                _kld_panel(axes[2], row["functional"])
                handles, labels = axes[0].get_legend_handles_labels()
                sub.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=min(9, len(labels)),
                           frameon=False, handlelength=1.5, columnspacing=1.0)

        return _draw(plt, (_WIDTH_IN, _ROW_IN * len(rows)), draw, layout=None)


# Quality axes of the trade-off figure, best measure first: (report key, axis label, log scale).
_QUALITY_AXES = (
    ("delta_ppl", "ΔPPL (file − source perplexity)", False),
    ("kld_mean", "mean KL divergence (nats)", True),
)


def tradeoff_axis(points: list[Quantization]) -> tuple[str, str, bool]:
    """The quality measure every point has: ΔPPL when all were measured with it, else mean KLD."""
    for key, label, log in _QUALITY_AXES:
        if points and all((f := p["functional"]) and f[key] is not None for p in points):  # type: ignore[literal-required]
            return key, label, log
    return _QUALITY_AXES[-1]


def render_tradeoff_png(points: list[Quantization]) -> bytes:
    """Size against quality: one marker per distinct quantization of every model. Each point has
    `model`, `label` ('v1 = v2'), `bits_per_weight` and `functional` (a rounded report section).
    Float32 outputs are exact (zero loss, no point on a log axis): the tables say so."""
    key, ylabel, log = tradeoff_axis(points)
    with _figure_context() as plt:

        def draw(fig: Any) -> None:
            ax = fig.subplots()
            ax.set_title("size against quality, every quantized output")
            models = sorted({p["model"] for p in points})
            colors = plt.get_cmap("tab10")
            markers = "osD^vP*Xh<>"
            for i, m in enumerate(models):
                mine = [p for p in points if p["model"] == m]
                xs = [p["bits_per_weight"] for p in mine]
                ys = [p["functional"][key] for p in mine]  # type: ignore[index,literal-required]
                ax.plot(xs, ys, linestyle="none", marker=markers[i % len(markers)], markersize=8,
                        color=colors(i % 10), label=m)
                for p, x, y in zip(mine, xs, ys, strict=True):
                    ax.annotate(p["label"], (x, y), xytext=(6, 4), textcoords="offset points", fontsize=9)
            if log:
                ax.set_yscale("log")
            else:  # ΔPPL: the source itself is the zero line; a noisy small model may fall below it
                ax.axhline(0.0, color="gray", linewidth=0.8, linestyle="--")
            ax.margins(x=0.25, y=0.25)
            ax.set_xlabel("bits per weight (file size × 8 / parameters)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="major", linewidth=0.3)
            ax.legend(title="model", loc="best")

        if not points:
            raise ValueError("a trade-off figure needs at least one quantized output")
        return _draw(plt, (_WIDTH_IN * 0.75, 4.8), draw)


def render_notice_png(text: str) -> bytes:
    """A small figure holding one sentence: what a declared figure file contains when there is
    nothing to plot (the pages do not show it)."""
    with _figure_context() as plt:

        def draw(fig: Any) -> None:
            fig.text(0.5, 0.5, text, ha="center", va="center")

        return _draw(plt, (_WIDTH_IN * 0.6, 0.6), draw)
