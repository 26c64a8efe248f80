"""The HPCM codec (Li et al., "Learned Image Compression with Hierarchical Progressive Context
Modeling", ICCV 2025, arXiv 2507.19125).

``forward`` (training and likelihood estimation), ``compress`` and ``decompress`` all walk the
one schedule of :mod:`hpcm.codec.schedule`; a per-step callback decides what a step does with its
entropy parameters (quantize and measure, encode, or decode).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hpcm.codec.entropy import (
    CodingTables,
    GGMChannelPrior,
    GGMConditional,
    GGMEntropyModel,
    decode_symbols,
    encode_symbols,
    scale_table,
)
from hpcm.codec.layers import (
    Conv1x1,
    DWConvRB,
    PConvRB,
    SpatialPrior,
    WindowCrossAttention,
    conv1x1,
    conv2x2_down,
    conv4x4_down,
    deconv2x2_up,
    deconv4x4_up,
)
from hpcm.codec.numerics import coding_numerics
from hpcm.codec.schedule import NUM_ADAPTORS, SCALES, STEPS, CodingStep, SchedulePlan, plan_for
from hpcm.codec.state_dict import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_fits,
    convert_official_state_dict,
    is_hpcm_state_dict,
    is_official_state_dict,
    official_model_name,
    rename_legacy_tables,
    unwrap_state_dict,
)

if TYPE_CHECKING:
    from hpcm.codec.backend import RansDecoder

# Image sides must be multiples of this: y is 1/16 of the image and the s1 attention windows
# (4x4 at 1/4 of y) must tile it.
SIZE_MULTIPLE = 256
# y is 1/16 of the (padded) image (g_a), z 1/64 (h_a down-samples by 4 more).
Y_DOWNSAMPLING, Z_DOWNSAMPLING = 16, 64


def padded_size(h: int, w: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """The size :func:`pad_to_multiple` gives an ``h`` x ``w`` image."""
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def z_size(h: int, w: int) -> tuple[int, int]:
    """The spatial size of ``z`` for an ``h`` x ``w`` image (padded first, as the codec does)."""
    hp, wp = padded_size(h, w)
    return hp // Z_DOWNSAMPLING, wp // Z_DOWNSAMPLING


@dataclass(frozen=True)
class HPCMConfig:
    """Widths, depths and the context update. The defaults are HPCM-Base; see
    :data:`MODEL_CONFIGS`. Transforms are stages of PConvRBs between 2x re-samplings."""

    M: int = 320  # latent channels of y
    N: int = 256  # channels of z
    g_channels: tuple[int, int, int] = (96, 192, 384)
    g_blocks: tuple[int, int, int] = (2, 2, 4)  # PConvRBs of g_a at each of g_channels
    g_s_blocks: tuple[int, int, int] | None = None  # the same for g_s; None: as g_blocks
    g_latent_blocks: int = 0  # PConvRBs at M channels: end of g_a, start of g_s
    g_outer_kernel: int = 4  # first g_a / last g_s re-sampling: 4 (4x4, padding 1) or 2 (2x2)
    h_channels: int | None = None  # width between the two hyper re-samplings; None: N
    h_blocks: tuple[int, int] = (1, 3)  # PConvRB before/after the first hyper down-sampling
    adaptor_blocks: tuple[int, int, int] = (0, 0, 0)  # DWConvRBs per s1/s2/s3 adaptor; 0: 1x1
    prior_s12_blocks: tuple[int, int] = (2, 1)  # DWConvRB in trunk and head, s1/s2 prior
    prior_s3_blocks: tuple[int, int] = (3, 2)
    prior_tail_blocks: int = 0  # DWConvRBs at 2M channels after each prior's projection
    # Progressive context after each step: "attention" (window cross-attention of the step's
    # entropy parameters psi to the old context, HPCM-Base/Large) or "phi" (psi itself, the
    # official HPCM_Base_PhiContext and HPCM_1B).
    context: str = "attention"
    attn_windows: tuple[int, int, int] = (4, 8, 8)
    num_heads: int = 32
    mlp_ratio: int = 4
    partial_ratio: int = 4
    beta: float = 1.5

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}; choose from {', '.join(CONTEXTS)}")
        if self.g_outer_kernel not in (2, 4):
            raise ValueError(f"g_outer_kernel must be 2 or 4, got {self.g_outer_kernel}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HPCMConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


CONTEXTS = ("attention", "phi")

_TINY = HPCMConfig(
    M=32,
    N=32,
    g_channels=(16, 32, 64),
    g_blocks=(1, 1, 1),
    h_blocks=(1, 1),
    prior_s12_blocks=(1, 1),
    prior_s3_blocks=(1, 1),
    num_heads=8,
)

MODEL_CONFIGS: dict[str, HPCMConfig] = {
    "hpcm_base": HPCMConfig(),
    "hpcm_large": HPCMConfig(g_blocks=(2, 2, 8), prior_s12_blocks=(2, 2), prior_s3_blocks=(4, 3)),
    # HPCM-Base without the cross-attention: the context is the previous step's psi.
    "hpcm_phi_context": HPCMConfig(context="phi"),
    # "Scaling Learned Image Compression Models up to 1 Billion" (arXiv 2508.09075), the
    # official src/models/HPCM_1B.py: phi context, four 2x2 stages in each transform, deep
    # DWConvRB adaptors and priors (../shared/spec/hpcm-family.md).
    "hpcm_1b": HPCMConfig(
        M=512,
        g_channels=(192, 384, 768),
        g_blocks=(3, 9, 3),
        g_s_blocks=(3, 3, 9),
        g_latent_blocks=3,
        g_outer_kernel=2,
        h_channels=512,
        h_blocks=(4, 9),
        adaptor_blocks=(5, 5, 7),
        prior_s12_blocks=(5, 3),
        prior_s3_blocks=(6, 4),
        prior_tail_blocks=2,
        context="phi",
        partial_ratio=2,
    ),
    # Small widths for CPU tests and quick experiments; same schedule and entropy models.
    "tiny": _TINY,
    "tiny_phi": replace(_TINY, context="phi"),
}


def build_model(name: str, **overrides) -> HPCM:
    """Build an untrained model by name (see :data:`MODEL_CONFIGS`); keyword arguments
    override fields of its :class:`HPCMConfig` (e.g. ``M=64`` for a wider tiny)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_CONFIGS)}")
    config = MODEL_CONFIGS[name]
    if overrides:
        config = HPCMConfig.from_dict({**config.to_dict(), **overrides})
    return HPCM(config, name=name)


