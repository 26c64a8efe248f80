"""Metrics (PSNR, MS-SSIM, bpp) and the rate-distortion loss on known values."""

from __future__ import annotations

import math

import pytest
import torch

from hpcm.metrics import (
    bpp_from_likelihoods,
    bpp_from_strings,
    ms_ssim,
    ms_ssim_db,
    ms_ssim_min_side,
    psnr,
    psnr_8bit,
)
from hpcm.train.losses import RateDistortionLoss, task_names


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))


def fake_output(x: torch.Tensor, offset: float = 0.1) -> dict:
    """x_hat = x + offset (MSE offset^2); y: 16 symbols at p=1/2, z: 8 symbols at p=1/4."""
    return {
        "x_hat": x + offset,
        "likelihoods": {"y": torch.full((1, 4, 2, 2), 0.5), "z": torch.full((1, 2, 2, 2), 0.25)},
    }


# ----------------------------------------------------------------------------- metrics
def test_psnr_of_identical_images_is_inf(image: torch.Tensor) -> None:
    assert math.isinf(psnr(image, image).item())
    assert math.isinf(psnr_8bit(image, image).item())


def test_psnr_of_known_mse(image: torch.Tensor) -> None:
    assert psnr(image, image + 0.1).item() == pytest.approx(20.0, abs=1e-4)
    assert psnr(image * 255, image * 255 + 2.55, data_range=255).item() == pytest.approx(40.0)


def test_psnr_8bit_quantizes_and_clamps() -> None:
    x = torch.zeros(1, 3, 8, 8)
    assert psnr_8bit(x, x + 10 / 255).item() == pytest.approx(20 * math.log10(255) - 20, abs=1e-4)
    # Sub-level differences vanish after rounding; out-of-range values are clamped.
    assert math.isinf(psnr_8bit(x, x + 0.4 / 255).item())
    assert math.isinf(psnr_8bit(x + 1.0, x + 1.5).item())
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr_8bit(x, x[..., :4])


def test_ms_ssim_values_and_size_check() -> None:
    x = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(1))
    assert ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < ms_ssim(x, (x + 0.2 * torch.rand_like(x)).clamp(0, 1)).item() < 1.0
    assert ms_ssim(x[0], x[0]).item() == pytest.approx(1.0, abs=1e-5)
    side = ms_ssim_min_side()
    assert side == 160
    small = torch.rand(1, 3, side, 400)
    with pytest.raises(ValueError, match="MS-SSIM needs both image sides > 160"):
        ms_ssim(small, small)
    ok = torch.rand(1, 3, side + 1, side + 1)
    assert ms_ssim(ok, ok).item() == pytest.approx(1.0, abs=1e-5)


def test_ms_ssim_db() -> None:
    assert ms_ssim_db(0.9) == pytest.approx(10.0)
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
    assert math.isinf(ms_ssim_db(1.0))
    assert ms_ssim_db(torch.tensor(0.999)).item() == pytest.approx(30.0, abs=1e-3)


def test_bpp_from_likelihoods_sums_all_tensors() -> None:
    likelihoods = fake_output(torch.zeros(1))["likelihoods"]
    # 16 bits (y) + 16 bits (z) over 64 pixels.
    assert bpp_from_likelihoods(likelihoods, 64).item() == pytest.approx(0.5)
    nested = {"y": {"s1": likelihoods["y"], "s2": likelihoods["y"]}, "z": likelihoods["z"]}
    assert bpp_from_likelihoods(nested, 48).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bpp_from_likelihoods(likelihoods, 0)
    with pytest.raises(ValueError):
        bpp_from_likelihoods({}, 64)


def test_bpp_from_strings_counts_bytes_not_list_entries() -> None:
    strings = [[b"abc", b"d"], [b"ef"]]  # CompressAI layout: per latent, per image
    assert bpp_from_strings(strings, 16) == pytest.approx(8 * 6 / 16)
    assert bpp_from_strings(b"\x00" * 4, 32) == pytest.approx(1.0)
    with pytest.raises(TypeError):
        bpp_from_strings(["not bytes"], 16)


