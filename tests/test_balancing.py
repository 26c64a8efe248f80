import math

import pytest
import torch

import hpcm
from hpcm.optim.balancer import QPBalancer, check_lower_bounds, weight_metric_name
from hpcm.train.losses import RateDistortionLoss, effective_lambda, task_names


def _losses(model, x):
    out = model(x)
    losses = RateDistortionLoss(0.013)(out, x)
    return losses, out


def test_scale_task_vector_sums_to_the_rate():
    model = hpcm.build_model("tiny").train()
    x = torch.rand(1, 3, 256, 256)
    losses, out = _losses(model, x)
    names = ("distortion", "bpp_s1", "bpp_s2", "bpp_s3", "bpp_z")
    assert task_names("scales") == names
    vec = RateDistortionLoss(0.013).task_losses(losses, out, names)
    assert vec[0] == losses["distortion"]
    assert float(vec[1:].sum().detach()) == pytest.approx(
        float(losses["bpp_loss"].detach()), rel=1e-5
    )
    assert weight_metric_name("bpp_loss") == "task_weight_bpp"
    assert weight_metric_name("bpp_s2") == "task_weight_bpp_s2"


def test_lower_bounds_must_lie_below_the_losses():
    check_lower_bounds([-1, -1], ["distortion", "bpp_loss"])
    with pytest.raises(ValueError, match="negative"):
        check_lower_bounds([-1, 0.2], ["distortion", "bpp_loss"])
    with pytest.raises(ValueError, match="needs 5 values"):
        check_lower_bounds([-1, -1], ["distortion", "bpp_s1", "bpp_s2", "bpp_s3", "bpp_z"])


def test_qp_update_decreases_both_log_losses_at_the_same_rate():
    """After combining, the directional derivatives of log D_D and log D_R along the update
    are equal (Balanced R-D, solution 2)."""
    model = hpcm.build_model("tiny").train()
    params = [p for p in model.parameters() if p.requires_grad]
    x = torch.rand(1, 3, 256, 256)
    torch.manual_seed(3)
    losses, _ = _losses(model, x)
    vec = torch.stack([losses["distortion"], losses["bpp_loss"]])
    shifted = vec + 1.0
    g_dist = torch.autograd.grad(
        torch.log(shifted[0]), params, retain_graph=True, allow_unused=True
    )
    g_rate = torch.autograd.grad(
        torch.log(shifted[1]), params, retain_graph=True, allow_unused=True
    )
    qp = QPBalancer(task_names("rd"), [-1.0, -1.0], warn_weight_above=None)
    qp.backward(vec, params)
    d = [p.grad for p in params]

    def dot(a, b):
        return sum(float((u * v).sum()) for u, v in zip(a, b) if u is not None and v is not None)

    rate_speed, dist_speed = dot(d, g_rate), dot(d, g_dist)
    assert rate_speed > 0 and dist_speed > 0
    assert rate_speed == pytest.approx(dist_speed, rel=1e-3)
    w_dist, w_rate = qp.weights.tolist()
    assert w_dist + w_rate == pytest.approx(1.0)
    # The weights differ from the plain sum: the balance actually reweights the tasks.
    assert abs(w_dist - 0.5) > 1e-3
    state = qp.state_dict()
    other = QPBalancer(task_names("rd"), [-1.0, -1.0], warn_weight_above=None)
    other.load_state_dict(state)
    assert torch.equal(other.weights, qp.weights)


def test_a_dominating_weight_warns_once_with_the_remedy_of_its_balancer(caplog) -> None:
    from hpcm.optim.balancer import FAMOBalancer

    qp = QPBalancer(task_names("rd"), [-1.0, -1.0], warn_weight_above=0.9)
    qp.applied_weights = torch.tensor([0.05, 0.95])
    famo = FAMOBalancer(task_names("rd"), 0.003, 0.025, [-1.0, -1.0], 0.9, "exact", 2, 0.9, 50)
    famo.famo.last_alpha = torch.tensor([0.04, 0.96])
    with caplog.at_level("WARNING"):
        assert qp.report()["task_weight_bpp"] == pytest.approx(0.95)
        qp.report()  # still dominating: no second warning
        famo.report()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "task_weight_bpp = 0.950 dominates (> 0.9): the QP weights" in messages[0]
    assert "gamma" not in messages[0] and "optimizer.balancer.gamma" in messages[1]


