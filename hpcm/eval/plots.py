"""R-D plots of CompressAI-style results (``{"bpp": [...], "psnr-rgb": [...], ...}``).

Used by ``evaluate.py`` (``rd_psnr.png``, ``rd_msssim.png`` beside its JSON) and by the demo run
(the model against JPEG). matplotlib is imported here, on first use, with the Agg canvas: no
display is needed and pyplot's global state is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# File stem and axis title per result key; MS-SSIM is drawn in dB, as CompressAI's plots do.
PLOT_METRICS = {"psnr-rgb": ("psnr", "PSNR (dB)"), "ms-ssim-db": ("msssim", "MS-SSIM (dB)")}
# Curves whose name contains one of these are traditional codecs: dashed, as in CompressAI.
TRADITIONAL = ("JPEG", "WebP", "BPG", "HM", "VTM", "AV1")


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
) -> Path:
    """One R-D plot of ``curves`` (label -> results) for ``metric_key``, written to ``path``."""
    fig, ax = rd_figure((6.4, 4.8))
    for label, results in curves.items():
        if metric_key not in results:
            continue
        points = sorted(zip(results["bpp"], results[metric_key], strict=True))
        traditional = any(name.lower() in label.lower() for name in TRADITIONAL)
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            linestyle="--" if traditional else "-",
            marker="o",
            markersize=4,
            label=label,
        )
    ylabel = PLOT_METRICS[metric_key][1]
    title = title or f"R-D, {ylabel.split()[0]}"
    return save_rd(fig, ax, ylabel, title, path, dpi=120, where="lower right")


def write_rd_plots(
    curves: Mapping[str, Mapping[str, Sequence[float]]], out: Path, title: str = ""
) -> list[Path]:
    """``rd_psnr.png`` and ``rd_msssim.png`` in ``out`` for the metrics some curve has."""
    written = []
    for key, (stem, _) in PLOT_METRICS.items():
        if any(key in results for results in curves.values()):
            written.append(plot_rd(curves, key, out / f"rd_{stem}.png", title))
    return written
