"""The end of a short run: real-bitstream point against Pillow's JPEG on the same images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import hpcm
from hpcm.eval import showcase
from hpcm.train.build import showcase_wanted


def test_jpeg_points_rise_with_quality() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 64, 96).cumsum(-1) / 96  # smooth-ish content in [0, 1]
    low, high = showcase.jpeg_point(x, 10), showcase.jpeg_point(x, 90)
    assert 0 < low[0] < high[0] and low[1] < high[1]


def test_showcase_writes_picture_and_plot(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = hpcm.build_model("tiny").eval()
    model.update()
    images = [torch.rand(1, 3, 256, 256), torch.rand(3, 256, 256)]
    shown = showcase.write_showcase(model, images, tmp_path, "tiny")
    paths = [shown.picture, shown.rd_plot]
    assert [p.name for p in paths] == [showcase.PICTURE, showcase.RD_PLOT]
    bpp, psnr, x_hat = showcase.model_point(model, images[1])
    assert bpp > 0 and x_hat.shape == images[1].shape and 0 < psnr < 60
    first = showcase.model_point(model, images[0][0])
    assert shown.images == 2
    assert shown.bpp == pytest.approx((first[0] + bpp) / 2)  # the mean of the two images
    assert shown.psnr == pytest.approx((first[1] + psnr) / 2)
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no test images"):
        showcase.write_showcase(model, [], tmp_path, "tiny")


def test_showcase_is_on_for_single_runs_and_off_in_sweeps_unless_forced() -> None:
    assert showcase_wanted(None, multirun=False) and not showcase_wanted(None, multirun=True)
    assert showcase_wanted(True, multirun=True) and not showcase_wanted(False, multirun=False)
