"""Tests of hpcm.optim: cautious Adam, FAMO task weights and the two-task QP balance."""

from __future__ import annotations

import io
import math

import pytest
import torch

from hpcm.optim import (
    CautiousAdam,
    FAMOWeighting,
    combine_gradients_qp,
    qp_weights,
    snapshot_grads,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _famo_step(famo: FAMOWeighting, before: list[float], after: list[float]) -> None:
    famo.combine(torch.tensor(before))
    famo.update(torch.tensor(after))


# ----------------------------------------------------------------------------- FAMO
def test_famo_starts_uniform_and_validates_shapes() -> None:
    famo = FAMOWeighting(3, gamma=0.003, w_lr=0.025, min_losses=-1.0)
    assert torch.equal(famo.weights, torch.full((3,), 1 / 3))
    with pytest.raises(ValueError):
        famo.combine(torch.ones(2))
    with pytest.raises(RuntimeError):
        famo.update(torch.ones(3))
    with pytest.raises(ValueError):
        FAMOWeighting(2, gamma=0.003, w_lr=0.025, min_losses=[0.0, 0.0, 0.0])


def test_famo_favours_the_task_whose_log_loss_falls_slower() -> None:
    famo = FAMOWeighting(2, gamma=0.0, w_lr=0.025, min_losses=-1.0)
    for _ in range(5):
        _famo_step(famo, [1.0, 1.0], [0.5, 0.95])  # task 0 falls fast, task 1 slowly
    w = famo.weights
    assert w[1] > w[0] + 0.05
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)


def test_famo_logits_decay_to_zero_with_equal_progress() -> None:
    famo = FAMOWeighting(2, gamma=0.01, w_lr=0.025, min_losses=0.0)
    for _ in range(40):
        _famo_step(famo, [1.0, 1.0], [0.5, 0.95])
    start = famo.logits.abs().max()
    assert start > 0.3
    for _ in range(600):
        _famo_step(famo, [1.0, 2.0], [0.9, 1.8])  # same log-decrease for both tasks
    end = famo.logits.abs().max()
    assert end < 0.05 * start
    # Unequal log-decreases instead settle at a non-zero equilibrium (gamma xi = -J^T delta).
    for _ in range(600):
        _famo_step(famo, [1.0, 2.0], [0.9, 1.9])
    assert famo.logits[1] > 0.3 > end


def test_famo_logit_step_matches_torch_adam_with_l2() -> None:
    """The official FAMO steps xi with torch Adam(weight_decay=gamma) on grad J^T delta."""
    gamma, lr = 0.01, 0.025
    famo = FAMOWeighting(3, gamma=gamma, w_lr=lr, min_losses=0.0, eps=0.0)
    xi = torch.zeros(3, requires_grad=True)
    ref = torch.optim.Adam([xi], lr=lr, weight_decay=gamma)
    for _ in range(20):
        before = torch.rand(3) + 0.5
        after = before * (torch.rand(3) * 0.5 + 0.5)
        famo.combine(before)
        famo.update(after)
        delta = before.log() - after.log()
        ref.zero_grad()
        (torch.softmax(xi, 0) * delta).sum().backward()  # xi.grad = J^T delta
        ref.step()
    torch.testing.assert_close(famo.logits, xi.detach(), rtol=1e-5, atol=1e-6)


