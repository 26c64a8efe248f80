"""What a short run shows when it ends (``trainer.showcase``): a picture and an R-D plot.

The training command passes :func:`show_run` to :func:`hpcm.train.build.train`, which calls it
on a run that trained all its epochs.

``showcase.png``: the first test image, original | reconstruction, with bpp and PSNR.
``rd_vs_jpeg.png``: the run's R-D point against JPEG (Pillow, the qualities below) on the same
test images. Rates are real bitstreams (``hpcm.codec.encode_image``; JPEG: the file size),
PSNR is on 8-bit images, both averaged over the test images as ``evaluate.py`` does.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hpcm.codec.checkpoint import load_model
from hpcm.codec.model import HPCM
from hpcm.eval.evaluate import round_trip
from hpcm.eval.plots import agg_figure, plot_rd
from hpcm.metrics import psnr_8bit
from hpcm.run_layout import BEST_CHECKPOINT

log = logging.getLogger(__name__)

# Pillow's JPEG (4:2:0 chroma subsampling below quality 95, its default); a curve from 0.1 bpp up.
JPEG_QUALITIES = (5, 10, 15, 20, 30, 40, 50, 65, 80, 90)
PICTURE, RD_PLOT = "showcase.png", "rd_vs_jpeg.png"


def _to_uint8(x: Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def jpeg_point(x: Tensor, quality: int) -> tuple[float, float]:
    """(bpp, PSNR) of one (3, H, W) image in [0, 1] coded by Pillow's JPEG at ``quality``."""
    buffer = io.BytesIO()
    Image.fromarray(_to_uint8(x)).save(buffer, format="JPEG", quality=quality)
    bpp = buffer.tell() * 8 / (x.shape[-2] * x.shape[-1])
    decoded = torch.from_numpy(np.array(Image.open(buffer).convert("RGB")))
    return bpp, psnr_8bit(x, decoded.permute(2, 0, 1).float() / 255).item()


def model_point(model: HPCM, x: Tensor) -> tuple[float, float, Tensor]:
    """(bpp, PSNR, reconstruction) of one (3, H, W) image through real compress/decompress
    (the coding of ``evaluate.py``)."""
    coded = round_trip(model, x.unsqueeze(0), next(model.parameters()).device)
    x_hat = coded.x_hat[0].clamp(0, 1)
    return coded.bpp, psnr_8bit(x, x_hat).item(), x_hat


def _mean_curve(points: Sequence[Sequence[tuple[float, float]]]) -> dict[str, list[float]]:
    """Per-setting means over the images: ``points[i][j]`` is image i at setting j."""
    means = np.mean(np.asarray(points), axis=0)
    return {"bpp": means[:, 0].tolist(), "psnr-rgb": means[:, 1].tolist()}


def _picture(x: Tensor, x_hat: Tensor, caption: str, path: Path) -> None:
    height, width = x.shape[-2:]
    fig = agg_figure((2 * 5 * width / max(height, width) + 0.4, 5 * height / max(height, width)))
    for ax, image, title in zip(fig.subplots(1, 2), (x, x_hat), ("original", caption), strict=True):
        ax.imshow(_to_uint8(image))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


class Showcase(NamedTuple):
    picture: Path
    rd_plot: Path
    images: int
    bpp: float  # the model's mean over the images, real bitstreams
    psnr: float


def write_showcase(model: HPCM, images: Iterable[Tensor], out: Path, label: str) -> Showcase:
    """Code ``images`` (each (3, H, W) or (B, 3, H, W), in [0, 1]) with ``model`` and JPEG, and
    write :data:`PICTURE` and :data:`RD_PLOT` into ``out``; returns their paths and the model's
    mean point."""
    ours, jpeg, first = [], [], None
    with torch.inference_mode():
        for batch in images:
            for x in batch.reshape(-1, *batch.shape[-3:]).float().cpu():
                bpp, psnr, x_hat = model_point(model, x)
                ours.append([(bpp, psnr)])
                jpeg.append([jpeg_point(x, q) for q in JPEG_QUALITIES])
                first = first or (x, x_hat, bpp, psnr)
    if first is None:
        raise ValueError("no test images to show")
    x, x_hat, bpp, psnr = first
    _picture(x, x_hat, f"{label}: {bpp:.3f} bpp, {psnr:.2f} dB PSNR", out / PICTURE)
    mean = _mean_curve(ours)
    curves = {label: mean, "JPEG (Pillow)": _mean_curve(jpeg)}
    title = f"{len(ours)} test images, mean bpp and PSNR"
    plot_rd(curves, "psnr-rgb", out / RD_PLOT, title)
    return Showcase(out / PICTURE, out / RD_PLOT, len(ours), mean["bpp"][0], mean["psnr-rgb"][0])


def show_run(cfg: Any, run_dir: Path, test_images: Iterable[Tensor]) -> None:
    """``trainer.showcase``: the best checkpoint's picture and R-D plot against JPEG, and where
    they are (a diverged run, with no best checkpoint, shows nothing). ``cfg`` is the run's
    composed config (its model, optimizer and lambda name the curve)."""
    if not (run_dir / BEST_CHECKPOINT).is_file():
        return
    model = load_model(run_dir / BEST_CHECKPOINT, device="cpu")  # coding as evaluate.py on CPU
    label = f"{cfg.model.name} {cfg.optimizer.name}, lambda {cfg.lmbda}"
    shown = write_showcase(model, test_images, run_dir, label)
    log.info(
        "best checkpoint on the %d test images (real bitstreams): %.3f bpp, %.2f dB PSNR; "
        "reconstruction: %s; R-D against JPEG: %s",
        shown.images,
        shown.bpp,
        shown.psnr,
        shown.picture,
        shown.rd_plot,
    )
