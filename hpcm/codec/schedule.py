"""The hierarchical progressive coding schedule of HPCM, written once, as data.

HPCM (Li et al., ICCV 2025, arXiv 2507.19125, Sec. 3.2) codes the latent ``y`` at three scales:
``s1`` (1/4 resolution, 2 steps), ``s2`` (1/2 resolution, 4 steps of which the first is s1) and
``s3`` (full resolution, 8 steps of which the first two are s2). At each step every spatial
position codes exactly one channel chunk (2, 4 or 8 chunks at s1, s2, s3) and the chunk rotates
from step to step. This module holds the masks, the sub-sampling between scales and the step
table; it knows nothing about weights or entropy coding. :class:`hpcm.codec.model.HPCM` walks it for
training, compression and decompression alike.

Everything below reproduces the official implementation's element order exactly, including two
of its quirks (documented at :meth:`SchedulePlan.hyper_s2` and in :data:`STEPS`), so that
official checkpoints produce byte-identical bitstreams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Row/column parity of the 2x-subsampled phase each of the eight s3 channel groups keeps at s2.
S2_PHASES = ((0, 0), (1, 1), (0, 1), (1, 0), (0, 0), (1, 1), (0, 1), (1, 0))
# Phase each of the four s2 channel chunks keeps (on the s2 grid) at s1.
S1_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
# Four-part masks at s2: mask k gives chunk j the phase S1_PHASES[S2_STEP_PERMS[k][j]].
S2_STEP_PERMS = ((0, 1, 2, 3), (3, 2, 1, 0), (2, 3, 0, 1), (1, 0, 3, 2))
# Eight 4x4 base patterns (positions of the ones) of the s3 masks, tiled with period 4.
S3_PATTERNS = (
    ((0, 0), (2, 2)),
    ((0, 2), (2, 0)),
    ((1, 1), (3, 3)),
    ((1, 3), (3, 1)),
    ((0, 1), (2, 3)),
    ((0, 3), (2, 1)),
    ((1, 0), (3, 2)),
    ((1, 2), (3, 0)),
)
# Eight-part masks at s3: mask k gives chunk j the pattern S3_PATTERNS[S3_STEP_PATTERNS[k][j]].
S3_STEP_PATTERNS = (
    (0, 2, 4, 6, 1, 3, 5, 7),
    (1, 3, 5, 7, 0, 2, 4, 6),
    (2, 4, 6, 0, 3, 5, 7, 1),
    (3, 5, 7, 1, 2, 4, 6, 0),
    (4, 6, 0, 2, 5, 7, 1, 3),
    (5, 7, 1, 3, 4, 6, 0, 2),
    (6, 0, 2, 4, 7, 1, 3, 5),
    (7, 1, 3, 5, 6, 0, 2, 4),
)
# The official code's "s1 positions" at full resolution, which place hyper parameters at s2:
# one position per 4x4 tile for each channel group. For groups 2..7 they are not the positions
# that s1 really codes; that is harmless but decides which values feed the context, so it is kept.
HYPER_S1_POSITIONS = ((0, 0), (1, 1), (0, 1), (1, 0), (0, 2), (1, 3), (0, 3), (1, 2))


@dataclass(frozen=True)
class Scale:
    name: str
    index: int
    factor: int  # resolution divisor relative to y
    chunks: int  # channel chunks coded in turn at this scale


@dataclass(frozen=True)
class CodingStep:
    """One entropy-coded step. ``adaptor`` and ``gain`` index the model's adaptors and adaptive
    gains; ``None`` means the step is coded from the hyperprior alone (the first s1 step)."""

    index: int
    scale: Scale
    mask: int
    adaptor: int | None
    gain: int | None


SCALES = (Scale("s1", 0, 4, 2), Scale("s2", 1, 2, 4), Scale("s3", 2, 1, 8))


def _steps() -> tuple[CodingStep, ...]:
    s1, s2, s3 = SCALES
    steps = [CodingStep(0, s1, 0, None, None), CodingStep(1, s1, 1, 0, 0)]
    # The official code indexes the per-step adaptors with [i - 1], so the first step of s2 and
    # s3 uses the scale's LAST adaptor: a rotation (2, 0, 1) and (5, 0, 1, 2, 3, 4). Kept for
    # checkpoint compatibility. Adaptors are numbered 0 (s1), 1-3 (s2), 4-9 (s3), like the gains.
    for i in range(3):
        steps.append(CodingStep(len(steps), s2, i + 1, 1 + (i - 1) % 3, 1 + i))
    for i in range(6):
        steps.append(CodingStep(len(steps), s3, i + 2, 4 + (i - 1) % 6, 4 + i))
    return tuple(steps)


STEPS = _steps()
NUM_ADAPTORS = 10


def _phase_mask(h: int, w: int, row: int, col: int, period: int = 2) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[row::period, col::period] = True
    return m


def _pattern_mask(h: int, w: int, positions) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    for r, c in positions:
        m[r::4, c::4] = True
    return m


class SchedulePlan:
    """Masks and index maps for a latent of ``channels`` x ``height`` x ``width`` on ``device``.

    Masks are boolean tensors of shape (1, C, h, w) at the resolution of their scale. Build plans
    with :func:`plan_for`, which caches them per shape and device.
    """

    def __init__(self, channels: int, height: int, width: int, device: torch.device):
        c, h, w = channels, height, width
        if c % 8 or h % 4 or w % 4:
            raise ValueError(f"latent {c}x{h}x{w}: channels must divide by 8, sizes by 4")
        self.channels, self.height, self.width = c, h, w
        h2, w2, h1, w1 = h // 2, w // 2, h // 4, w // 4

        def per_chunk(masks):
            reps = c // len(masks)
            return torch.cat([m.expand(reps, *m.shape) for m in masks]).unsqueeze(0)

        checker = (torch.arange(h1)[:, None] + torch.arange(w1)[None, :]) % 2 == 0
        s1_masks = [per_chunk([checker, ~checker]), per_chunk([~checker, checker])]
        quads = [_phase_mask(h2, w2, r, cc) for r, cc in S1_PHASES]
        s2_masks = [per_chunk([quads[p] for p in perm]) for perm in S2_STEP_PERMS]
        pats = [_pattern_mask(h, w, p) for p in S3_PATTERNS]
        s3_masks = [per_chunk([pats[p] for p in perm]) for perm in S3_STEP_PATTERNS]
        self.masks = [[m.to(device) for m in ms] for ms in (s1_masks, s2_masks, s3_masks)]

        # s2 positions at full resolution (union of the first two s3 masks) and s1 positions on
        # the s2 grid (the first s2 mask).
        self.s2_in_s3 = self.masks[2][0] | self.masks[2][1]
        self.s1_in_s2 = self.masks[1][0]

        # Hyper parameters for the s2 positions that s1 did not code: the official code reads them
        # at full resolution from "s2 minus s1" positions (see HYPER_S1_POSITIONS) and writes them,
        # in flat (channel, row, column) order, to the non-s1 positions of the s2 grid.
        s1_full = per_chunk([_pattern_mask(h, w, [p]) for p in HYPER_S1_POSITIONS])[0]
        src = (self.s2_in_s3[0].cpu() & ~s1_full).flatten().nonzero().squeeze(1)
        dst = (~self.s1_in_s2[0].cpu()).flatten().nonzero().squeeze(1)
        assert src.numel() == dst.numel()
        self.hyper_s2_src = src.to(device)
        self.hyper_s2_dst = dst.to(device)

        # Which scale codes each element of y (0 = s1, 1 = s2, 2 = s3): the rate of y separates
        # into per-scale rates through this map.
        s1_in_s3 = self.up(self.up(torch.ones(1, c, h1, w1, device=device), SCALES[1]), SCALES[2])
        scale_map = torch.full((1, c, h, w), 2, dtype=torch.uint8, device=device)
        scale_map[self.s2_in_s3] = 1
        scale_map[s1_in_s3.bool()] = 0
        self.scale_map = scale_map

    # -- moving between scales -----------------------------------------------------------------
    @staticmethod
    def _take(x: torch.Tensor, phases) -> torch.Tensor:
        n = len(phases)
        parts = x.chunk(n, dim=1)
        return torch.cat([p[:, :, r::2, c::2] for p, (r, c) in zip(parts, phases)], dim=1)

    @staticmethod
    def _put(x: torch.Tensor, phases) -> torch.Tensor:
        b, c, h, w = x.shape
        out = x.new_zeros(b, c, 2 * h, 2 * w)
        k = c // len(phases)
        for j, (r, cc) in enumerate(phases):
            out[:, j * k : (j + 1) * k, r::2, cc::2] = x[:, j * k : (j + 1) * k]
        return out

    def down(self, x: torch.Tensor, scale: Scale) -> torch.Tensor:
        """Sub-sample a full-resolution tensor to ``scale``'s positions and resolution."""
        if scale.factor >= 2:
            x = self._take(x, S2_PHASES)
        if scale.factor == 4:
            x = self._take(x, S1_PHASES)
        return x

    def up(self, x: torch.Tensor, scale: Scale) -> torch.Tensor:
        """Scatter a tensor of the scale coarser than ``scale`` into ``scale``'s grid (zeros at
        the positions that the coarser scale does not hold)."""
        return self._put(x, S1_PHASES if scale.index == 1 else S2_PHASES)

    def hyper(self, params: torch.Tensor, scale: Scale) -> torch.Tensor:
        """Hyperprior parameters for the positions that ``scale`` adds (zeros elsewhere)."""
        if scale.index == 0:
            return self.down(params, scale)
        if scale.index == 1:
            return self.hyper_s2(params)
        return params.masked_fill(self.s2_in_s3, 0.0)

    def hyper_s2(self, params: torch.Tensor) -> torch.Tensor:
        b, c, h, w = params.shape
        out = params.new_zeros(b, c * (h // 2) * (w // 2))
        out[:, self.hyper_s2_dst] = params.reshape(b, -1)[:, self.hyper_s2_src]
        return out.view(b, c, h // 2, w // 2)

    # -- the coded symbols of a step -----------------------------------------------------------
    @staticmethod
    def combine(x: torch.Tensor, scale: Scale) -> torch.Tensor:
        """Dense (B, C/k, h, w) tensor of the one chunk each position codes at this step."""
        b, c, h, w = x.shape
        return x.view(b, scale.chunks, c // scale.chunks, h, w).sum(1)

    @staticmethod
    def spread(x: torch.Tensor, scale: Scale) -> torch.Tensor:
        """Inverse of :meth:`combine` before masking: repeat the chunk over all channels."""
        return x.repeat(1, scale.chunks, 1, 1)


# Plans by (channels, height, width, device), the oldest dropped beyond PLAN_CACHE_SIZE.
PLAN_CACHE_SIZE = 32
_PLANS: dict[tuple[int, int, int, str], SchedulePlan] = {}


def plan_for(y_shape: torch.Size | tuple, device: torch.device | str) -> SchedulePlan:
    """The (cached) plan for a latent of shape (B, C, H, W) on ``device``.

    The cache serves training and inference alike, so its tensors are built outside inference
    mode: a plan first made under ``torch.inference_mode`` (evaluation) must still be usable by
    a later training forward, which saves the masks for the backward.

    Under ``torch.compile`` a cached plan is a plain dictionary look-up that dynamo traces (and
    guards); building one is not traceable (``nonzero`` in the index maps), so build the plans
    of a run eagerly before its first compiled forward (:meth:`hpcm.codec.model.HPCM.prepare`).
    A ``functools.lru_cache`` would not do: dynamo ignores it and traces the construction.
    """
    _, c, h, w = y_shape
    key = (int(c), int(h), int(w), str(device))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= PLAN_CACHE_SIZE:
            del _PLANS[next(iter(_PLANS))]
        with torch.inference_mode(False):
            plan = _PLANS[key] = SchedulePlan(c, h, w, torch.device(device))
    return plan
