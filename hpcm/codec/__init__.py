"""The HPCM codec, usable without any training code: the model (every family member is a
configuration of :class:`HPCM`), its one coding schedule, entropy models, checkpoints and the
``.hpcm`` file format (``python -m hpcm.codec encode|decode``). ``import hpcm.codec.zoo``
registers the models with CompressAI (:mod:`hpcm.codec.zoo`); CompressAI itself is imported
only when coding starts (:mod:`hpcm.codec.backend`)."""

from hpcm.codec.bitstream import CodecError, Encoded, decode_image, encode_image
from hpcm.codec.checkpoint import CheckpointError, load_model
from hpcm.codec.images import ImageError, find_images, read_image, write_image
from hpcm.codec.model import (
    HPCM,
    MODEL_CONFIGS,
    SIZE_MULTIPLE,
    HPCMConfig,
    build_model,
    crop_center,
    pad_to_multiple,
)
from hpcm.codec.numerics import coding_numerics

__all__ = [
    "HPCM",
    "MODEL_CONFIGS",
    "SIZE_MULTIPLE",
    "CheckpointError",
    "CodecError",
    "Encoded",
    "HPCMConfig",
    "ImageError",
    "build_model",
    "coding_numerics",
    "crop_center",
    "decode_image",
    "encode_image",
    "find_images",
    "load_model",
    "pad_to_multiple",
    "read_image",
    "write_image",
]