def _two_task_problem():
    """Two positive losses of one small parameter vector with orthogonal gradients (each
    task owns half of it, as the QP's min-norm point is then strictly inside the simplex)."""
    torch.manual_seed(0)
    w = torch.randn(6, requires_grad=True)
    a, b = torch.randn(3), torch.randn(3)

    def losses():
        return torch.stack([3.0 * ((w[:3] - a) ** 2).mean(), 0.5 * ((w[3:] - b) ** 2).mean()])

    return w, losses


@pytest.mark.parametrize("kind", ["famo", "qp"])
def test_logged_task_weights_are_those_applied_to_the_gradient(kind):
    """``task_weight_*`` are the factors ``a_i`` of the step's gradient ``sum_i a_i grad L_i``;
    FAMO's softmax and the QP solution are logged beside them under their own names."""
    from hpcm.optim.balancer import FAMOBalancer

    w, losses = _two_task_problem()
    names = task_names("rd")
    if kind == "famo":
        balancer = FAMOBalancer(names, 0.003, 0.025, [-1.0, -1.0], None, "exact", 2, 0.9, 50)
        balancer.famo._state["logits"] = torch.tensor([0.7, -0.2])  # z away from uniform
    else:
        balancer = QPBalancer(names, [-1.0, -1.0], warn_weight_above=None)
    balancer.backward(losses(), [w])
    report = balancer.report()
    applied = [report["task_weight_distortion"], report["task_weight_bpp"]]
    grads = [torch.autograd.grad(losses()[i], w)[0] for i in range(2)]
    expected = applied[0] * grads[0] + applied[1] * grads[1]
    torch.testing.assert_close(w.grad, expected, rtol=1e-5, atol=1e-7)
    other = "famo_softmax_" if kind == "famo" else "qp_weight_"
    raw = [report[other + "distortion"], report[other + "bpp"]]
    assert sum(raw) == pytest.approx(1.0)
    assert raw[0] != pytest.approx(applied[0], abs=1e-3)  # the two are different quantities


# ----------------------------------------------------------------------------- in training
def _run(make_cfg, tmp_path, *overrides):

    from hpcm.train import build as training

    cfg = make_cfg(tmp_path, *overrides)
    return cfg, training.train(cfg)


def _records(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hierarchical_run_logs_a_weight_per_scale(make_cfg, tmp_path):
    _, loss = _run(make_cfg, tmp_path, "optimizer=balanced_hier", "trainer.log_every_n_steps=1")
    assert math.isfinite(loss)
    train = [r for r in _records(tmp_path / "metrics.jsonl") if "train/lr" in r]
    names = ["distortion", "bpp_s1", "bpp_s2", "bpp_s3", "bpp_z"]
    weights = [train[-1][f"train/task_weight_{n}"] for n in names]
    assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    softmax = [train[-1][f"train/famo_softmax_{n}"] for n in names]
    assert sum(softmax) == pytest.approx(1.0, abs=1e-5)


def test_logged_weights_give_the_logged_effective_lambda(make_cfg, tmp_path):
    """With one step per record, ``train/effective_lambda`` is ``lambda * a_D / a_R`` of the
    logged ``train/task_weight_*``: they are the weights the step applied."""
    cfg, _ = _run(make_cfg, tmp_path, "optimizer=balanced", "trainer.log_every_n_steps=1")
    train = [r for r in _records(tmp_path / "metrics.jsonl") if "train/lr" in r]
    assert train
    lmbda = float(cfg.lmbda)
    for r in train:
        ratio = r["train/task_weight_distortion"] / r["train/task_weight_bpp"]
        assert r["train/effective_lambda"] == pytest.approx(lmbda * ratio, rel=1e-4)


def test_bad_lower_bounds_are_refused(make_cfg, tmp_path):
    from hpcm.train.build import ConfigError

    with pytest.raises(ConfigError, match="negative"):
        _run(
            make_cfg,
            tmp_path,
            "optimizer=balanced_hier",
            "optimizer.balancer.min_losses=[-1,0.5,-1,-1,-1]",
        )


def test_fine_tuning_starts_from_a_checkpoint(make_cfg, tmp_path):

    from hpcm.train.build import build_trainer

    _run(make_cfg, tmp_path / "first", "optimizer=adam")
    ckpt = tmp_path / "first" / "epoch_best.pth.tar"
    cfg = make_cfg(
        tmp_path / "ft", f"init_from={ckpt}", "optimizer=balanced_qp", "experiment=finetune"
    )
    assert cfg.optimizer.lr == 5e-5
    trainer = build_trainer(cfg)
    source = hpcm.load_model(ckpt, update=False).state_dict()
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, source[key]), key
    wrong = make_cfg(tmp_path / "x", f"init_from={ckpt}", "model=hpcm_base")
    with pytest.raises(hpcm.CheckpointError):
        build_trainer(wrong)


