"""Checkpoint files: atomic writes, safe loading, and the official HPCM key layout."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import torch

from hpcm.codec.model import HPCM, MODEL_CONFIGS, HPCMConfig, rename_legacy_tables
from hpcm.files import atomic_write


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Save with ``torch.save`` so that ``path`` is either the old file or the complete new one
    (:func:`hpcm.files.atomic_write`); the directory is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: torch.save(obj, file))


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint without executing arbitrary pickled code (``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# Official HPCM key prefixes -> this project's (longest match first). Inside blocks the
# official names (branch.N, pconv, conv_q ...) are kept, so prefixes are all that differ.
_OFFICIAL_PREFIXES = [
    ("g_a.branch.", "g_a."),
    ("g_s.branch.", "g_s."),
    ("h_a.branch.", "h_a."),
    ("h_s.branch.", "h_s."),
    ("h_a.", "h_a."),  # HPCM_1B: h_a and h_s are plain Sequentials
    ("h_s.", "h_s."),
    ("y_spatial_prior_adaptor_list_s1.0.", "adaptors.0."),
    *((f"y_spatial_prior_adaptor_list_s2.{j}.", f"adaptors.{1 + j}.") for j in range(3)),
    *((f"y_spatial_prior_adaptor_list_s3.{j}.", f"adaptors.{4 + j}.") for j in range(6)),
    ("y_spatial_prior_s1_s2.branch_1.", "priors.0.trunk."),
    ("y_spatial_prior_s1_s2.branch_2.", "priors.0.head."),
    ("y_spatial_prior_s3.branch_1.", "priors.1.trunk."),
    ("y_spatial_prior_s3.branch_2.", "priors.1.head."),
    ("adaptive_params_list.", "adaptive_params."),
    ("attn_s1.", "attn.0."),
    ("attn_s2.", "attn.1."),
    ("attn_s3.", "attn.2."),
    ("context_net.", "context_net."),
    ("means_hyper", "z_means"),
    ("scales_hyper", "z_scales"),
]
# Official buffers that the project rebuilds (coding tables) or holds as constants.
_OFFICIAL_SKIPPED = (
    "scale_table",
    "quantized_cdf_z",
    "cdf_length_z",
    "offset_z",
    "quantized_cdf_y",
    "cdf_length_y",
    "offset_y",
    "entropy_estimation.",
)


def is_official_state_dict(state_dict: dict) -> bool:
    return "means_hyper" in state_dict and any(k.startswith("g_a.") for k in state_dict)


def official_model_name(state_dict: dict) -> str:
    """Which official model an official state dict holds, from its keys: HPCM_1B names its
    transform stages (``g_a.g_a_down1``), HPCM_Base_PhiContext has no ``attn_s1``, and
    HPCM_Large has eight PConvRBs in g_a's last stage (``g_a.branch.12``) where Base has four."""
    if any(k.startswith("g_a.g_a_down1.") for k in state_dict):
        return "hpcm_1b"
    if not any(k.startswith("attn_s1.") for k in state_dict):
        return "hpcm_phi_context"
    if any(k.startswith("g_a.branch.12.") for k in state_dict):
        return "hpcm_large"
    return "hpcm_base"


def _staged_prefixes(state_dict: dict) -> list[tuple[str, str]]:
    """HPCM_1B's transforms are named stages (``g_a.g_a_down1``, ``g_a.g_a_chunk1.J`` ... and
    ``g_s.g_s_chunk4``, ``g_s.g_s_up4`` ... ``g_s.g_s_up1``); ours are flat Sequentials in the
    same order of application. The number of blocks of each stage is read from the keys."""

    def blocks(stage: str) -> int:
        head = stage + "."
        found = {int(k[len(head) :].split(".")[0]) for k in state_dict if k.startswith(head)}
        return max(found, default=-1) + 1

    pairs = []
    for t, order in (("g_a", ("down", "chunk")), ("g_s", ("chunk", "up"))):
        stages = range(1, 5) if t == "g_a" else range(4, 0, -1)
        index = 0
        for k in stages:
            for part in order:
                stage = f"{t}.{t}_{part}{k}"
                if part in ("down", "up"):
                    pairs.append((stage + ".", f"{t}.{index}."))
                    index += 1
                else:
                    n = blocks(stage)
                    pairs += [(f"{stage}.{j}.", f"{t}.{index + j}.") for j in range(n)]
                    index += n
    return pairs


