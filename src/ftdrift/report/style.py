"""How every figure looks, and how it is written: colours, matplotlib defaults, markers, legends.

Conventions
  * colours: Okabe-Ito for categories (the reference method = vermillion, the others in order),
    cividis for heatmaps, always one colour scale per figure;
  * a run's status is always visible: filled marker / solid line = completed,
    hollow marker / dashed line = stopped early, grey cross = failed or missing.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ftdrift.core import io  # noqa: E402
from ftdrift.report.frames import STATUS_NAME, method_label, method_order, reference_method  # noqa: E402

OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "bluish_green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish_purple": "#CC79A7",
}
# the reference method is vermillion; the others take these in the report's method order
METHOD_CYCLE = [OKABE_ITO[k] for k in ("blue", "bluish_green", "orange", "reddish_purple", "sky_blue", "black",
                                      "yellow")]
# for series that are not methods (batch sizes, metrics, modules): no vermillion/blue clash
CYCLE = [OKABE_ITO[k] for k in ("orange", "sky_blue", "bluish_green", "reddish_purple", "black", "yellow")]
HEATMAP_CMAP = "cividis"
MISSING_COLOR = "#999999"


plt.rcParams.update({
    "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 8.5, "figure.titlesize": 11.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "axes.prop_cycle": matplotlib.cycler(color=CYCLE), "image.cmap": HEATMAP_CMAP,
    # text stays text: a third of the size of glyph paths, and searchable in the browser
    "svg.hashsalt": "ftdrift", "svg.fonttype": "none", "figure.dpi": 100,
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
})


def method_color(method: str) -> str:
    """The method's colour: vermillion for the reference method, then METHOD_CYCLE in the report's
    method order (ftdrift.report.frames.configure_methods)."""
    if method == reference_method():
        return OKABE_ITO["vermillion"]
    others = [m for m in method_order() if m != reference_method()]
    index = others.index(method) if method in others else len(others) + sum(map(ord, method))
    return METHOD_CYCLE[index % len(METHOD_CYCLE)]


def save(fig, path) -> None:
    """Write `fig` as SVG (atomically, no date: the same figure is the same file) and close it."""
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None})
    plt.close(fig)


def fresh_dir(path) -> Path:
    """Fresh directory output (Snakemake's directory(): it must not be stale)."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def empty_axes(ax, message: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#555555",
            fontsize=10, wrap=True)


def empty_figure(path, title: str, message: str) -> None:
    """A placeholder SVG, so a report entry says why there is nothing to show."""
    fig, ax = plt.subplots(figsize=(6, 2.4), layout="constrained")
    fig.suptitle(title)
    empty_axes(ax, message)
    save(fig, path)


def panel_grid(n: int, ncols: int, width: float, height: float, **kw):
    """A figure with `n` panels, `ncols` to a row; returns (figure, the n axes)."""
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained", **kw)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


def marker_kw(method: str, status: str, size: float = 6) -> dict:
    """plot() keywords of one run's marker: the method's colour, filled / hollow / grey cross by status."""
    color = method_color(method)
    if status == "completed":
        return dict(marker="o", ms=size, mfc=color, mec=color, color=color, ls="none")
    if status == "stopped_early":
        return dict(marker="o", ms=size, mfc="white", mec=color, mew=1.6, color=color, ls="none")
    if status == "diverged":  # a result, not a failure: the method's colour, crossed
        return dict(marker="X", ms=size + 1, mfc=color, mec=color, color=color, ls="none")
    return dict(marker="X", ms=size + 1, mfc=MISSING_COLOR, mec=MISSING_COLOR, color=MISSING_COLOR, ls="none")


def status_legend_handles(statuses: Iterable[str], method: str | None = None) -> list:
    """Legend entries of the run statuses in `statuses`, drawn with `method`'s markers (the
    reference method's by default; the face and edge are grey either way)."""
    method = method or reference_method() or ""
    handles = []
    for status in ("completed", "stopped_early", "diverged", "failed"):
        if status in set(statuses):
            kw = marker_kw(method, status)
            kw["mfc"] = "white" if status == "stopped_early" else ("#555555" if status in ("completed", "diverged")
                                                                   else MISSING_COLOR)
            kw["mec"] = "#555555" if status != "failed" else MISSING_COLOR
            handles.append(Line2D([], [], label=f"seed run: {STATUS_NAME[status]}", **kw))
    return handles


def method_handles(methods: Iterable[str]) -> list:
    return [Line2D([], [], color=method_color(m), lw=2.5, label=method_label(m)) for m in methods]


def layer_ticks(ax, layers: Sequence[int], names: Mapping[int, str], axis: str = "x", max_ticks: int = 14):
    layers = list(layers)
    step = max(1, math.ceil(len(layers) / max_ticks))
    shown = layers[::step]
    if layers and layers[-1] not in shown:
        shown.append(layers[-1])
    labels = [short_layer_name(names.get(l, str(l)), l) for l in shown]
    if axis == "x":
        ax.set_xticks(shown, labels, rotation=45 if max(map(len, labels), default=0) > 4 else 0, ha="right"
                      if max(map(len, labels), default=0) > 4 else "center")
    else:
        ax.set_yticks(shown, labels)


def short_layer_name(name: str, layer: int) -> str:
    """'model.layers.3' -> 'block 3'; 'embeddings' stays."""
    text = str(name)
    if int(layer) == 0 and ("emb" in text.lower() or text in ("0", "")):
        return "embeddings"
    match = re.search(r"(\d+)\D*$", text)
    if match and not text.lower().startswith("emb"):
        return f"block {match.group(1)}" if len(text) > 10 or "layer" in text.lower() else text
    return text if len(text) <= 14 else text[-14:]


def shared_limits(matrices: Iterable) -> tuple[float, float]:
    """One (vmin, vmax) for all panels (`matrices`: array-likes, e.g. DataFrames); widened when flat so the colour bar stays readable."""
    values = np.concatenate([np.asarray(m, dtype=float).ravel() for m in matrices] or [np.array([])])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.005, hi + 0.005
    return lo, hi