class Transform(nn.Sequential):
    """A transform (g_a, g_s, h_a, h_s): a Sequential whose residual blocks can be recomputed in
    the backward instead of keeping their activations (``checkpoint_blocks``, for training large
    models; ``torch.utils.checkpoint``, non-reentrant). The results are the same either way."""

    checkpoint_blocks: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recompute = self.checkpoint_blocks and torch.is_grad_enabled()
        for module in self:
            if recompute and isinstance(module, PConvRB):
                x = checkpoint(module, x, use_reentrant=False)
            else:
                x = module(x)
        return x


def _pconv_stage(ch: int, n: int, cfg: HPCMConfig, entropy_path: bool = False) -> list[nn.Module]:
    # Only the entropy-parameter path (h_s and the context model) must give the same floats at
    # any thread count; the transforms keep oneDNN's convolutions, like the official code.
    return [PConvRB(ch, cfg.partial_ratio, cfg.mlp_ratio, entropy_path) for _ in range(n)]


def _analysis(cfg: HPCMConfig) -> Transform:
    widths = (*cfg.g_channels, cfg.M)
    blocks = (*cfg.g_blocks, cfg.g_latent_blocks)
    first = conv4x4_down if cfg.g_outer_kernel == 4 else conv2x2_down
    layers, previous = [], 3
    for i, (ch, n) in enumerate(zip(widths, blocks)):
        layers += [(first if i == 0 else conv2x2_down)(previous, ch), *_pconv_stage(ch, n, cfg)]
        previous = ch
    return Transform(*layers)


def _synthesis(cfg: HPCMConfig) -> Transform:
    widths = (*cfg.g_channels, cfg.M)
    blocks = (*(cfg.g_s_blocks or cfg.g_blocks), cfg.g_latent_blocks)
    last = deconv4x4_up if cfg.g_outer_kernel == 4 else deconv2x2_up
    layers = []
    for i in reversed(range(len(widths))):
        out = widths[i - 1] if i else 3
        layers += [
            *_pconv_stage(widths[i], blocks[i], cfg),
            (deconv2x2_up if i else last)(widths[i], out),
        ]
    return Transform(*layers)


