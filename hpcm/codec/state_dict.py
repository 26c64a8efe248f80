"""HPCM state dicts in any layout, before a model holds them: the official HPCM key names, the
keys under which training tools wrap the weights, the project checkpoint's format tag, and the
check that a state dict fits a model. No model is built here (:meth:`hpcm.codec.model.HPCM.
from_state_dict` builds one), so the model module may use all of it."""

from __future__ import annotations

from typing import Any

# The tag of a project checkpoint (hpcm.codec.checkpoint.model_checkpoint writes it).
CHECKPOINT_FORMAT = "hpcm-balanced"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the requested model."""


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


# State-dict keys of the coding tables in checkpoints written before the entropy models owned
# them (the pretrained tiny_base, project runs): old key -> key now. Loading renames them.
LEGACY_TABLE_KEYS = {
    "y_scale_table": "y_entropy.scale_table",
    "y_cdf": "y_entropy._quantized_cdf",
    "y_cdf_length": "y_entropy._cdf_length",
    "y_offset": "y_entropy._offset",
    "z_cdf": "z_entropy._quantized_cdf",
    "z_cdf_length": "z_entropy._cdf_length",
    "z_offset": "z_entropy._offset",
}


def rename_legacy_tables(state_dict: dict, prefix: str = "") -> dict:
    """``state_dict`` with the table keys of :data:`LEGACY_TABLE_KEYS` renamed (in place
    when it is a dict that may be changed, as ``load_state_dict`` passes one)."""
    for old, new in LEGACY_TABLE_KEYS.items():
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
    return state_dict


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


def check_fits(model: Any, state: dict, strict: bool) -> None:
    """A one-line :class:`CheckpointError` unless ``state`` (our layout) holds every parameter
    of ``model`` in its shape; ``strict=False`` (official checkpoints) lets the adaptive gains
    be missing. Coding tables are never required: ``update()`` rebuilds them."""
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
