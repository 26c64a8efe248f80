"""HPCM in CompressAI's model registry (``compressai.registry.MODELS``).

CompressAI-Trainer builds its model as ``MODELS[conf.model.name](**conf.hp)``; importing
this module (``import hpcm.codec.zoo``) registers every model of
:data:`~hpcm.codec.model.MODEL_CONFIGS`: ``hpcm_base``, ``hpcm_large``, ``hpcm_phi_context``,
``hpcm_1b``, ``hpcm_tiny`` and ``hpcm_tiny_phi`` (our ``tiny`` and ``tiny_phi``, prefixed
because the registry is shared with every other package).
Keyword arguments override fields of :class:`~hpcm.codec.model.HPCMConfig`, and each entry has
``from_state_dict`` as CompressAI's model classes do.

``compressai.utils.eval_model`` builds checkpoints from its own zoo table, not from the registry;
use ``evaluate.py`` (the official HPCM protocol) or ``hpcm.load_model`` there.
"""

from __future__ import annotations

from hpcm.codec.backend import MODELS, register_model
from hpcm.codec.model import HPCM, MODEL_CONFIGS, build_model

REGISTRY_PREFIX = "hpcm_"


class ModelFactory:
    """Builds one family member: ``factory(**overrides)`` or ``factory.from_state_dict(sd)``."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, **overrides) -> HPCM:
        return build_model(self.name, **overrides)

    def from_state_dict(self, state_dict: dict) -> HPCM:
        return HPCM.from_state_dict(state_dict, name=self.name)

    def __repr__(self) -> str:
        return f"ModelFactory({self.name!r})"


def registry_name(name: str) -> str:
    """The registry name of a model of :data:`MODEL_CONFIGS`: ``tiny`` -> ``hpcm_tiny``."""
    return name if name.startswith(REGISTRY_PREFIX) else REGISTRY_PREFIX + name


def register_all() -> None:
    """Register every model of :data:`MODEL_CONFIGS`; repeated calls change nothing."""
    for name in MODEL_CONFIGS:
        if registry_name(name) not in MODELS:
            register_model(registry_name(name))(ModelFactory(name))


register_all()
