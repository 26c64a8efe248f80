"""Entropy models of HPCM and their rANS coding tables.

Both latents use a generalized Gaussian (GGM) with shape ``beta = 1.5`` (Zhang et al., "GG
mixture/GGM for learned image compression", arXiv 2411.19320, as used by HPCM arXiv
2507.19125): ``y`` is conditional (a mean and a scale per element, from the context model) and
``z`` has a learned mean and scale per channel. The coding tables are built the way the official
HPCM code builds them, so that our rANS streams (CompressAI's ``compressai.ans``) are the same
bytes as the official codec's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from compressai._CXX import pmf_to_quantized_cdf
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.ops import LowerBound
from scipy.stats import gennorm
from torch import nn

DEFAULT_BETA = 1.5
SCALE_BOUND = 0.12
LIKELIHOOD_BOUND = 1e-9
TAIL_MASS = 1e-6
PRECISION = 16


def scale_table(low: float = 0.12, high: float = 64.0, levels: int = 60) -> torch.Tensor:
    """Log-spaced scale quantization table of the official test protocol (0.12 to 64, 60)."""
    return torch.exp(torch.linspace(math.log(low), math.log(high), levels))


def ggm_cdf(v: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    """CDF of the unit generalized Gaussian: (1 + sign(v) P(1/beta, |v|^beta)) / 2, where P is
    the regularized lower incomplete gamma function."""
    beta = torch.as_tensor(beta, dtype=v.dtype, device=v.device)
    return (1 + torch.sign(v) * torch.special.gammainc(1 / beta, v.abs() ** beta)) / 2


class _GGMCdf(torch.autograd.Function):
    """GGM CDF with the analytic density as its derivative (cheaper and stable at 0)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v, beta)
        return ggm_cdf(v, beta)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, beta = ctx.saved_tensors
        density = beta / (2 * torch.exp(torch.lgamma(1 / beta))) * torch.exp(-(v.abs() ** beta))
        return grad * density, None


@dataclass
class CodingTables:
    """Quantized CDFs in the layout ``compressai.ans`` takes (python lists, built once)."""

    cdfs: list[list[int]]
    lengths: list[int]
    offsets: list[int]

    @classmethod
    def from_tensors(cls, cdf: torch.Tensor, length: torch.Tensor, offset: torch.Tensor):
        return cls(cdf.tolist(), length.reshape(-1).tolist(), offset.reshape(-1).tolist())


