"""The two-task QP balancer (Balanced R-D solution 2): its weights and gradients against the
closed form, the sign of the steps it applies, and its behaviour at a rate-distortion optimum
under SGD and Adam."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import hpcm
from hpcm.optim.balancer import PlainBalancer, QPBalancer
from hpcm.optim.qp import combine_gradients_qp, qp_weights, snapshot_grads
from hpcm.train.losses import RateDistortionLoss, effective_lambda, task_names

RD = task_names("rd")


@pytest.mark.parametrize("constraint", ["simplex", "affine"])
def test_weights_and_grads_of_two_parameters_each_touched_by_one_task(constraint):
    # D touches p only, R touches q only: the log-gradients are orthogonal, so the QP weights
    # are w_D = |g_R|^2 / (|g_D|^2 + |g_R|^2), w_R = 1 - w_D (in [0, 1]: both constraints agree).
    p = torch.tensor(1.5, requires_grad=True)
    q = torch.tensor(0.7, requires_grad=True)
    dist, rate = 2.0 * p**2, 3.0 * q  # values 4.5 and 2.1; derivatives 6.0 and 3.0
    qp = QPBalancer(RD, [-1.0, -1.0], warn_weight_above=None, constraint=constraint)
    qp.backward(torch.stack([dist, rate]), [p, q])
    g_d, g_r = 6.0 / 5.5, 3.0 / 3.1  # d log(L + 1) of each task
    w_d = g_r**2 / (g_d**2 + g_r**2)
    w_r = 1.0 - w_d
    a_d, a_r = w_d / 5.5, w_r / 3.1  # per unit of each loss's own gradient
    a_d, a_r = a_d / (a_d + a_r), a_r / (a_d + a_r)  # FAMO's renormalisation c
    assert qp.weights.tolist() == pytest.approx([w_d, w_r], rel=1e-6)
    assert qp.applied_weights.tolist() == pytest.approx([a_d, a_r], rel=1e-6)
    assert p.grad.item() == pytest.approx(a_d * 6.0, rel=1e-6)
    assert q.grad.item() == pytest.approx(a_r * 3.0, rel=1e-6)


def test_opposed_gradients_affine_weights_and_the_simplex_choice():
    g_r, g_d = torch.tensor([1.0, 0.0]), torch.tensor([3.0, 1.0])  # coordinate 1: D only
    w_r, w_d = qp_weights(g_r @ g_r, g_d @ g_d, g_r @ g_d)
    assert (w_r.item(), w_d.item()) == pytest.approx((1.4, -0.4), rel=1e-6)
    d = w_r * g_r + w_d * g_d
    assert (d @ g_r).item() == pytest.approx((d @ g_d).item(), rel=1e-6)  # equal decrease
    assert d[1] * g_d[1] < 0  # ... by stepping the D-only parameter up D

    def step(constraint: str) -> torch.Tensor:
        x = torch.zeros(2, requires_grad=True)  # log(L + 1) of each task has gradient g_i
        losses = torch.stack([torch.exp(g_d @ x) - 1.0, torch.exp(g_r @ x) - 1.0])
        qp = QPBalancer(RD, [-1.0, -1.0], warn_weight_above=None, constraint=constraint)
        qp.backward(losses, [x])
        return x.grad

    # The documented default (simplex): w = (w_R, w_D) = (1, 0), the update follows g_R alone
    # and leaves the D-only parameter where it is; affine steps it up D.
    assert QPBalancer(RD, [-1.0, -1.0], None).simplex
    assert step("simplex").tolist() == pytest.approx([1.0, 0.0], abs=1e-7)
    assert step("affine")[1].item() < 0
    params = [torch.zeros(2, requires_grad=True)]
    params[0].grad = g_r.clone()
    snap = snapshot_grads(params)
    params[0].grad += g_d
    w0, w1 = combine_gradients_qp(params, snap, simplex=True)
    assert (w0.item(), w1.item()) == (1.0, 0.0)
    with pytest.raises(ValueError, match="unknown optimizer.balancer.constraint 'box'"):
        QPBalancer(RD, [-1.0, -1.0], None, constraint="box")


# ----------------------------------------------------------------------------- a toy codec
# A shared encoder gain a (y = a x, x ~ N(0, 1)), additive uniform quantization noise u
# (variance 1/12), a decoder-only gain b (x_hat = b (y + u)), and the Gaussian rate of y:
#   MSE = (1 - a b)^2 + b^2 / 12,   R = log2(1 + 12 a^2) / 2 bits,   D = LAMBDA * K * MSE.
LAMBDA, K = 0.5, 100.0


def toy_losses(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (1 - a * b) ** 2 + b * b / 12
    return torch.stack([LAMBDA * K * mse, 0.5 * torch.log2(1 + 12 * a * a)])


def toy_optimum() -> torch.Tensor:
    """The minimiser of R + D (float64 L-BFGS to the last bit, returned in float32)."""
    x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [x], max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = toy_losses(x[0], x[1]).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return x.detach().float()


def toy_drift(balancer, optimizer: str, lr: float = 1e-2, steps: int = 300):
    """(PSNR change in dB, relative rate change) after ``steps`` steps from the optimum."""
    start = toy_optimum()
    a, b = (torch.nn.Parameter(v.clone()) for v in start)
    opt = torch.optim.Adam([a, b], lr=lr) if optimizer == "adam" else torch.optim.SGD([a, b], lr)
    with torch.no_grad():
        before = toy_losses(a, b)
    for _ in range(steps):
        opt.zero_grad()
        balancer.backward(toy_losses(a, b), [a, b])
        opt.step()
    with torch.no_grad():
        after = toy_losses(a, b)
    return 10 * math.log10(before[0] / after[0]), (after[1] / before[1] - 1).item()


@pytest.mark.parametrize(
    ("balancer", "optimizer"),
    [(PlainBalancer, "adam"), (PlainBalancer, "sgd"), (QPBalancer, "sgd")],
    ids=["plain-adam", "plain-sgd", "qp-sgd"],
)
def test_an_rd_optimum_stays_put(balancer, optimizer):
    bal = balancer(RD) if balancer is PlainBalancer else balancer(RD, [-1.0, -1.0], None)
    psnr, rate = toy_drift(bal, optimizer)
    assert abs(psnr) < 0.5 and abs(rate) < 0.1


@pytest.mark.xfail(
    strict=True,
    reason="every point of the Pareto front is stationary for the QP (d = 0 there), so nothing "
    "pulls it back to the start; Adam turns the near-zero, rounding-level d into steps of about "
    "lr per coordinate and walks along the front: measured -1.29 dB, -7.0 % rate at lr 1e-2 "
    "(-0.23 dB at 3e-3, -0.07 dB at 1e-3: the drift grows with lr x steps)",
)
def test_an_rd_optimum_stays_put_under_qp_with_adam():
    psnr, rate = toy_drift(QPBalancer(RD, [-1.0, -1.0], None), "adam")
    assert abs(psnr) < 0.5 and abs(rate) < 0.1


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="|g_D|^2 >> |g_R|^2 with nearly orthogonal log-gradients makes the min-norm weights "
    "go as 1/|g_i|^2: measured w_D = 0.0049, effective lambda 0.0013x nominal (both constraints)",
)
def test_qp_trade_off_at_tiny_base_stays_near_its_lambda(kodak):
    torch.manual_seed(0)
    model = hpcm.load_model("pretrained:tiny_base", update=False).train()
    params = [p for p in model.parameters() if p.requires_grad]
    images = sorted(kodak.glob("*.png"))[:2]
    x = torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy())
            .permute(2, 0, 1)[:, :256, :256]
            .float()
            / 255
            for f in images
        ]
    )
    criterion = RateDistortionLoss(0.013)
    out = model(x)
    losses = criterion.task_losses(criterion(out, x), out, RD)
    qp = QPBalancer(RD, [-1.0, -1.0], warn_weight_above=None)
    qp.backward(losses, params)
    ratio = effective_lambda(0.013, qp.applied_weights, losses.detach()).item() / 0.013
    assert 0.1 <= ratio <= 10.0, ratio
