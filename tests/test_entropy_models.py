"""The entropy models own their coding tables (as CompressAI's do), and checkpoints written with
the tables on the model itself still load and code to the same bytes."""

import hashlib
import subprocess
import sys

import pytest
import torch
from skimage import data

import hpcm
from hpcm.codec import Encoded, decode_image, encode_image, load_model
from hpcm.codec.entropy import GGMChannelPrior, GGMConditional, scale_table
from hpcm.codec.state_dict import LEGACY_TABLE_KEYS

# The .hpcm file of the astronaut's top-left 200x300 coded with pretrained:tiny_base, as written
# while the tables were buffers of HPCM itself (y_cdf, z_cdf ...): the same bytes now, weights
# fingerprint included, so files written then still decode.
TINY_BASE_FILE_SHA256 = "70728216f6d55377cbe794a4bac79794719801950e22007b62afd206ce3bcbfe"
TINY_BASE_FINGERPRINT = 1185474475


def _image() -> torch.Tensor:
    return torch.from_numpy(data.astronaut()[:200, :300]).permute(2, 0, 1)[None].float() / 255


def test_shipped_checkpoint_with_legacy_table_keys_codes_as_before():
    raw = torch.load(
        hpcm.codec.checkpoint.checkpoint_path("pretrained:tiny_base"), weights_only=True
    )
    assert set(LEGACY_TABLE_KEYS) <= set(raw["state_dict"])  # the old layout is what ships
    model = load_model("pretrained:tiny_base")
    assert not any(k in model.state_dict() for k in LEGACY_TABLE_KEYS)
    torch.manual_seed(0)
    enc = encode_image(model, _image(), "tiny_base.pth.tar")
    assert enc.fingerprint == TINY_BASE_FINGERPRINT
    assert hashlib.sha256(enc.to_bytes()).hexdigest() == TINY_BASE_FILE_SHA256
    x_hat = decode_image(model, Encoded.from_bytes(enc.to_bytes()))
    assert x_hat.shape == (1, 3, 200, 300)


def test_legacy_state_dict_loads_strictly_with_built_tables():
    # A run's checkpoint after update(): its tables under the old keys, resumed with the strict
    # load_state_dict of the trainer.
    source = hpcm.build_model("tiny")
    source.update()
    state = source.state_dict()
    legacy = {}
    for key, value in state.items():
        old = {new: old for old, new in LEGACY_TABLE_KEYS.items()}.get(key, key)
        legacy[old] = value
    assert "y_cdf" in legacy and "y_entropy._quantized_cdf" not in legacy
    target = hpcm.build_model("tiny")
    target.load_state_dict(legacy)  # strict
    assert target.y_entropy.ready and target.z_entropy.ready
    assert torch.equal(target.y_entropy._quantized_cdf, source.y_entropy._quantized_cdf)
    assert torch.equal(target.z_entropy._offset, source.z_entropy._offset)
    assert target.weights_fingerprint() == source.weights_fingerprint()
    assert target.update() is False  # loaded tables are kept


def test_entropy_models_own_tables_and_update():
    model = hpcm.build_model("tiny")
    assert not model.y_entropy.ready and not model.z_entropy.ready
    with pytest.raises(RuntimeError, match="update"):
        model.y_entropy.tables()
    assert model.update() is True
    assert model.update() is False  # built already
    y, z = model.y_entropy, model.z_entropy
    assert torch.equal(y.scale_table, scale_table())
    assert y._quantized_cdf.shape[0] == len(scale_table())
    assert z._quantized_cdf.shape[0] == model.config.N  # one row per channel of z
    with torch.no_grad():
        model.z_scales.mul_(2)
    before = z._cdf_length.clone()
    assert model.update(force=True) is True
    assert (z._cdf_length >= before).all() and not torch.equal(z._cdf_length, before)
    # The same models stand alone, as CompressAI's entropy models do.
    alone = GGMConditional()
    alone.update()
    assert torch.equal(alone._quantized_cdf, y._quantized_cdf)
    prior = GGMChannelPrior()
    prior.update(model.z_scales)
    assert torch.equal(prior._offset, z._offset)
    assert prior.build_indexes((1, 3, 2, 2))[0, :, 0, 0].tolist() == [0, 1, 2]


def test_lower_bound_has_compressais_values_gradients_and_state_dict_key():
    from compressai.ops import LowerBound as CompressAILowerBound

    from hpcm.codec.entropy import LowerBound

    x = torch.tensor([-1.0, 0.05, 0.12, 0.3, 0.01, 2.0])
    upstream = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    outputs, grads = [], []
    for module in (LowerBound(0.12), CompressAILowerBound(0.12)):
        xi = x.clone().requires_grad_()
        out = module(xi)
        out.backward(upstream)
        outputs.append(out.detach())
        grads.append(xi.grad)
        assert list(module.state_dict()) == ["bound"]
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(grads[0], grads[1])
    # Below the bound the gradient flows only where the step would raise x (a negative one).
    assert grads[0].tolist() == [0.0, -1.0, 1.0, -1.0, 0.0, -1.0]


def test_training_imports_no_compressai():
    """CompressAI's package import (torch_geometric, torch._dynamo: ~3.6 s a process) is for
    coding only: a training command's imports and a training step leave it out."""
    script = (
        "import sys, torch, hpcm, hpcm.train.cli\n"
        "model = hpcm.build_model('tiny')\n"
        "out = model(torch.rand(1, 3, 256, 256))\n"
        "sum(v.sum() for v in out['likelihoods'].values()).backward()\n"
        "print(sorted(m for m in ('compressai', 'torch_geometric') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.strip() == "[]"