@pytest.mark.parametrize(
    ("official", "model"),
    [("HPCM_Base", "hpcm_base"), ("HPCM_Base_PhiContext", "hpcm_phi_context")],
)
def test_fine_tuning_from_official_weights(make_cfg, tmp_path, official, model):
    from official_weights import official_formula_state_dict

    from hpcm.train.build import build_trainer

    path = tmp_path / "official.pth"
    state = official_formula_state_dict(official)
    torch.save(state, path)
    trainer = build_trainer(make_cfg(tmp_path, f"init_from={path}", f"model={model}"))
    assert torch.equal(trainer.model.g_a[0].weight, state["g_a.branch.0.weight"])
    assert torch.equal(trainer.model.context_net[1].weight, state["context_net.1.weight"])


# ----------------------------------------------------------------------------- a new balancer
class FixedWeights:
    """A balancer written outside the package: fixed task weights, and the post-step losses it
    asks the training loop for kept as its state (what a new method needs, nothing more)."""

    def __init__(self, task_names, weights, reduce_fn=None):
        self.task_names = tuple(task_names)
        self.weights = torch.tensor([float(w) for w in weights])
        self.applied_weights = self.weights
        self.after = torch.zeros(len(self.task_names))

    def backward(self, task_losses, params):
        objective = (self.weights.to(task_losses) * task_losses).sum()
        objective.backward()
        return objective.detach()

    def after_step(self, probe):
        self.after = probe.losses_after().detach().cpu()

    def report(self):
        return {f"fixed_{n}": w for n, w in zip(self.task_names, self.weights.tolist())}

    def state_dict(self):
        return {"after": self.after.clone()}

    def load_state_dict(self, state):
        self.after = state["after"].clone()


def test_a_new_balancer_is_one_class_and_one_config(make_cfg, tmp_path):

    from hpcm.run_layout import read_metrics
    from hpcm.train.build import build_trainer

    plugin = [
        "optimizer.balancer._target_=test_balancing.FixedWeights",
        "+optimizer.balancer.weights=[0.25,0.75]",
        "trainer.log_every_n_steps=1",
    ]
    cfg = make_cfg(tmp_path, *plugin)
    _, loss = _run(make_cfg, tmp_path, *plugin)
    assert math.isfinite(loss)
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "train/lr" in r]
    assert records[0]["train/fixed_distortion"] == 0.25
    assert records[0]["train/fixed_bpp_loss"] == 0.75
    lmbda = cfg.lmbda * 0.25 / 0.75  # the trade-off its weights train at
    assert records[0]["train/effective_lambda"] == pytest.approx(lmbda, rel=1e-6)

    trainer = build_trainer(cfg)
    x = next(iter(trainer.loaders.train))
    assert trainer.train_step(x) is not None
    after = trainer.balancer.after  # the probe re-evaluated the batch after the step
    assert after.shape == (2,) and torch.isfinite(after).all()
    trainer.save(0, is_best=False, periodic=False)
    resumed = build_trainer(cfg)
    resumed.resume(tmp_path / "last.pth.tar")
    assert torch.equal(resumed.balancer.after, after)


