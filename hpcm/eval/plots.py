"""R-D plots of CompressAI-style results (``{"bpp": [...], "psnr-rgb": [...], ...}``).

Used by ``evaluate.py`` (``rd_psnr.png``, ``rd_msssim.png`` beside its JSON) and by the demo run
(the model against JPEG). matplotlib is imported here, on first use, with the Agg canvas: no
display is needed and pyplot's global state is left alone.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# File stem and axis title per result key; MS-SSIM is drawn in dB, as CompressAI's plots do.
PLOT_METRICS = {"psnr-rgb": ("psnr", "PSNR (dB)"), "ms-ssim-db": ("msssim", "MS-SSIM (dB)")}
# Curves whose name contains one of these are traditional codecs: dashed, as in CompressAI.
TRADITIONAL = ("JPEG", "WebP", "BPG", "HM", "VTM", "AV1")

# One colour per optimizer in every figure of the suite (evaluate.py's and bdrate.py's R-D plots,
# the effective-lambda plot of hpcm.eval.trade_off): fixed for the project's optimizers (the
# colours of matplotlib's cycle, C0 = tab10 blue by default, in name order), and for any other
# name (anchors, JPEG, new optimizers) one of the colours left over, chosen by a hash of the name
# and, where another such name of the same figure holds it, the next free one (curve_colors).
OPTIMIZER_COLORS = {
    "adam": "C0",
    "adam_cautious": "C1",
    "balanced": "C2",
    "balanced_qp": "C3",
    "famo_adam": "C4",
    "balanced_hier": "C5",
}
OTHER_COLORS = ("C6", "C7", "C8", "C9")
# evaluate.py names the curve of an MS-SSIM-trained optimizer OPTIMIZER + this suffix.
MSSSIM_GROUP_SUFFIX = "-msssim"
# Markers of the curves of one group in an R-D plot (its seeds), which share the group's colour.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def optimizer_color(name: str) -> str:
    """The colour of optimizer (curve group) ``name`` in every figure; ``adam-msssim`` (evaluate.py's
    MS-SSIM group) gets ``adam``'s. A name outside :data:`OPTIMIZER_COLORS` gets its preferred
    colour, which :func:`curve_colors` keeps unless another name of the figure holds it."""
    known = OPTIMIZER_COLORS.get(name.removesuffix(MSSSIM_GROUP_SUFFIX))
    return known or OTHER_COLORS[zlib.crc32(name.encode()) % len(OTHER_COLORS)]


def curve_colors(names: Iterable[str]) -> dict[str, str]:
    """The colour of each name of one figure: :func:`optimizer_color`'s, except that names outside
    :data:`OPTIMIZER_COLORS` do not share one (taken in name order, each from its preferred colour
    on through :data:`OTHER_COLORS`, then the table's colours that no name of the figure holds).
    The same names give the same colours in every figure; a name of the table keeps its colour
    whatever else the figure holds."""
    names = sorted(set(names))
    colors = {name: optimizer_color(name) for name in names}
    taken = {color for color in colors.values() if color not in OTHER_COLORS}
    spare = [color for color in OPTIMIZER_COLORS.values() if color not in taken]
    for name in names:
        if colors[name] in OTHER_COLORS:
            start = OTHER_COLORS.index(colors[name])
            choices = [*OTHER_COLORS[start:], *OTHER_COLORS[:start], *spare]
            colors[name] = next((c for c in choices if c not in taken), colors[name])
            taken.add(colors[name])
    return colors


def agg_figure(size: tuple[float, float]) -> Any:
    """An empty matplotlib figure on an Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def rd_figure(size: tuple[float, float] = (7, 5)) -> tuple[Any, Any]:
    """A figure with one axes on an Agg canvas (no display, no pyplot state)."""
    fig = agg_figure(size)
    return fig, fig.add_subplot()


def save_rd(
    fig: Any, ax: Any, ylabel: str, title: str, path: Path, dpi: int = 150, where: str = "best"
) -> Path:
    """Label the axes of an R-D plot (bpp against ``ylabel``), add the legend, write ``path``."""
    ax.set_xlabel("bpp")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    ax.legend(fontsize="small", loc=where)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def plot_rd(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    metric_key: str,
    path: Path,
    title: str = "",
    groups: Mapping[str, str] | None = None,
) -> Path:
    """One R-D plot of ``curves`` (label -> results) for ``metric_key``, written to ``path``.

    A curve's colour is its group's (``groups``: label -> optimizer, default the label itself, see
    :func:`curve_colors`); the curves of one group (its seeds) differ in their markers."""
    fig, ax = rd_figure((6.4, 4.8))
    groups = groups or {}
    colors = curve_colors(groups.get(label, label) for label in curves)
    drawn: dict[str, int] = {}  # group -> curves of it drawn so far
    for label, results in curves.items():
        if metric_key not in results:
            continue
        points = sorted(zip(results["bpp"], results[metric_key], strict=True))
        traditional = any(name.lower() in label.lower() for name in TRADITIONAL)
        group = groups.get(label, label)
        index = drawn[group] = drawn.get(group, -1) + 1
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            color=colors[group],
            linestyle="--" if traditional else "-",
            marker=MARKERS[index % len(MARKERS)],
            markersize=4,
            label=label,
        )
    ylabel = PLOT_METRICS[metric_key][1]
    title = title or f"R-D, {ylabel.split()[0]}"
    return save_rd(fig, ax, ylabel, title, path, dpi=120, where="lower right")


def write_rd_plots(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    out: Path,
    title: str = "",
    groups: Mapping[str, str] | None = None,
) -> list[Path]:
    """``rd_psnr.png`` and ``rd_msssim.png`` in ``out`` for the metrics some curve has (colours
    by ``groups``, as in :func:`plot_rd`)."""
    written = []
    for key, (stem, _) in PLOT_METRICS.items():
        if any(key in results for results in curves.values()):
            written.append(plot_rd(curves, key, out / f"rd_{stem}.png", title, groups))
    return written
