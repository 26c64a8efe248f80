"""Image-quality and rate metrics: PSNR, MS-SSIM, bits per pixel.

Conventions: functions that compute on tensors return 0-dim tensors (call ``.item()`` for a
number); ``bpp_from_strings`` counts bytes and returns a float. PSNR of identical images is
``inf`` (no cap): a cap would silently bias averages, and an ``inf`` is easy to spot.

The 8-bit PSNR and the MS-SSIM settings follow the official HPCM test protocol (spec section 9):
both images are scaled by 255, clamped, rounded, then compared; MS-SSIM uses pytorch_msssim with
``data_range=1`` on the float reconstruction and is reported in dB as ``-10 log10(1 - ms_ssim)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from pytorch_msssim import ms_ssim as _pytorch_ms_ssim
from torch import Tensor

MAX_8BIT = 255.0
# pytorch_msssim defaults: an 11-px Gaussian window at 5 scales (4 downsamplings).
MS_SSIM_WIN_SIZE = 11
MS_SSIM_LEVELS = 5


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
    return _pytorch_ms_ssim(
        x, x_hat, data_range=1.0, size_average=not per_image, win_size=MS_SSIM_WIN_SIZE
    )


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