# ----------------------------------------------------------------------------- lambda replay
def _write_series(path, records):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_lambda_replay_reproduces_a_logged_trajectory(tmp_path):
    from hpcm.optim.lambda_replay import LambdaReplayBalancer

    # Windows of 4 steps logged at steps 4, 8, 12: means placed at 1.5, 5.5, 9.5; a test
    # record and a record logged again after a resume (step 8) must not confuse it.
    _write_series(
        tmp_path / "metrics.jsonl",
        [
            {"step": 4, "epoch": 0, "train/effective_lambda": 0.01},
            {"step": 8, "epoch": 0, "train/effective_lambda": 0.5},
            {"step": 4, "epoch": 0, "test/loss": 3.0},
            {"step": 8, "epoch": 0, "train/effective_lambda": 0.04},
            {"step": 12, "epoch": 1, "train/effective_lambda": 0.04},
        ],
    )
    with pytest.raises(ValueError, match="has not finished"):  # a run directory still training
        LambdaReplayBalancer(["distortion", "bpp_loss"], str(tmp_path), lmbda=0.02)
    source = str(tmp_path / "metrics.jsonl")  # what it logged so far
    replay = LambdaReplayBalancer(["distortion", "bpp_loss"], source, lmbda=0.02)
    p = torch.zeros(2, requires_grad=True)
    got = []
    for _ in range(12):
        losses = torch.stack([p[0] + 1.0, p[1] + 2.0])  # d/dp = the applied weights
        p.grad = None
        replay.backward(losses, [p])
        lam = effective_lambda(0.02, replay.applied_weights, losses.detach())
        assert p.grad.tolist() == pytest.approx([lam.item() / 0.02, 1.0], rel=1e-6)
        got.append(lam.item())
    # log-linear between (1.5, 0.01), (5.5, 0.04), then flat
    at = [0.01 * 4 ** min(max((s - 1.5) / 4, 0.0), 1.0) for s in range(12)]
    assert got == pytest.approx(at, rel=1e-6)
    assert got[:2] == pytest.approx([0.01, 0.01]) and got[6:] == pytest.approx([0.04] * 6)
    state = replay.state_dict()
    with pytest.raises(ValueError, match="logged 12 steps, this run needs step 13"):
        replay.backward(torch.stack([p[0] + 1.0, p[1] + 2.0]), [p])
    again = LambdaReplayBalancer(["distortion", "bpp_loss"], source, lmbda=0.02)
    again.load_state_dict(state)
    assert again.step == 12
    _write_series(tmp_path / "metrics.jsonl", [{"step": 4, "test/loss": 3.0}])
    with pytest.raises(ValueError, match="logs no train/effective_lambda series"):
        LambdaReplayBalancer(["distortion", "bpp_loss"], source, lmbda=0.02)


def test_a_replay_twin_trains_on_its_famo_runs_trade_off(make_cfg, tmp_path):
    from hpcm.run_layout import read_metrics
    from hpcm.train.build import ConfigError

    def series(run):
        records = read_metrics(run / "metrics.jsonl")
        return [r["train/effective_lambda"] for r in records if "train/effective_lambda" in r]

    every = "trainer.log_every_n_steps=1"
    _run(make_cfg, tmp_path / "famo", "optimizer=balanced", every)
    famo = series(tmp_path / "famo")
    assert len(famo) == 2 and famo[1] != pytest.approx(0.013, rel=1e-4)  # FAMO moved it
    twin = f"optimizer.balancer.source={tmp_path / 'famo'}"
    _, loss = _run(make_cfg, tmp_path / "twin", "optimizer=lambda_replay", twin, every)
    assert math.isfinite(loss)
    assert series(tmp_path / "twin") == pytest.approx(famo, rel=1e-6)
    with pytest.raises(ValueError, match="logged 2 steps, this run needs step 3"):
        _run(
            make_cfg,
            tmp_path / "long",
            "optimizer=lambda_replay",
            twin,
            "trainer.max_steps_per_epoch=3",
            "data.samples_per_epoch=6",
        )
    with pytest.raises(ConfigError, match="needs optimizer.balancer.source"):
        _run(make_cfg, tmp_path / "none", "optimizer=lambda_replay")
