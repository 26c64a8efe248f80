import pytest
import torch

import hpcm
from hpcm.train.losses import RateDistortionLoss, scale_rates


def test_per_scale_rates_sum_to_the_total_and_follow_the_masks():
    model = hpcm.build_model("tiny").train()
    x = torch.rand(2, 3, 256, 256)
    out = model(x)
    rates = scale_rates(out, 2 * 256 * 256)
    total = RateDistortionLoss(0.01)(out, x)["bpp_loss"]
    assert float(sum(rates.values()).detach()) == pytest.approx(float(total.detach()), rel=1e-5)
    # s1 codes 1/16 of y, s2 another 3/16, s3 the remaining 12/16.
    counts = torch.bincount(out["y_scale_map"].flatten().long()).tolist()
    n = out["y_scale_map"].numel()
    assert counts == [n // 16, 3 * n // 16, 12 * n // 16]
    rates["bpp_s2"].backward()  # each scale's rate is differentiable on its own
    assert model.adaptors[1].weight.grad.abs().sum() > 0
    assert model.adaptors[4].weight.grad is None or model.adaptors[4].weight.grad.abs().sum() == 0
