"""The HPCM codec, usable without any training code: the model (every family member is a
configuration of :class:`HPCM`), its one coding schedule, entropy models, checkpoints and the
``.hpcm`` file format (``python -m hpcm.codec encode|decode``)."""

import warnings

# compressai 1.2.8 applies torch.jit.script to a helper when it is imported, which torch 2.14
# deprecates with a FutureWarning on every command. Import it once here, that warning silenced
# (only that one, only during this import); every other module of the package imports it later.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    import compressai  # noqa: F401

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
from hpcm.codec.zoo import ModelFactory  # importing it registers HPCM with CompressAI

__all__ = [
    "HPCM",
    "MODEL_CONFIGS",
    "SIZE_MULTIPLE",
    "CheckpointError",
    "CodecError",
    "Encoded",
    "HPCMConfig",
    "ImageError",
    "ModelFactory",
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