class GGMEntropyModel(nn.Module):
    """Likelihoods and coding tables of a generalized Gaussian with given means and scales."""

    def __init__(self, beta: float = DEFAULT_BETA):
        super().__init__()
        self.register_buffer("beta", torch.tensor([float(beta)]))
        self.scale_lower_bound = LowerBound(SCALE_BOUND)
        self.likelihood_lower_bound = LowerBound(LIKELIHOOD_BOUND)

    def cdf(self, v: torch.Tensor) -> torch.Tensor:
        return _GGMCdf.apply(v, self.beta.to(v.dtype))

    def likelihood(self, residual: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """P(residual) of an integer (or noisy) residual ``value - mean`` under scale ``scales``.

        Always evaluated in fp32 with autocast off, whatever the caller runs under: it is a
        difference of two CDFs, which bf16's 8-bit mantissa would round away for confident
        predictions (and the rate the optimizers see would be wrong).
        """
        with torch.autocast(residual.device.type, enabled=False):
            residual, scales = residual.float(), scales.float()
            scales = self.scale_lower_bound(scales)
            upper = self.cdf((residual + 0.5) / scales)
            lower = self.cdf((residual - 0.5) / scales)
            return self.likelihood_lower_bound(upper - lower)

    @torch.no_grad()
    def build_tables(self, scales: torch.Tensor):
        """Quantized CDF rows for a 1-D tensor of scales: (cdf, cdf_length, offset) as int32.

        Rows cover ``[-c, c]`` with ``c = ceil(scale * q)``, ``q`` the GGM quantile leaving
        ``TAIL_MASS / 2`` in each tail; the leftover mass of both tails becomes the escape
        symbol. Constructed like the official HPCM tables (which differ from CompressAI's
        GaussianConditional.update()).
        """
        beta = float(self.beta)
        scales = torch.clamp_min(scales.detach().float().cpu().reshape(-1), SCALE_BOUND)
        multiplier = -float(gennorm.ppf(TAIL_MASS / 2, beta))
        center = torch.ceil(scales * multiplier).int()
        length = 2 * center + 1
        max_length = int(length.max())
        samples = (torch.arange(max_length, dtype=torch.int32)[None, :] - center[:, None]).float()
        beta_t = self.beta.detach().cpu().float()
        upper = ggm_cdf((samples + 0.5) / scales[:, None], beta_t)
        lower = ggm_cdf((samples - 0.5) / scales[:, None], beta_t)
        pmf = upper - lower
        tail = lower[:, 0] + (1 - upper[:, -1])
        cdf = torch.zeros(len(scales), max_length + 2, dtype=torch.int32)
        for i in range(len(scales)):
            probs = pmf[i, : length[i]].tolist() + [float(tail[i])]
            row = pmf_to_quantized_cdf(probs, PRECISION)
            cdf[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
        return cdf, (length + 2).int(), (-center).int()


# Coding-table buffers of a CompressionModel: empty until update(), saved with the weights.
TABLE_BUFFERS = (
    "y_scale_table",
    "y_cdf",
    "y_cdf_length",
    "y_offset",
    "z_cdf",
    "z_cdf_length",
    "z_offset",
)


class CompressionModel(nn.Module):
    """A model that owns its rANS coding tables, as CompressAI's ``CompressionModel`` owns those
    of its entropy bottlenecks: buffers that stay empty until :meth:`update` builds them (after
    training or loading), and their host-side form for the coder (:meth:`tables`).

    Subclasses provide ``entropy`` (a :class:`GGMEntropyModel`) and ``z_scales`` (the learned
    per-channel scales of ``z``).
    """

    entropy: GGMEntropyModel
    z_scales: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        for buf in TABLE_BUFFERS:
            self.register_buffer(buf, torch.empty(0))
        self._tables: dict[str, CodingTables] | None = None

    def update(self, scales: torch.Tensor | None = None, force: bool = False) -> bool:
        """Build the rANS tables (y from the scale table, z from the learned z scales). Returns
        False when they exist already and ``force`` is not set."""
        if self.y_cdf.numel() and not force:
            return False
        table = scale_table() if scales is None else scales.detach().float().cpu()
        device = self.z_scales.device
        y_cdf, y_len, y_off = self.entropy.build_tables(table)
        z_cdf, z_len, z_off = self.entropy.build_tables(self.z_scales.detach().reshape(-1))
        for name, t in zip(
            ("y_scale_table", "y_cdf", "y_cdf_length", "y_offset", "z_cdf", "z_cdf_length"),
            (table, y_cdf, y_len, y_off, z_cdf, z_len),
        ):
            setattr(self, name, t.to(device))
        self.z_offset = z_off.to(device)
        self._tables = None
        return True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Table buffers are empty until update(): take whatever size the checkpoint holds.
        for name, _ in self.named_buffers(recurse=False):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=self.z_scales.device))
        self._tables = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def tables(self) -> dict[str, CodingTables]:
        if not self.y_cdf.numel():
            raise RuntimeError("coding tables are not built: call model.update() first")
        if self._tables is None:
            self._tables = {
                "y": CodingTables.from_tensors(self.y_cdf, self.y_cdf_length, self.y_offset),
                "z": CodingTables.from_tensors(self.z_cdf, self.z_cdf_length, self.z_offset),
            }
        return self._tables


def scale_indexes(scales: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Row of the scale table for each scale: how many of ``table[:-1]`` lie strictly below."""
    bounds = table[:-1].to(device=scales.device, dtype=scales.dtype).contiguous()
    return torch.bucketize(scales.contiguous(), bounds, right=False).int()


def encode_symbols(encoder: BufferedRansEncoder, symbols, indexes, tables: CodingTables) -> None:
    encoder.encode_with_indexes(
        symbols.reshape(-1).int().tolist(),
        indexes.reshape(-1).int().tolist(),
        tables.cdfs,
        tables.lengths,
        tables.offsets,
    )


def decode_symbols(decoder: RansDecoder, indexes: torch.Tensor, tables: CodingTables):
    values = decoder.decode_stream(
        indexes.reshape(-1).int().tolist(), tables.cdfs, tables.lengths, tables.offsets
    )
    return torch.tensor(values, dtype=torch.float32).reshape(indexes.shape)


__all__ = [
    "TABLE_BUFFERS",
    "BufferedRansEncoder",
    "CodingTables",
    "CompressionModel",
    "GGMEntropyModel",
    "RansDecoder",
    "decode_symbols",
    "encode_symbols",
    "ggm_cdf",
    "scale_indexes",
    "scale_table",
]