def convert_official_state_dict(state_dict: dict) -> dict:
    """Rename an official HPCM state dict to this project's layout (tables are dropped and
    rebuilt by ``update()``). Unknown keys raise ``KeyError`` naming them."""
    out, unknown = {}, []
    prefixes = _OFFICIAL_PREFIXES
    if official_model_name(state_dict) == "hpcm_1b":
        prefixes = _staged_prefixes(state_dict) + prefixes
    for key, value in state_dict.items():
        if key.startswith(_OFFICIAL_SKIPPED):
            continue
        for old, new in prefixes:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"not an HPCM key: {', '.join(unknown[:5])}")
    return out


CHECKPOINT_FORMAT = "hpcm-balanced"
CHECKPOINT_VERSION = 1


def model_checkpoint(model) -> dict:
    """The model part of a project checkpoint; trainers add their own keys (epoch, optimizer
    state ...) beside it. Everything in it loads with ``weights_only=True``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_name": model.name,
        "model_config": model.config.to_dict(),
        "state_dict": model.state_dict(),
    }


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the requested model."""


# Checkpoints shipped with the package, named ``pretrained:NAME`` (see pretrained/README.md).
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
PRETRAINED_PREFIX = "pretrained:"


def checkpoint_path(source: str | os.PathLike) -> Path:
    """A checkpoint file: ``pretrained:NAME`` is ``hpcm/codec/pretrained/NAME.pth.tar``."""
    text = str(source)
    if not text.startswith(PRETRAINED_PREFIX):
        return Path(source)
    name = text[len(PRETRAINED_PREFIX) :]
    path = PRETRAINED_DIR / f"{name}.pth.tar"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".pth.tar") for p in PRETRAINED_DIR.glob("*.pth.tar"))
        raise CheckpointError(f"unknown pretrained model {name!r}; shipped: {', '.join(known)}")
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The dict in a checkpoint file (or ``pretrained:NAME``), loaded with ``weights_only=True``
    (no pickled code runs).

    Every failure is one :class:`CheckpointError` line: a missing file, bytes that are not a
    PyTorch file of tensors and plain data, or a file that holds something other than a dict.
    """
    path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = safe_torch_load(path)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_error(error)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"cannot read checkpoint {path}: it holds a {type(data).__name__}")
    return data


def _load_error(error: Exception) -> str:
    """The informative part of torch.load's (often many-line) message."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # weights_only refused the bytes: not plain data
        detail = text.split("WeightsUnpickler error:")[1].split("Check the documentation")[0]
        return f"not a PyTorch file of tensors and plain data: {' '.join(detail.split())}"
    return (text.strip().splitlines() or [type(error).__name__])[0]


def check_same_model(source: str, name: str, config: HPCMConfig, model: HPCM) -> None:
    """The one compatibility check between a checkpoint's model (``name``, ``config``) and the
    model a run or a caller builds: the same name and the same widths and depths."""
    if name != model.name:
        raise CheckpointError(f"{source} holds model {name!r}, this run builds model={model.name}")
    if config != model.config:
        ours = model.config.to_dict()
        diff = [
            f"{k}={v} (this run: {ours[k]})" for k, v in config.to_dict().items() if v != ours[k]
        ]
        raise CheckpointError(f"{source} holds model {name!r} with other sizes: {', '.join(diff)}")


# Keys under which checkpoints keep the weights: this project and CompressAI's examples
# ("state_dict"), CompressAI-Trainer ("model_state_dict"); compressai.utils.eval_model also
# looks for "network". A dict with none of them is taken as the state dict itself.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "network")