def _hyper_analysis(cfg: HPCMConfig) -> Transform:
    M, N, H = cfg.M, cfg.N, cfg.h_channels or cfg.N
    return Transform(
        *_pconv_stage(M, cfg.h_blocks[0], cfg),
        conv2x2_down(M, H),
        *_pconv_stage(H, cfg.h_blocks[1], cfg),
        conv2x2_down(H, N),
    )


def _hyper_synthesis(cfg: HPCMConfig) -> Transform:
    M, N, H = cfg.M, cfg.N, cfg.h_channels or cfg.N
    return Transform(
        deconv2x2_up(N, H),
        *_pconv_stage(H, cfg.h_blocks[1], cfg, entropy_path=True),
        deconv2x2_up(H, 2 * M),
        *_pconv_stage(2 * M, cfg.h_blocks[0], cfg, entropy_path=True),
    )


def _adaptor(cfg: HPCMConfig, blocks: int) -> nn.Module:
    C3 = 3 * cfg.M
    if blocks == 0:
        return conv1x1(C3, C3)
    return nn.Sequential(*(DWConvRB(C3) for _ in range(blocks)))


def _context_model(cfg: HPCMConfig) -> dict[str, nn.Module]:
    """The context model: one adaptor and one adaptive channel gain per non-hyper step, a prior
    shared by s1 and s2 and one for s3, a cross-attention per scale (attention context only),
    and a 1x1 context transition between scales."""
    M, C3 = cfg.M, 3 * cfg.M
    scale_of_adaptor = [0] + [1] * 3 + [2] * 6  # adaptors 0 (s1), 1-3 (s2), 4-9 (s3)
    assert len(scale_of_adaptor) == NUM_ADAPTORS
    parts = {
        "adaptors": nn.ModuleList(_adaptor(cfg, cfg.adaptor_blocks[s]) for s in scale_of_adaptor),
        "adaptive_params": nn.ParameterList(
            nn.Parameter(torch.ones(1, C3, 1, 1)) for _ in range(NUM_ADAPTORS)
        ),
        "priors": nn.ModuleList(
            SpatialPrior(C3, 2 * M, *blocks, cfg.prior_tail_blocks)
            for blocks in (cfg.prior_s12_blocks, cfg.prior_s3_blocks)
        ),
    }
    if cfg.context == "attention":
        parts["attn"] = nn.ModuleList(
            WindowCrossAttention(2 * M, w, cfg.num_heads) for w in cfg.attn_windows
        )
    parts["context_net"] = nn.ModuleList(conv1x1(2 * M, 2 * M) for _ in range(2))
    return parts


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def pad_to_multiple(x: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> torch.Tensor:
    """Zero-pad (B, C, H, W) so that H and W are multiples of ``multiple``, centred (the extra
    pixel of an odd padding goes to the bottom/right), as the official test protocol does."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def crop_center(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    h, w = size
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


class UniformNoise:
    """The training-mode quantization noise of a model: uniform in [-0.5, 0.5) (the rate proxy
    of Balle et al., ICLR 2017), drawn and added in fp32 whatever the input's dtype (bf16 would
    round 150.3 + 0.37 to 150). Owned by the model (``model.noise``); nothing else draws it."""

    def __init__(self) -> None:
        self.batch: int | None = None  # see of_batch

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.batch is None or self.batch <= x.shape[0]:
            return x + torch.empty_like(x).uniform_(-0.5, 0.5)
        shape = (self.batch, *x.shape[1:])
        noise = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
        return x + noise.uniform_(-0.5, 0.5)[: x.shape[0]]

    @contextmanager
    def of_batch(self, batch_size: int) -> Iterator[None]:
        """Within the block, a forward of fewer than ``batch_size`` images draws the noise of a
        ``batch_size`` batch and keeps its first images' part: with the RNG replayed, the first
        images of a batch get exactly the noise they had in the whole batch (the Balanced
        sub-batch update re-evaluates them this way)."""
        previous, self.batch = self.batch, int(batch_size)
        try:
            yield
        finally:
            self.batch = previous


StepFn = Callable[
    [CodingStep, SchedulePlan, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]


@dataclass
class _ScaleSums:
    """Per-scale sums of masked step tensors, assembled to full resolution at the end."""

    sums: list = field(default_factory=lambda: [None, None, None])

    def add(self, scale_index: int, t: torch.Tensor) -> None:
        s = self.sums[scale_index]
        self.sums[scale_index] = t if s is None else s + t

    def full(self, plan: SchedulePlan) -> torch.Tensor:
        out = self.sums[0]
        for scale in SCALES[1:]:
            out = plan.up(out, scale) + self.sums[scale.index]
        return out


class HPCM(nn.Module):
    """HPCM codec. ``forward(x)`` returns ``{"x_hat", "likelihoods": {"y", "z"}}`` (CompressAI's
    convention); ``compress``/``decompress`` produce and read real rANS bitstreams after
    ``update()`` has built the coding tables of the entropy models ``y_entropy`` and
    ``z_entropy`` (as a CompressAI ``CompressionModel`` updates its entropy models)."""

    def __init__(self, config: HPCMConfig | None = None, name: str = "custom"):
        super().__init__()
        cfg = config or HPCMConfig()
        self.config, self.name = cfg, name
        # Coding entropy models first: the float tensors of the state dict keep the order that
        # weights_fingerprint() hashes (z_means, z_scales, the y scale table, the transforms ...).
        self.y_entropy = GGMConditional(cfg.beta)
        self.z_entropy = GGMChannelPrior(cfg.beta)
        self.g_a = _analysis(cfg)
        self.g_s = _synthesis(cfg)
        self.h_a = _hyper_analysis(cfg)
        self.h_s = _hyper_synthesis(cfg)
        for part, module in _context_model(cfg).items():
            self.add_module(part, module)
        # z prior: a generalized Gaussian per channel with learned mean and scale.
        self.z_means = nn.Parameter(torch.zeros(1, cfg.N, 1, 1))
        self.z_scales = nn.Parameter(torch.ones(1, cfg.N, 1, 1))
        self.entropy = GGMEntropyModel(cfg.beta)
        self.noise = UniformNoise()  # the training-mode quantization noise
        self.set_official_numerics(False)
        self._fingerprint: tuple[tuple[int, ...] | None, int] | None = None

    def update(self, scales: torch.Tensor | None = None, force: bool = False) -> bool:
        """Build the rANS tables of both entropy models (y on ``scales``, by default the official
        scale table; z from the learned z scales). Returns False when they exist already and
        ``force`` is not set."""
        table = scale_table() if scales is None else scales
        updated = self.y_entropy.update_scale_table(table, force)
        return self.z_entropy.update(self.z_scales, force) or updated

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        rename_legacy_tables(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weights_fingerprint(self) -> int:
        """CRC32 of every floating-point tensor of the state dict, in its order (the weights,
        the y scale table, the GGM constants): tells whether two models hold the same weights;
        ``.hpcm`` files carry it."""
        tensors = [t for t in self.state_dict().values() if t.is_floating_point() and t.numel()]
        # Cached until any tensor changes in place (an optimizer step, load_state_dict ...);
        # inference-mode tensors keep no version counter, so those are hashed every time.
        key = None if any(t.is_inference() for t in tensors) else tuple(t._version for t in tensors)
        if key is not None and self._fingerprint is not None and self._fingerprint[0] == key:
            return self._fingerprint[1]
        crc = 0
        for t in tensors:
            crc = zlib.crc32(t.detach().float().cpu().contiguous().numpy().tobytes(), crc)
        self._fingerprint = (key, crc)
        return crc

    @classmethod
    def from_state_dict(cls, state_dict: dict, name: str | None = None) -> HPCM:
        """A model with these weights, as CompressAI models offer (``Model.from_state_dict``).

        ``state_dict``: a project checkpoint (:func:`hpcm.codec.checkpoint.model_checkpoint`),
        or a state dict in this project's or the official HPCM layout, bare or under
        ``state_dict``, ``model_state_dict`` (CompressAI-Trainer) or ``network``. For a state
        dict, ``name`` says which model; by default the model is found from the parameter
        shapes. Released official checkpoints lack ``adaptive_params_list.*``; those gains then
        keep their initial 1. In eval mode; call ``update()`` before coding, as with CompressAI
        models.
        """
        source = state_dict
        if not isinstance(source, dict):
            raise CheckpointError("a checkpoint must be a dict (project checkpoint or state dict)")
        if source.get("format") == CHECKPOINT_FORMAT:
            ckpt_name = source["model_name"]
            if name is not None and name != ckpt_name:
                raise CheckpointError(f"checkpoint holds model {ckpt_name!r}, not {name!r}")
            model = cls(HPCMConfig.from_dict(source["model_config"]), name=ckpt_name)
            state, strict = rename_legacy_tables(dict(source["state_dict"])), True
        else:
            state = unwrap_state_dict(source)
            official = is_official_state_dict(state)
            if not is_hpcm_state_dict(state):
                raise CheckpointError("neither a project checkpoint nor an HPCM state dict")
            guess = official_model_name(state) if official else None  # from the keys: cheap
            if official:
                state = convert_official_state_dict(state)
            else:
                state = rename_legacy_tables(dict(state))
            strict = not official
            # When no model fits, hpcm_base's check below names the first mismatch.
            name = name or guess or infer_model_name(state, strict) or "hpcm_base"
            if name not in MODEL_CONFIGS:
                known = ", ".join(MODEL_CONFIGS)
                raise CheckpointError(f"unknown model {name!r}; choose from {known}")
            model = cls(MODEL_CONFIGS[name], name=name)
        check_fits(model, state, strict)
        model.load_state_dict(state, strict=False)
        return model.eval()

    def set_official_numerics(self, enabled: bool = False) -> None:
        """Choose how the model computes on the CPU.

        Default (``False``): the analysis and synthesis transforms run in channels-last memory
        format (about twice as fast with oneDNN), and the 1x1 convolutions of the entropy-
        parameter path (h_s and the context model) run as GEMMs, whose results do not depend on
        the thread count, so an encoder and a decoder with different thread settings agree.
        ``True``: every convolution is oneDNN's in NCHW format, exactly like the official
        implementation, whose reconstructions (and, rarely, bitstreams) then match ours bit for
        bit at the same thread count and, like its own, depend on that thread count.
        """
        for module in self.modules():
            if isinstance(module, Conv1x1):
                module.gemm = not enabled
        fmt = torch.contiguous_format if enabled else torch.channels_last
        self._set_formats(fmt, torch.contiguous_format)

    def set_memory_format(self, channels_last: bool) -> None:
        """One memory format for the whole model, the policy of ``trainer.channels_last``: every
        convolution weight, the input and the activations of the transforms and of the entropy-
        parameter path in channels-last (NHWC, ``True``) or NCHW (``False``) format.

        Without this call the model keeps the codec's CPU policy of
        :meth:`set_official_numerics`: transforms NHWC, entropy-parameter path NCHW. An encoder
        and its decoder must use the same policy (``load_model`` gives the codec's)."""
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self._set_formats(fmt, fmt)

    def _set_formats(self, transforms: torch.memory_format, entropy: torch.memory_format) -> None:
        self._transform_format, self._entropy_format = transforms, entropy
        self.to(memory_format=entropy)  # 4-D weights; the transforms' next
        for transform in (self.g_a, self.g_s):
            transform.to(memory_format=transforms)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the residual blocks of the four transforms in the backward instead of
        keeping their activations (:class:`Transform`): less memory, one more forward of the
        transforms per step, the same gradients."""
        for transform in (self.g_a, self.g_s, self.h_a, self.h_s):
            transform.checkpoint_blocks = enabled

    def _analysis(self, x: torch.Tensor) -> torch.Tensor:
        # The entropy path must see the same memory layout on the encoder and decoder sides.
        y = self.g_a(x.contiguous(memory_format=self._transform_format))
        return y.contiguous(memory_format=self._entropy_format)

    def _synthesis(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.g_s(y_hat.contiguous(memory_format=self._transform_format)).contiguous()

    # -- the one schedule walk -----------------------------------------------------------------
    def _prior_index(self, step: CodingStep) -> int:
        return 0 if step.scale.index < 2 else 1

    def _walk(self, params: torch.Tensor, step_fn: StepFn) -> torch.Tensor:
        """Run the 11 coding steps; ``step_fn`` returns each step's masked ``y_hat`` part.
        Returns the full-resolution ``y_hat``."""
        scales_all, means_all = params.chunk(2, 1)
        plan = plan_for(scales_all.shape, params.device)
        y_hat = _ScaleSums()
        context = psi = None
        for step in STEPS:
            scale = step.scale
            if step.adaptor is None:  # first step: the hyperprior alone
                psi = context = torch.cat(
                    (plan.hyper(scales_all, scale), plan.hyper(means_all, scale)), dim=1
                )
            else:
                if scale.index > 0 and y_hat.sums[scale.index] is None:  # entering a new scale
                    y_hat.sums[scale.index] = plan.up(y_hat.sums[scale.index - 1], scale)
                    ctx_s, ctx_m = context.chunk(2, 1)
                    context = torch.cat((plan.up(ctx_s, scale), plan.up(ctx_m, scale)), dim=1)
                    hyper = torch.cat(
                        (plan.hyper(scales_all, scale), plan.hyper(means_all, scale)), dim=1
                    )
                    context = self.context_net[scale.index - 1](context + hyper)
                inputs = torch.cat((context, y_hat.sums[scale.index]), dim=1)
                prior = self.priors[self._prior_index(step)]
                psi = prior(self.adaptors[step.adaptor](inputs), self.adaptive_params[step.gain])
                if self.config.context == "phi":  # the context is the step's psi
                    context = psi
                elif step.index < len(STEPS) - 1:  # the last update is never used
                    context = self.attn[scale.index](psi, context)
            scales, means = psi.chunk(2, 1)
            mask = plan.masks[scale.index][step.mask]
            y_hat.add(scale.index, step_fn(step, plan, scales, means, mask))
        return y_hat.sums[2]

    # -- training / estimation -----------------------------------------------------------------
    def prepare(self, image_shape: torch.Size | tuple, device: torch.device | str) -> None:
        """Build the schedule plan for images of ``image_shape`` (B, 3, H, W) on ``device`` now,
        eagerly. Call it before the first ``torch.compile``-d forward of a shape: the compiled
        forward then looks the plan up (traced, no graph break) instead of building it."""
        b, _, h, w = image_shape
        plan_for((b, self.config.M, h // 16, w // 16), device)  # y is 1/16 of the image

    def forward(self, x: torch.Tensor) -> dict:
        """Under autocast (bf16) the transforms and the context model run in low precision,
        but the residuals, the noise, the quantization and the likelihoods of y and z are
        computed in fp32: the rate the optimizers see is not rounded to bf16."""
        self._check_size(x)
        y = self._analysis(x).float()
        z = self.h_a(y)
        z_res = z.float() - self.z_means
        if self.training:
            z_hat = _ste_round(z_res) + self.z_means
            z_lik = self.entropy.likelihood(self.noise(z_res), self.z_scales)
        else:
            z_q = torch.round(z_res)
            z_hat = z_q + self.z_means
            z_lik = self.entropy.likelihood(z_q, self.z_scales)
        params = self.h_s(z_hat)
        plan = plan_for(y.shape, y.device)
        y_by_scale = [plan.down(y, s) for s in SCALES]
        residuals, step_scales = _ScaleSums(), _ScaleSums()
        quantize = _ste_round if self.training else torch.round

        def measure(step, plan, scales, means, mask):
            means = means.float() * mask
            res = (y_by_scale[step.scale.index] - means) * mask
            residuals.add(step.scale.index, res)
            step_scales.add(step.scale.index, scales.float() * mask)
            return quantize(res) + means

        y_hat = self._walk(params, measure)
        y_res = residuals.full(plan)
        y_res = self.noise(y_res) if self.training else torch.round(y_res)
        y_lik = self.entropy.likelihood(y_res, step_scales.full(plan))
        return {
            "x_hat": self._synthesis(y_hat),
            "likelihoods": {"y": y_lik, "z": z_lik},
            "y_scale_map": plan.scale_map,  # coding scale (0, 1, 2) of each element of y
        }

    # -- real bitstreams ---------------------------------------------------------------------------
    @staticmethod
    def _check_size(x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(
                f"HPCM needs image sides that are multiples of {SIZE_MULTIPLE}, got {h}x{w}: "
                "pad first (hpcm.codec.pad_to_multiple)"
            )

    @torch.no_grad()
    @coding_numerics()
    def compress(self, x: torch.Tensor) -> dict:
        """Encode a batch. Returns ``{"strings": [y_strings, z_strings], "shape": z size,
        "symbol_crc": [crc32 of each image's coded symbols]}``. Runs with the numeric settings
        pinned (:func:`hpcm.codec.numerics.coding_numerics`), whatever the caller's."""
        self._check_size(x)
        y_tables, z_tables = self.y_entropy.tables(), self.z_entropy.tables()
        y = self._analysis(x)
        z = self.h_a(y)
        z_q = torch.round(z - self.z_means)
        params = self.h_s(z_q + self.z_means)
        plan = plan_for(y.shape, y.device)
        y_by_scale = [plan.down(y, s) for s in SCALES]
        symbols, indexes = [], []

        def encode(step, plan, scales, means, mask):
            means = means * mask
            q = torch.round((y_by_scale[step.scale.index] - means) * mask)
            symbols.append(plan.combine(q, step.scale).flatten(1))
            indexes.append(
                self.y_entropy.build_indexes(plan.combine(scales * mask, step.scale)).flatten(1)
            )
            return q + means

        self._walk(params, encode)
        # One transfer to the host for all steps; one rANS stream per image for y, one for z.
        y_sym = torch.cat(symbols, 1).int().cpu()
        y_idx = torch.cat(indexes, 1).cpu()
        z_sym = z_q.int().cpu()
        z_idx = self.z_entropy.build_indexes(z_q.shape)
        strings = [[_encode(y_sym[b], y_idx[b], y_tables) for b in range(len(y_sym))]]
        strings.append([_encode(z_sym[b], z_idx[b], z_tables) for b in range(len(z_sym))])
        crcs = [_symbol_crc(z_sym[b], y_sym[b]) for b in range(len(y_sym))]
        return {"strings": strings, "shape": tuple(z.shape[-2:]), "symbol_crc": crcs}

    @torch.no_grad()
    @coding_numerics()
    def decompress(self, strings, shape) -> dict:
        """Decode ``strings = [y_strings, z_strings]`` with z size ``shape``. Returns
        ``{"x_hat": clamped reconstruction, "symbol_crc": [...]}``; numerics pinned as in
        :meth:`compress`."""
        y_tables, z_tables = self.y_entropy.tables(), self.z_entropy.tables()
        y_strings, z_strings = strings
        device = self.z_means.device
        n, (h, w) = len(y_strings), shape
        z_idx = self.z_entropy.build_indexes((1, self.config.N, h, w))
        z_q = torch.cat([decode_symbols(_decoder(z), z_idx, z_tables) for z in z_strings])
        z_q, y_decoders = z_q.to(device), [_decoder(y) for y in y_strings]
        y_decoded: list[list[torch.Tensor]] = [[] for _ in range(n)]
        params = self.h_s((z_q + self.z_means).contiguous(memory_format=self._entropy_format))

        def decode(step, plan, scales, means, mask):
            idx = self.y_entropy.build_indexes(plan.combine(scales * mask, step.scale)).cpu()
            q = []
            for b in range(n):
                sym = decode_symbols(y_decoders[b], idx[b : b + 1], y_tables)
                y_decoded[b].append(sym.flatten())
                q.append(sym)
            q = torch.cat(q).to(device)
            return (plan.spread(q, step.scale) + means) * mask

        y_hat = self._walk(params, decode)
        crcs = [_symbol_crc(z_q[b].cpu(), torch.cat(y_decoded[b])) for b in range(n)]
        return {"x_hat": self._synthesis(y_hat).clamp_(0, 1), "symbol_crc": crcs}


@cache
def _meta_model(name: str) -> HPCM:
    """A model without storage, for comparing parameter shapes."""
    with torch.device("meta"):
        return HPCM(MODEL_CONFIGS[name], name=name)


def infer_model_name(state: dict, strict: bool = True) -> str | None:
    """The first model of :data:`MODEL_CONFIGS` whose parameters ``state`` fits, or ``None``."""
    for name in MODEL_CONFIGS:
        try:
            check_fits(_meta_model(name), state, strict)
        except CheckpointError:
            continue
        return name
    return None


def _encode(symbols: torch.Tensor, indexes: torch.Tensor, tables: CodingTables) -> bytes:
    """One rANS stream of one image's symbols."""
    from hpcm.codec.backend import BufferedRansEncoder  # coding only (see hpcm.codec.backend)

    encoder = BufferedRansEncoder()
    encode_symbols(encoder, symbols, indexes, tables)
    return encoder.flush()


def _decoder(stream: bytes) -> RansDecoder:
    from hpcm.codec.backend import RansDecoder  # coding only (see hpcm.codec.backend)

    decoder = RansDecoder()
    decoder.set_stream(stream)
    return decoder


def _symbol_crc(z_symbols: torch.Tensor, y_symbols: torch.Tensor) -> int:
    crc = zlib.crc32(z_symbols.to(torch.int32).numpy().tobytes())
    return zlib.crc32(y_symbols.to(torch.int32).numpy().tobytes(), crc)
