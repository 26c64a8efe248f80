"""Image-quality and rate metrics: PSNR, MS-SSIM, bits per pixel.

Conventions: functions that compute on tensors return 0-dim tensors (call ``.item()`` for a
number); ``bpp_from_strings`` counts bytes and returns a float. PSNR of identical images is
``inf`` (no cap): a cap would silently bias averages, and an ``inf`` is easy to spot.

The 8-bit PSNR and the MS-SSIM settings follow the official HPCM test protocol (spec section 9):
both images are scaled by 255, clamped, rounded, then compared; MS-SSIM is pytorch_msssim's
(``data_range=1``, its defaults otherwise) on the float reconstruction and is reported in dB as
``-10 log10(1 - ms_ssim)``.

MS-SSIM is computed here, the same way as ``pytorch_msssim.ms_ssim`` (agreement checked by the
tests), with its Gaussian window and scale weights made once per device and dtype: the package
builds them on the host at every call, and each copy to a GPU is a host sync in the training step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_8BIT = 255.0
# MS-SSIM (Wang, Simoncelli and Bovik, "Multiscale structural similarity for image quality
# assessment", Asilomar 2003) with pytorch_msssim 1.0's defaults: an 11-px Gaussian window of
# sigma 1.5, K = (0.01, 0.03), the paper's weights of the 5 scales (4 downsamplings).
MS_SSIM_WIN_SIZE = 11
MS_SSIM_WIN_SIGMA = 1.5
MS_SSIM_K = (0.01, 0.03)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_LEVELS = len(MS_SSIM_WEIGHTS)


def mse_to_psnr(mse: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB for a mean squared error measured on signals of range ``data_range``."""
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB of the pooled MSE over all elements (float signals, no quantization)."""
    _check_same_shape(a, b)
    mse = torch.mean((a.double() - b.double()) ** 2)
    return mse_to_psnr(mse, data_range).to(a.dtype)


def psnr_8bit(x: Tensor, x_hat: Tensor) -> Tensor:
    """PSNR of two [0, 1] images after quantizing both to 8 bits (official test protocol).

    For a batch this is the PSNR of the pooled MSE; the official protocol averages per image,
    so call it once per image there.
    """
    _check_same_shape(x, x_hat)
    return psnr(_to_8bit(x), _to_8bit(x_hat), data_range=MAX_8BIT)


def ms_ssim_min_side() -> int:
    """Smallest image side MS-SSIM accepts is this value + 1 (pytorch_msssim's assertion)."""
    return (MS_SSIM_WIN_SIZE - 1) * 2 ** (MS_SSIM_LEVELS - 1)


def ms_ssim(x: Tensor, x_hat: Tensor, per_image: bool = False) -> Tensor:
    """MS-SSIM of images in [0, 1], shape (B, C, H, W) or (C, H, W), averaged over the batch
    (``per_image``: one value per image, shape (B,)).

    Differentiable, so the MS-SSIM loss uses it too. Raises ``ValueError`` when a side is too
    small for the 5-scale pyramid, instead of pytorch_msssim's bare ``AssertionError``.
    """
    _check_same_shape(x, x_hat)
    if x.dim() == 3:
        x, x_hat = x.unsqueeze(0), x_hat.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"ms_ssim expects (B, C, H, W) or (C, H, W) tensors, got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if min(height, width) <= ms_ssim_min_side():
        raise ValueError(
            f"MS-SSIM needs both image sides > {ms_ssim_min_side()} px "
            f"({MS_SSIM_LEVELS} scales, {MS_SSIM_WIN_SIZE}-px window), got {height}x{width}"
        )
    window, weights = _ms_ssim_constants(x.device, x.dtype)
    factors = []
    for level in range(MS_SSIM_LEVELS):
        similarity, contrast = _ssim_per_channel(x, x_hat, window)
        if level < MS_SSIM_LEVELS - 1:
            factors.append(torch.relu(contrast))
            padding = [side % 2 for side in x.shape[-2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            x_hat = F.avg_pool2d(x_hat, kernel_size=2, padding=padding)
    factors.append(torch.relu(similarity))
    # Product over the scales of contrast-structure terms (and the last scale's SSIM), each
    # raised to its weight; per image and channel, then averaged over the channels.
    per_channel = torch.prod(torch.stack(factors) ** weights.view(-1, 1, 1), dim=0)
    return per_channel.mean(1) if per_image else per_channel.mean()


@functools.lru_cache(maxsize=8)
def _ms_ssim_constants(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The normalised 1-D Gaussian window (computed in fp32, like pytorch_msssim) and the scale
    weights on ``device``, made once (outside inference mode, so that training can use them)."""
    with torch.inference_mode(False):
        coords = torch.arange(MS_SSIM_WIN_SIZE, dtype=torch.float32) - MS_SSIM_WIN_SIZE // 2
        window = torch.exp(-(coords**2) / (2 * MS_SSIM_WIN_SIGMA**2))
        window = window / window.sum()
        weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=dtype)
        return window.to(device, dtype), weights.to(device)


def _blur(x: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian filter of every channel, rows then columns, without padding."""
    channels, size = x.shape[1], window.numel()
    x = F.conv2d(x, window.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    return F.conv2d(x, window.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)


def _ssim_per_channel(x: Tensor, y: Tensor, window: Tensor) -> tuple[Tensor, Tensor]:
    """SSIM and its contrast-structure term, each (B, C), for signals of range 1."""
    c1, c2 = MS_SSIM_K[0] ** 2, MS_SSIM_K[1] ** 2
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = _blur(x * x, window) - mu_xx
    var_y = _blur(y * y, window) - mu_yy
    cov = _blur(x * y, window) - mu_xy
    contrast = (2 * cov + c2) / (var_x + var_y + c2)
    similarity = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * contrast
    return similarity.flatten(2).mean(-1), contrast.flatten(2).mean(-1)


def ms_ssim_db(value: Tensor | float) -> Tensor | float:
    """MS-SSIM in dB, ``-10 log10(1 - value)``; ``inf`` for a perfect score."""
    if isinstance(value, Tensor):
        return -10.0 * torch.log10(1.0 - value)
    if value >= 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)


def iter_likelihoods(
    likelihoods: Mapping | Sequence | Tensor, prefix: str = ""
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` for every likelihood tensor, walking nested dicts and lists.

    Nested names are joined with ``_`` (``{"y": {"s1": t}}`` -> ``"y_s1"``).
    """
    if isinstance(likelihoods, Tensor):
        yield prefix, likelihoods
    elif isinstance(likelihoods, Mapping):
        for key, value in likelihoods.items():
            yield from iter_likelihoods(value, f"{prefix}_{key}" if prefix else str(key))
    elif isinstance(likelihoods, Sequence) and not isinstance(likelihoods, str | bytes):
        for index, value in enumerate(likelihoods):
            yield from iter_likelihoods(value, f"{prefix}_{index}" if prefix else str(index))
    else:
        raise TypeError(f"likelihoods must hold tensors, got {type(likelihoods).__name__}")


def bits_from_likelihoods(likelihoods: Tensor) -> Tensor:
    """Total information content ``sum(-log2 l)`` of one likelihood tensor, in bits."""
    return torch.log(likelihoods).sum() / -math.log(2.0)


def bpp_from_likelihoods(likelihoods: Mapping | Sequence | Tensor, num_pixels: int) -> Tensor:
    """Estimated rate ``sum(-log2 l) / num_pixels`` over ALL likelihood tensors (nested ok)."""
    _check_num_pixels(num_pixels)
    tensors = [t for _, t in iter_likelihoods(likelihoods)]
    if not tensors:
        raise ValueError("no likelihood tensors given")
    return sum(bits_from_likelihoods(t) for t in tensors) / num_pixels


def count_bytes(strings: bytes | bytearray | memoryview | Sequence) -> int:
    """Number of bytes in a bitstream or a nested list of bitstreams."""
    if isinstance(strings, bytes | bytearray):
        return len(strings)
    if isinstance(strings, memoryview):
        return strings.nbytes
    if isinstance(strings, Sequence) and not isinstance(strings, str):
        return sum(count_bytes(s) for s in strings)
    raise TypeError(f"expected bytes or a (nested) list of bytes, got {type(strings).__name__}")


def bpp_from_strings(strings: bytes | Sequence, num_pixels: int) -> float:
    """Real rate: ``8 * bytes / num_pixels`` over all bitstreams (nested lists of bytes).

    ``num_pixels`` is the ORIGINAL image's H*W (before padding), as in the official protocol.
    """
    _check_num_pixels(num_pixels)
    return 8.0 * count_bytes(strings) / num_pixels


def _to_8bit(x: Tensor) -> Tensor:
    return (x * MAX_8BIT).clamp(0.0, MAX_8BIT).round()


def _check_same_shape(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")


def _check_num_pixels(num_pixels: int) -> None:
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be positive, got {num_pixels}")