def test_famo_combine_gradient_equals_log_formulation() -> None:
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    famo = FAMOWeighting(2, gamma=0.003, w_lr=0.025, min_losses=[-1.0, -0.5])
    for _ in range(10):  # move the weights away from uniform
        _famo_step(famo, [1.0, 1.0], [0.6, 0.95])
    assert abs(float(famo.weights[0] - 0.5)) > 0.01

    def losses() -> torch.Tensor:
        err = (model(x) - y) ** 2
        return torch.stack([err[:, 0].mean(), err[:, 1].mean() * 3.0])

    famo.combine(losses()).backward()
    g_combine = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    L = losses()
    z = famo.weights
    D = L - famo.min_losses + famo.eps
    c = (z / D).sum().detach()
    ((z * D.log()).sum() / c).backward()
    for a, b in zip(g_combine, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_famo_combine_does_not_touch_losses_and_uses_reduce_fn() -> None:
    calls = []

    def reduce_fn(v: torch.Tensor) -> torch.Tensor:
        calls.append(v.clone())
        return v.mul_(2.0)  # in place on the copy it is given

    famo = FAMOWeighting(2, gamma=0.0, w_lr=0.025, min_losses=0.0, eps=0.0, reduce_fn=reduce_fn)
    plain = FAMOWeighting(2, gamma=0.0, w_lr=0.025, min_losses=0.0, eps=0.0)
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    famo.combine(losses)
    assert torch.equal(losses.detach(), torch.tensor([1.0, 3.0]))
    famo.update(torch.tensor([0.5, 2.0]))
    assert len(calls) == 2
    # The reduced vectors (x2) give the same log-deltas, so the weights match the plain run.
    _famo_step(plain, [1.0, 3.0], [0.5, 2.0])
    torch.testing.assert_close(famo.weights, plain.weights)
    # Reduction is seen by the weights: a rank-local vector is replaced by the reduced one.
    skewed = FAMOWeighting(
        2, gamma=0.0, reduce_fn=lambda v: torch.tensor([0.5, 0.5]), w_lr=0.025, min_losses=-1.0
    )
    _famo_step(skewed, [1.0, 3.0], [0.1, 2.9])
    torch.testing.assert_close(skewed.weights, torch.tensor([0.5, 0.5]))


def test_famo_non_finite_update_is_skipped() -> None:
    famo = FAMOWeighting(2, gamma=0.003, w_lr=0.025, min_losses=0.0)
    _famo_step(famo, [1.0, 1.0], [0.5, 0.9])
    before = famo.state_dict()
    famo.combine(torch.tensor([1.0, 1.0]))
    famo.update(torch.tensor([float("nan"), 0.9]))
    famo.update(torch.tensor([-1.0, 0.9]))  # L < b: log of a negative number
    after = famo.state_dict()
    assert famo.skipped_updates == 2
    for key in ("logits", "exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(before[key], after[key]), key
    _famo_step(famo, [1.0, 1.0], [0.5, 0.9])
    assert famo.skipped_updates == 2
    assert float(famo.state_dict()["step"]) == 2.0


def _drive(famo: FAMOWeighting, n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        before = torch.rand(2, generator=gen) + 0.5
        famo.combine(before)
        famo.update(before * (0.5 + 0.5 * torch.rand(2, generator=gen)))
        out.append(famo.logits)
    return out


def test_famo_state_dict_round_trip_bit_exact() -> None:
    famo = FAMOWeighting(2, gamma=0.005, w_lr=0.025, min_losses=[-1.0, 0.0])
    _drive(famo, 7, seed=1)
    famo.combine(torch.tensor([2.0, 1.0]))  # leaves prev_losses set
    famo.update(torch.tensor([float("inf"), 1.0]))  # and one skipped update

    fresh = FAMOWeighting(2, gamma=0.005, w_lr=0.025, min_losses=-1.0)
    fresh.load_state_dict(famo.state_dict())
    buf = io.BytesIO()
    torch.save(famo.state_dict(), buf)
    buf.seek(0)
    loaded = FAMOWeighting(2, gamma=0.005, w_lr=0.025, min_losses=-1.0)
    loaded.load_state_dict(torch.load(buf, weights_only=True))

    assert loaded.skipped_updates == 1
    assert torch.equal(loaded.min_losses, torch.tensor([-1.0, 0.0]))
    famo.update(torch.tensor([1.5, 0.5]))  # uses the restored prev_losses
    ref = _drive(famo, 5, seed=2)
    for other in (fresh, loaded):
        other.update(torch.tensor([1.5, 0.5]))
        got = _drive(other, 5, seed=2)
        for a, b in zip(ref, got, strict=True):
            assert torch.equal(a, b)


def test_famo_load_rejects_wrong_shapes() -> None:
    state = FAMOWeighting(3, gamma=0.003, w_lr=0.025, min_losses=-1.0).state_dict()
    with pytest.raises(ValueError):
        FAMOWeighting(2, gamma=0.003, w_lr=0.025, min_losses=-1.0).load_state_dict(state)
    del state["step"]
    with pytest.raises(KeyError):
        FAMOWeighting(3, gamma=0.003, w_lr=0.025, min_losses=-1.0).load_state_dict(state)


def test_adam_with_famo_trains_two_task_regression() -> None:
    x = torch.randn(64, 3)
    targets = torch.stack([x @ torch.tensor([1.0, -2.0, 0.5]), 2.0 * x[:, 0] - x[:, 2]], dim=1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Linear(8, 2))  # shared trunk
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    famo = FAMOWeighting(2, gamma=0.003, w_lr=0.025, min_losses=-1.0)

    def losses() -> torch.Tensor:
        return ((model(x) - targets) ** 2).mean(dim=0)

    with torch.no_grad():
        start = losses()
    for _ in range(200):
        opt.zero_grad()
        famo.combine(losses()).backward()
        opt.step()
        with torch.no_grad():
            famo.update(losses())
    with torch.no_grad():
        end = losses()
    assert torch.all(end < 1e-4 * start)
    assert famo.skipped_updates == 0
    assert not torch.equal(famo.weights, torch.full((2,), 0.5))


# ----------------------------------------------------------------------------- cautious Adam
def test_cautious_adam_matches_adam_when_signs_agree() -> None:
    p1 = torch.randn(5, 4, requires_grad=True)
    p2 = p1.detach().clone().requires_grad_(True)
    cautious = CautiousAdam([p1], lr=0.01, eps=1e-8)
    adam = torch.optim.Adam([p2], lr=0.01, eps=1e-8)
    g = torch.randn(5, 4)
    for k in range(4):  # gradients keep their signs -> mask of ones, scale 1
        for p in (p1, p2):
            p.grad = g * (1.0 + 0.1 * k)
        cautious.step()
        adam.step()
    torch.testing.assert_close(p1, p2, rtol=0, atol=1e-7)


def _hand_cautious(g1: torch.Tensor, g2: torch.Tensor, lr: float, cap: float | None):
    """Second-step update of cautious Adam, computed element by element in float64."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    g1, g2 = g1.double(), g2.double()
    m = (1 - b1) * g1
    v = (1 - b2) * g1 * g1
    m = b1 * m + (1 - b1) * g2
    v = b2 * v + (1 - b2) * g2 * g2
    mask = (m * g2 > 0).double()
    scale = 1.0 / max(mask.mean().item(), 1e-3)
    if cap is not None:
        scale = min(scale, cap)
    update = (m / (1 - b1**2)) / (v.sqrt() / math.sqrt(1 - b2**2) + eps)
    return -lr * update * mask * scale, mask


@pytest.mark.parametrize("cap", [None, 2.0])
def test_cautious_mask_and_rescale_by_hand(cap: float | None) -> None:
    g1 = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0])
    # Elements 1..7 flip sign with a small magnitude: momentum keeps the old sign -> masked.
    # Element 0 keeps its sign -> kept, and rescaled by 8 (1 of 8 kept), or capped at 2.
    g2 = torch.tensor([2.0, -0.05, -0.05, -0.05, 0.05, 0.05, -0.05, -0.05])
    p = torch.zeros(8, requires_grad=True)
    opt = CautiousAdam([p], lr=0.1, max_scale=cap)
    p.grad = g1.clone()
    opt.step()
    after_first = p.detach().clone()
    p.grad = g2.clone()
    opt.step()
    step2 = (p.detach() - after_first).double()
    expected, mask = _hand_cautious(g1, g2, lr=0.1, cap=cap)
    assert mask.tolist() == [1.0] + [0.0] * 7
    assert torch.all(step2[1:] == 0)
    torch.testing.assert_close(step2, expected, rtol=1e-5, atol=1e-9)
    unscaled = expected[0] / (8.0 if cap is None else cap)
    assert abs(float(step2[0])) > 1.9 * abs(float(unscaled))


def test_cautious_adam_minimises_quadratic_and_skips_missing_grads() -> None:
    a = torch.diag(torch.tensor([1.0, 10.0, 100.0]))
    target = torch.tensor([1.0, -2.0, 3.0])
    x = torch.zeros(3, requires_grad=True)
    frozen = torch.ones(2, requires_grad=True)
    opt = CautiousAdam([x, frozen], lr=0.05, max_scale=10.0)
    for _ in range(500):
        opt.zero_grad()
        d = x - target
        (0.5 * d @ a @ d).backward()
        opt.step()
    torch.testing.assert_close(x.detach(), target, rtol=0, atol=1e-2)
    assert frozen.grad is None and torch.equal(frozen.detach(), torch.ones(2))
    assert frozen not in opt.state


def test_cautious_adam_weight_decay_modes() -> None:
    for decoupled in (False, True):
        p = torch.ones(3, requires_grad=True)
        opt = CautiousAdam([p], lr=0.1, weight_decay=0.5, decoupled_weight_decay=decoupled)
        p.grad = torch.zeros(3)
        opt.step()
        if decoupled:  # p *= 1 - lr wd, then a zero Adam update (all masked)
            torch.testing.assert_close(p.detach(), torch.full((3,), 0.95))
        else:  # grad = wd * p > 0 -> Adam's first step moves by -lr
            torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))


def test_cautious_adam_state_dict_round_trip() -> None:
    def make() -> tuple[torch.nn.Module, CautiousAdam]:
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        return model, CautiousAdam(model.parameters(), lr=0.01, max_scale=10.0)

    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def train(model: torch.nn.Module, opt: CautiousAdam, n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    model_a, opt_a = make()
    train(model_a, opt_a, 5)
    buf = io.BytesIO()
    torch.save({"model": model_a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model_b, opt_b = make()
    model_b.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["opt"])
    train(model_a, opt_a, 5)
    train(model_b, opt_b, 5)
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb)


# ----------------------------------------------------------------------------- QP
def test_qp_weights_solve_the_kkt_system() -> None:
    for _ in range(20):
        g = torch.randn(2, 7, dtype=torch.float64)
        q = g @ g.T
        w0, w1 = qp_weights(q[0, 0], q[1, 1], q[0, 1])
        # KKT of min 1/2 w^T Q w s.t. 1^T w = 1:  w = Q^-1 1 / (1^T Q^-1 1).
        sol = torch.linalg.solve(q, torch.ones(2, dtype=torch.float64))
        sol = sol / sol.sum()
        torch.testing.assert_close(torch.stack([w0, w1]), sol)
    w0, w1 = qp_weights(2.0, 2.0, 2.0)  # identical gradients
    assert float(w0) == 0.5 and float(w1) == 0.5


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e-2, 1e2])
def test_combine_gradients_qp_balances_directional_derivatives(scale: float) -> None:
    params = [torch.zeros(4, 5, requires_grad=True), torch.zeros(7, requires_grad=True)]
    frozen = torch.zeros(3, requires_grad=True)  # no grad: skipped
    for trial in range(5):
        g0 = [torch.randn_like(p) * scale for p in params]
        g1 = [torch.randn_like(p) + 0.5 * a / scale for p, a in zip(params, g0, strict=True)]
        for p, a in zip(params, g0, strict=True):
            p.grad = a.clone()
        snap = snapshot_grads(params + [frozen])
        for p, b in zip(params, g1, strict=True):
            p.grad += b  # the second backward accumulates
        w0, w1 = combine_gradients_qp(params + [frozen], snap)
        assert math.isclose(float(w0 + w1), 1.0, rel_tol=1e-6)
        d = torch.cat([p.grad.flatten() for p in params]).double()
        f0 = torch.cat([a.flatten() for a in g0]).double()
        f1 = torch.cat([b.flatten() for b in g1]).double()
        expected = float(w0) * f0 + float(w1) * f1
        torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-5 * max(scale, 1.0))
        assert math.isclose(float(d @ f0), float(d @ f1), rel_tol=1e-4), trial
        assert math.isclose(float(d @ f0), float(d @ d), rel_tol=1e-4), trial
        assert frozen.grad is None


def test_combine_gradients_qp_degenerate_and_errors() -> None:
    p = torch.zeros(6, requires_grad=True)
    g = torch.randn(6)
    p.grad = g.clone()
    snap = snapshot_grads([p])
    p.grad += g  # same gradient twice
    w0, w1 = combine_gradients_qp([p], snap)
    assert float(w0) == 0.5 and float(w1) == 0.5
    torch.testing.assert_close(p.grad, g)
    with pytest.raises(ValueError):
        combine_gradients_qp([p], [])


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    results = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(5)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).to(device)
        x, y = torch.randn(16, 4).to(device), torch.randn(16, 2).to(device)
        opt = CautiousAdam(model.parameters(), lr=0.01, max_scale=10.0)
        famo = FAMOWeighting(
            2, gamma=0.003, w_lr=0.025, min_losses=-1.0
        )  # state starts on the CPU and follows the losses
        params = list(model.parameters())
        for _ in range(5):
            opt.zero_grad()
            err = ((model(x) - y) ** 2).mean(dim=0)
            err[0].backward(retain_graph=True)
            snap = snapshot_grads(params)
            famo.combine(err).backward()
            w0, _ = combine_gradients_qp(params, snap)
            opt.step()
            with torch.no_grad():
                famo.update(((model(x) - y) ** 2).mean(dim=0))
        assert famo.device.type == device and w0.device.type == device
        results[device] = [p.detach().cpu() for p in params] + [famo.logits.cpu()]
    for a, b in zip(results["cpu"], results["cuda"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