def unwrap_state_dict(source: dict) -> dict:
    """The state dict inside a checkpoint dict of any of the layouts in ``STATE_DICT_KEYS``."""
    for key in STATE_DICT_KEYS:
        if isinstance(source.get(key), dict):
            return source[key]
    return source


def is_hpcm_state_dict(state: dict) -> bool:
    """Whether ``state`` has the keys of an HPCM state dict, in the official or our layout."""
    ours = "z_means" in state and any(k.startswith("g_a.") for k in state)
    return ours or is_official_state_dict(state)


@cache
def _meta_model(name: str) -> HPCM:
    """A model without storage, for comparing parameter shapes."""
    with torch.device("meta"):
        return HPCM(MODEL_CONFIGS[name], name=name)


def infer_model_name(state: dict, strict: bool = True) -> str | None:
    """The first model of :data:`MODEL_CONFIGS` whose parameters ``state`` fits, or ``None``."""
    for name in MODEL_CONFIGS:
        try:
            _check_fits(_meta_model(name), state, strict)
        except CheckpointError:
            continue
        return name
    return None


def load_model(source, name: str | None = None, device=None, update: bool = True) -> HPCM:
    """A ready-to-code model (eval mode, coding tables built) from a checkpoint.

    ``source`` is a path or an already loaded dict: a project checkpoint (see
    :func:`model_checkpoint`), or a state dict in this project's or the official HPCM layout,
    bare or under ``state_dict``, ``model_state_dict`` (CompressAI-Trainer) or ``network``. For
    a state dict, ``name`` says which model; by default the model is found from the parameter
    shapes. Released official checkpoints lack ``adaptive_params_list.*``; those gains then keep
    their initial 1. Files are loaded with ``weights_only=True``: no pickled code runs.
    """
    if isinstance(source, (str, os.PathLike)):
        source = read_checkpoint(source)
    if not isinstance(source, dict):
        raise CheckpointError("a checkpoint must be a dict (project checkpoint or state dict)")
    if source.get("format") == CHECKPOINT_FORMAT:
        ckpt_name = source["model_name"]
        if name is not None and name != ckpt_name:
            raise CheckpointError(f"checkpoint holds model {ckpt_name!r}, not {name!r}")
        model = HPCM(HPCMConfig.from_dict(source["model_config"]), name=ckpt_name)
        state, strict = rename_legacy_tables(dict(source["state_dict"])), True
    else:
        state = unwrap_state_dict(source)
        official = is_official_state_dict(state)
        if not is_hpcm_state_dict(state):
            raise CheckpointError("neither a project checkpoint nor an HPCM state dict")
        state = rename_legacy_tables(dict(state))
        guess = official_model_name(state) if official else None  # from the keys: cheap
        state = convert_official_state_dict(state) if official else state
        strict = not official
        # When no model fits, hpcm_base's check below names the first mismatch.
        name = name or guess or infer_model_name(state, strict) or "hpcm_base"
        if name not in MODEL_CONFIGS:
            raise CheckpointError(f"unknown model {name!r}; choose from {', '.join(MODEL_CONFIGS)}")
        model = HPCM(MODEL_CONFIGS[name], name=name)
    _check_fits(model, state, strict)
    model.load_state_dict(state, strict=False)
    if device is not None:
        model.to(device)
    model.eval()
    if update:
        model.update()
    return model


def _check_fits(model, state: dict, strict: bool) -> None:
    own = model.state_dict()
    # Coding tables (built by update() when absent) and the GGM constants are optional.
    tables = {k for k in own if k.startswith(("y_entropy.", "z_entropy.", "entropy."))}
    missing = [k for k in own if k not in state and k not in tables]
    if not strict:  # official checkpoints may lack the adaptive gains (they stay 1)
        missing = [k for k in missing if not k.startswith("adaptive_params.")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and k not in tables and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs "
                f"{tuple(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"checkpoint does not fit model {model.name!r}: " + "; ".join(parts))
