"""Entropy models of HPCM and their rANS coding tables.

Both latents use a generalized Gaussian (GGM) with shape ``beta = 1.5`` (Zhang et al., "GG
mixture/GGM for learned image compression", arXiv 2411.19320, as used by HPCM arXiv
2507.19125): ``y`` is conditional (a mean and a scale per element, from the context model) and
``z`` has a learned mean and scale per channel. The coding tables are built the way the official
HPCM code builds them, so that our rANS streams (CompressAI's ``compressai.ans``) are the same
bytes as the official codec's.

- :class:`GGMEntropyModel`: the likelihoods of training and estimation (both latents).
- :class:`GGMConditional` (``y``) and :class:`GGMChannelPrior` (``z``): the entropy models of
  coding, each owning its tables and their ``update()`` as CompressAI's entropy models do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from hpcm.codec.backend import BufferedRansEncoder, RansDecoder

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


class _LowerBound(torch.autograd.Function):
    """``max(x, bound)`` whose gradient still flows where ``x`` is below the bound if the step
    would raise it (the gradient is negative), so that a bounded value can come back up: the
    "identity if towards" gradient of Balle et al.'s lower bound (tensorflow-compression's
    ``lower_bound``; CompressAI's ``LowerBound`` has the same forward and gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, bound = ctx.saved_tensors
        return grad * ((x >= bound) | (grad < 0)), None


class LowerBound(nn.Module):
    """:class:`_LowerBound` at a fixed ``bound``, kept as a buffer named ``bound`` (the state-dict
    key of CompressAI's module and of the official checkpoints)."""

    def __init__(self, bound: float) -> None:
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LowerBound.apply(x, self.bound)


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
    """Likelihoods of a generalized Gaussian with given scales (training and estimation)."""

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
def ggm_tables(scales: torch.Tensor, beta: float):
    """Quantized CDF rows for a 1-D tensor of scales: (cdf, cdf_length, offset) as int32.

    Rows cover ``[-c, c]`` with ``c = ceil(scale * q)``, ``q`` the GGM quantile leaving
    ``TAIL_MASS / 2`` in each tail; the leftover mass of both tails becomes the escape symbol.
    Constructed like the official HPCM tables (which differ from CompressAI's
    GaussianConditional.update()).
    """
    # Coding needs these; training does not (hpcm.codec.backend says what importing them costs).
    from scipy.stats import gennorm

    from hpcm.codec.backend import pmf_to_quantized_cdf

    beta_t = torch.tensor([float(beta)])  # fp32, as the likelihoods see it
    scales = torch.clamp_min(scales.detach().float().cpu().reshape(-1), SCALE_BOUND)
    multiplier = -float(gennorm.ppf(TAIL_MASS / 2, float(beta_t)))
    center = torch.ceil(scales * multiplier).int()
    length = 2 * center + 1
    max_length = int(length.max())
    samples = (torch.arange(max_length, dtype=torch.int32)[None, :] - center[:, None]).float()
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


class CodingTableModel(nn.Module):
    """The rANS coding tables of one latent, owned as CompressAI's ``EntropyModel`` owns its
    own: ``_quantized_cdf``, ``_cdf_length`` and ``_offset`` buffers that stay empty until
    ``update()`` builds them (after training or loading) and are saved with the weights, and
    their host-side form for the coder (:meth:`tables`). Subclasses say what the rows are.
    """

    def __init__(self, beta: float = DEFAULT_BETA) -> None:
        super().__init__()
        self.beta = float(beta)
        self.register_buffer("_quantized_cdf", torch.empty(0, dtype=torch.int32))
        self.register_buffer("_cdf_length", torch.empty(0, dtype=torch.int32))
        self.register_buffer("_offset", torch.empty(0, dtype=torch.int32))
        self._host_tables: CodingTables | None = None

    @property
    def ready(self) -> bool:
        """Whether the tables are built (by ``update()`` or loaded with the weights)."""
        return self._quantized_cdf.numel() > 0

    def _build(self, scales: torch.Tensor) -> None:
        """One table row per scale of ``scales`` (a GGM of shape ``beta``, zero mean)."""
        device = self._offset.device
        cdf, length, offset = ggm_tables(scales, self.beta)
        self._quantized_cdf = cdf.to(device)
        self._cdf_length = length.to(device)
        self._offset = offset.to(device)
        self._host_tables = None

    def tables(self) -> CodingTables:
        if not self.ready:
            raise RuntimeError("coding tables are not built: call model.update() first")
        if self._host_tables is None:
            self._host_tables = CodingTables.from_tensors(
                self._quantized_cdf, self._cdf_length, self._offset
            )
        return self._host_tables

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Table buffers are empty until update(): take whatever size the checkpoint holds.
        for name, buf in self.named_buffers(recurse=False):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=buf.device))
        self._host_tables = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class GGMConditional(CodingTableModel):
    """The conditional entropy model of ``y`` for coding: each element's scale picks a row of
    tables built on a fixed scale table (``scale_table``), as CompressAI's
    ``GaussianConditional`` does with its ``scale_table`` and ``build_indexes``."""

    def __init__(self, beta: float = DEFAULT_BETA) -> None:
        super().__init__(beta)
        self.register_buffer("scale_table", torch.empty(0))

    def update_scale_table(self, table: torch.Tensor, force: bool = False) -> bool:
        """Build the tables on ``table`` (sorted scales). Returns False when they exist
        already and ``force`` is not set."""
        if self.ready and not force:
            return False
        self.scale_table = table.detach().float().cpu().to(self._offset.device)
        self._build(self.scale_table)
        return True

    def update(self, force: bool = False) -> bool:
        """Build the tables on the official scale table (:func:`scale_table`)."""
        return self.update_scale_table(scale_table(), force)

    def build_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """The table row of each element: see :func:`scale_indexes`."""
        return scale_indexes(scales, self.scale_table)


class GGMChannelPrior(CodingTableModel):
    """The entropy model of ``z`` for coding: one table per channel, built from the channel's
    learned scale (the model's ``z_scales``, passed to :meth:`update`)."""

    def update(self, scales: torch.Tensor, force: bool = False) -> bool:
        """Build one row per channel from ``scales`` (one per channel). Returns False when the
        tables exist already and ``force`` is not set."""
        if self.ready and not force:
            return False
        self._build(scales.detach().reshape(-1))
        return True

    @staticmethod
    def build_indexes(shape) -> torch.Tensor:
        """The table row of each element of a ``(B, C, H, W)`` latent: its channel."""
        b, c, h, w = shape
        return torch.arange(c, dtype=torch.int32).view(1, c, 1, 1).expand(b, c, h, w)


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
    "CodingTableModel",
    "CodingTables",
    "GGMChannelPrior",
    "GGMConditional",
    "GGMEntropyModel",
    "LowerBound",
    "decode_symbols",
    "encode_symbols",
    "ggm_cdf",
    "ggm_tables",
    "scale_indexes",
    "scale_table",
]
