"""Deterministic PNG plots for the reports: one figure per model x version, three panels.

1. relative error ‖w−ŵ‖/‖w‖ of every quantized matrix, by layer, one line per tensor kind
   (embeddings and a separate classifier as points at either end);
2. histogram of the largest error of every Q8_0 group (verify.HIST_EDGES bins, all tensors);
3. histogram of the per-position KL divergence of the functional verification.

Tracked PNGs must not churn: the Agg backend, matplotlib's own defaults (no user matplotlibrc),
the bundled DejaVu Sans font, a fixed size and dpi, values rounded as the reports round them,
and no "Software" or date metadata in the file. Two renders of one report are byte-identical.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

from .model import LAYER_MATRICES

_KIND_LABELS = {
    "attention.wq": "wq", "attention.wk": "wk", "attention.wv": "wv", "attention.wo": "wo",
    "feed_forward.w1": "w1 (gate)", "feed_forward.w2": "w2 (down)", "feed_forward.w3": "w3 (up)",
}
_STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 8.0,
    "axes.titlesize": 9.0,
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


def _rel_err_panel(ax: Any, tensors: list[dict[str, Any]], n_layers: int) -> None:
    ax.set_title("relative error by layer and tensor kind")
    by_kind: dict[str, dict[int, float]] = {}
    ends: dict[str, float] = {}
    for t in tensors:
        if not t.get("rel_err"):
            continue
        m = _LAYER.fullmatch(t["name"])
        if m:
            by_kind.setdefault(m.group(2), {})[int(m.group(1))] = t["rel_err"]
        else:
            ends[t["name"]] = t["rel_err"]
    if not by_kind and not ends:
        _message(ax, "every tensor is bit-identical\nto the source (float32)")
        return
    for kind in LAYER_MATRICES:
        points = by_kind.get(kind)
        if points:
            layers = sorted(points)
            ax.plot(layers, [points[i] for i in layers], marker="o", markersize=3, linewidth=1, label=_KIND_LABELS[kind])
    if "tok_embeddings" in ends:
        ax.plot([-1], [ends["tok_embeddings"]], marker="s", linestyle="none", color="black", label="tok_embeddings")
    if "output" in ends:
        ax.plot([n_layers], [ends["output"]], marker="D", linestyle="none", color="dimgray", label="output")
    last = n_layers if "output" in ends else n_layers - 1  # "cls" only for a separate classifier
    ticks = list(range(-1, last + 1))
    if n_layers > 16:  # keep the axis legible for deep models
        keep = set(range(0, n_layers, max(1, n_layers // 8))) | {-1, last}
        ticks = [t for t in ticks if t in keep]
    labels = ["emb" if t == -1 else "cls" if t == n_layers else str(t) for t in ticks]
    ax.set_xticks(ticks, labels)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("‖w−ŵ‖ / ‖w‖")
    ax.grid(True, which="major", linewidth=0.3)
    ax.legend(fontsize=6, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)


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
    ax.set_ylabel("count")
    ax.grid(True, which="major", linewidth=0.3)
    if counts_arr[0] > 0:
        ax.annotate(first_label, xy=(np.sqrt(shown[0] * shown[1]), counts_arr[0]), fontsize=6, ha="center", va="bottom")


def _group_err_panel(ax: Any, tensors: list[dict[str, Any]], edges: list[float]) -> None:
    ax.set_title("largest error per Q8_0 group")
    hists = [t["group_err_hist"] for t in tensors if t.get("group_err_hist")]
    if not hists:
        _message(ax, "no quantized tensors")
        return
    total = np.sum(np.asarray(hists, dtype=np.int64), axis=0)
    if not total.any():
        _message(ax, "no groups")
        return
    _log_hist_panel(ax, total.tolist(), edges, "max |w−ŵ| in the group", f"< {edges[1]:.0e}")


def _kld_panel(ax: Any, functional: dict[str, Any] | None) -> None:
    ax.set_title("KL divergence per position (source ‖ file)")
    if not functional:
        _message(ax, "functional verification not run")
        return
    counts = functional["kld_hist"]
    if not any(counts[1:]):
        same = "logits identical to the source" if not functional["max_abs_dlogit"] else \
            f"KL divergence below {functional['kld_hist_edges'][1]:.0e}"
        _message(ax, f"{same}\nat all {functional['positions']} positions")
        return
    _log_hist_panel(ax, counts, functional["kld_hist_edges"], "KL divergence (nats)", "0")
    p = functional["kld_percentiles"]
    text = (f"mean {_sig(functional['kld_mean'])}\np99 {_sig(p['p99'])}\nmax {_sig(functional['kld_max'])}\n"
            f"same top {functional['same_top']:.1%}")
    ax.text(0.98, 0.97, text, ha="right", va="top", transform=ax.transAxes, fontsize=7,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "linewidth": 0.5})


def render_png(title: str, tensors: list[dict[str, Any]], n_layers: int, group_err_edges: list[float],
               functional: dict[str, Any] | None) -> bytes:
    """The report figure as PNG bytes; `tensors` carry verify's per-tensor statistics (rel_err,
    group_err_hist), `functional` the functional section of a report (rounded) or None."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # ignore any matplotlibrc of the user (the backend stays Agg)
        matplotlib.rcParams.update(_STYLE)
        fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.8), layout="constrained")
        try:
            fig.suptitle(title, fontsize=10)
            _rel_err_panel(axes[0], tensors, n_layers)
            _group_err_panel(axes[1], tensors, group_err_edges)
            _kld_panel(axes[2], functional)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", metadata={"Software": None})
        finally:
            plt.close(fig)
    return buf.getvalue()
