"""Building blocks of HPCM (Li et al., ICCV 2025, arXiv 2507.19125, Sec. 3 and supp. A).

Sub-modules keep the official attribute names inside each block (``branch``, ``pconv``,
``conv_q`` ...) so that official checkpoints map onto them with a handful of prefix renames
(see :mod:`hpcm.codec.checkpoint`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Conv1x1(nn.Conv2d):
    """1x1 convolution that can run on the CPU as one (batched) GEMM with the bias as the
    initial accumulator (``gemm = True``, the default).

    oneDNN's 1x1 convolution gives slightly different floats for different thread counts, which
    desynchronises an encoder and a decoder that run with different thread settings. The GEMM
    gives the same floats at any thread count. With ``gemm = False`` it is oneDNN's
    convolution, bit for bit what the official implementation computes at the same thread
    count. On other devices it is always the ordinary convolution.

    A channels-last input is one (B*H*W, C) matrix as it lies in memory: it is multiplied as
    such and the result stays channels-last, with no copy (the NCHW product would first copy
    the input to NCHW; training in channels-last is twice as fast per 1x1 layer this way).
    """

    gemm: bool = True

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gemm or x.device.type != "cpu":
            return super().forward(x)
        b, c, h, w = x.shape
        weight = self.weight.view(self.out_channels, c)
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
            out = torch.addmm(self.bias, rows, weight.t())
            return out.view(b, h, w, self.out_channels).permute(0, 3, 1, 2)
        x = x.reshape(b, c, h * w)
        if b == 1:
            out = torch.addmm(self.bias[:, None], weight, x[0]).unsqueeze(0)
        else:
            out = torch.baddbmm(self.bias[None, :, None], weight.expand(b, -1, -1), x)
        return out.view(b, self.out_channels, h, w)


def conv1x1(in_ch: int, out_ch: int, thread_invariant: bool = True) -> nn.Conv2d:
    """A 1x1 convolution; ``thread_invariant`` picks :class:`Conv1x1` (entropy-parameter
    path, which the decoder must reproduce exactly) over the plain oneDNN convolution."""
    if thread_invariant:
        return Conv1x1(in_ch, out_ch)
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


def conv2x2_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=2, stride=2)


def deconv2x2_up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)


def conv4x4_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


def deconv4x4_up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


class PartialConv3x3(nn.Module):
    """3x3 convolution over the first ``n_conv`` channels; the rest pass through unchanged."""

    def __init__(self, channels: int, n_conv: int):
        super().__init__()
        self.split = (n_conv, channels - n_conv)
        self.pconv = nn.Conv2d(n_conv, n_conv, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, tail = torch.split(x, self.split, dim=1)
        return torch.cat((self.pconv(head), tail), dim=1)


class PConvRB(nn.Module):
    """Residual block: partial 3x3 conv, 1x1 expansion, LeakyReLU, 1x1 projection."""

    def __init__(
        self,
        channels: int,
        partial_ratio: int = 4,
        mlp_ratio: int = 4,
        thread_invariant: bool = True,
    ):
        super().__init__()
        hidden = channels * mlp_ratio
        self.branch = nn.Sequential(
            PartialConv3x3(channels, channels // partial_ratio),
            conv1x1(channels, hidden, thread_invariant),
            nn.LeakyReLU(inplace=True),
            conv1x1(hidden, channels, thread_invariant),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class DWConvRB(nn.Module):
    """Residual block: depthwise 3x3 conv, 1x1 expansion, LeakyReLU, 1x1 projection."""

    def __init__(self, channels: int, mlp_ratio: int = 2):
        super().__init__()
        hidden = channels * mlp_ratio
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels),
            conv1x1(channels, hidden),
            nn.LeakyReLU(inplace=True),
            conv1x1(hidden, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class SpatialPrior(nn.Module):
    """Entropy-parameter network of one scale: ``head(trunk(x) * gain)``.

    ``gain`` is the per-step adaptive channel scaling of HPCM; the trunk and head are shared
    by all the steps that use this prior (s1 and s2 share one prior, s3 has its own).
    """

    def __init__(self, channels: int, out_channels: int, n_trunk: int, n_head: int, n_tail: int):
        super().__init__()
        self.trunk = nn.Sequential(*(DWConvRB(channels) for _ in range(n_trunk)))
        # HPCM-1B's heads end with ``n_tail`` blocks after the projection (official HPCM_1B.py).
        self.head = nn.Sequential(
            *(DWConvRB(channels) for _ in range(n_head)),
            conv1x1(channels, out_channels),
            *(DWConvRB(out_channels) for _ in range(n_tail)),
        )

    def forward(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x) * gain)


class WindowCrossAttention(nn.Module):
    """Progressive context fusion: window cross-attention from the new entropy parameters
    (queries) to the accumulated context (keys, values), plus a 1x1 projection of the queries'
    input (HPCM Sec. 3.3). Windows are non-overlapping ``window`` x ``window`` tiles.
    """

    def __init__(self, channels: int, window: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.window = window
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.conv_q = conv1x1(channels, channels)
        self.conv_k = conv1x1(channels, channels)
        self.conv_v = conv1x1(channels, channels)
        self.conv_out = conv1x1(channels, channels)

    def _to_windows(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.window
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b * (h // p) * (w // p), c, p, p)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = query.shape
        p = self.window
        n = p * p
        # The projections run on the windowed tensors, as in the official code, so that the
        # float results (and hence the entropy parameters) are the same bit for bit.
        q = self.conv_q(self._to_windows(query))
        kv_in = self._to_windows(context)
        k = self.conv_k(kv_in)
        v = self.conv_v(kv_in)
        nw = q.shape[0]
        q = q.view(nw, self.num_heads, self.head_dim, n).transpose(2, 3)
        k = k.view(nw, self.num_heads, self.head_dim, n)
        v = v.view(nw, self.num_heads, self.head_dim, n).transpose(2, 3)
        attn = F.softmax(torch.matmul(q, k) / math.sqrt(self.head_dim), dim=-1)
        out = torch.matmul(attn, v).transpose(2, 3).reshape(nw, c, p, p)
        out = out.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, c, h, w) + self.conv_out(query)
