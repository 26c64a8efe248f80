"""What the codec takes from CompressAI: the rANS coder (``compressai.ans``) and the CDF
quantizer (``pmf_to_quantized_cdf``), the same ones the official HPCM code uses, so that our
streams are its bytes, and the model registry (:mod:`hpcm.codec.zoo`).

The codec imports this module only when it codes or builds coding tables (and the zoo when it
is imported). Importing ``compressai`` loads its whole package (its point-cloud datasets import
torch_geometric, which imports torch._dynamo): about 3.6 s of CPU per process on the 2-core
machine, more than half of what every ``train.py`` command spent starting up, and training
never needs it.
"""

from __future__ import annotations

import warnings

# compressai 1.2.8 applies torch.jit.script to a helper when it is imported, which torch 2.14
# deprecates with a FutureWarning. Import it once here with that warning silenced (only that
# one, only during this import); the codec's other modules import compressai's pieces from here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    import compressai  # noqa: F401

from compressai._CXX import pmf_to_quantized_cdf
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.registry import MODELS, register_model

__all__ = ["MODELS", "BufferedRansEncoder", "RansDecoder", "pmf_to_quantized_cdf", "register_model"]