# ----------------------------------------------------------------------------- loss
def test_mse_loss_dict(image: torch.Tensor) -> None:
    criterion = RateDistortionLoss(lmbda=0.01)
    out = criterion(fake_output(image), image)
    num_pixels = 2 * 32 * 48
    assert set(out) == {"loss", "distortion", "bpp_loss", "mse", "psnr", "bpp_y", "bpp_z"}
    assert out["mse"].item() == pytest.approx(0.01, rel=1e-4)
    assert out["psnr"].item() == pytest.approx(20.0, abs=1e-3)
    assert out["distortion"].item() == pytest.approx(0.01 * 255**2 * 0.01, rel=1e-4)
    assert out["bpp_y"].item() == pytest.approx(16 / num_pixels)
    assert out["bpp_z"].item() == pytest.approx(16 / num_pixels)
    assert out["bpp_loss"].item() == pytest.approx(32 / num_pixels)
    expected = out["distortion"] + out["bpp_loss"]
    assert out["loss"].item() == pytest.approx(expected.item())


def test_loss_backpropagates_to_reconstruction_and_likelihoods(image: torch.Tensor) -> None:
    x_hat = (image + 0.05).requires_grad_()
    y = torch.full((1, 4, 2, 2), 0.5, requires_grad=True)
    out = RateDistortionLoss(0.0067)({"x_hat": x_hat, "likelihoods": {"y": y}}, image)
    out["loss"].backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert y.grad is not None and torch.all(y.grad < 0)  # higher likelihood -> fewer bits
    assert not out["psnr"].requires_grad
    assert "bpp_y" not in out  # one likelihood tensor: no per-key rates


def test_task_losses_vector(image: torch.Tensor) -> None:
    criterion = RateDistortionLoss(0.013)
    output = fake_output(image)
    out = criterion(output, image)
    tasks = criterion.task_losses(out, output, task_names("rd"))
    assert task_names("rd") == ("distortion", "bpp_loss")
    assert tasks.shape == (2,)
    assert torch.equal(tasks, torch.stack([out["distortion"], out["bpp_loss"]]))


def test_ms_ssim_distortion() -> None:
    x = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(2))
    criterion = RateDistortionLoss(lmbda=8.73, metric="ms-ssim")
    perfect = criterion(fake_output(x, offset=0.0), x)
    assert perfect["distortion"].item() == pytest.approx(0.0, abs=1e-4)
    noisy_hat = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_()
    out = criterion({"x_hat": noisy_hat, "likelihoods": fake_output(x)["likelihoods"]}, x)
    assert out["distortion"].item() == pytest.approx(8.73 * (1 - out["ms_ssim"].item()))
    assert out["distortion"].item() > 0
    out["loss"].backward()
    assert torch.isfinite(noisy_hat.grad).all()
    small = torch.rand(1, 3, 128, 128)
    with pytest.raises(ValueError, match="MS-SSIM needs"):
        criterion(fake_output(small), small)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="mse, ms-ssim"):
        RateDistortionLoss(0.01, metric="ssim")
    with pytest.raises(ValueError, match="lmbda"):
        RateDistortionLoss(0.0)
    assert RateDistortionLoss(1.0, metric="MS_SSIM").metric == "ms-ssim"


def test_ms_ssim_agrees_with_pytorch_msssim_and_keeps_its_window() -> None:
    from pytorch_msssim import ms_ssim as reference

    from hpcm.metrics import _ms_ssim_constants

    x = torch.rand(2, 3, 200, 333)  # odd side: padded pooling
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_()
    ours, theirs = ms_ssim(x, y), reference(x, y, data_range=1.0, win_size=11)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(ours, y)
    (expected,) = torch.autograd.grad(theirs, y)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-8)
    per_image = reference(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(ms_ssim(x, y, per_image=True), per_image, rtol=1e-6, atol=1e-6)
    # made once per device and dtype: no host-to-device copy in later calls
    assert _ms_ssim_constants(x.device, x.dtype)[0] is _ms_ssim_constants(x.device, x.dtype)[0]
