"""hparams_search=balanced_bdrate: the reference config of a trial's curve (the whole search runs
in tests/test_sweep.py, with the other sweeps)."""

from __future__ import annotations

import pytest

from hpcm.train.curve_search import CurveError, reference_config


def test_the_reference_is_the_shipped_optimizer_group_with_its_base(make_cfg) -> None:
    trial = make_cfg(None, "hparams_search=balanced_bdrate", "optimizer.max_scale=3.0")
    ref = reference_config(trial)
    assert (ref.optimizer.name, ref.optimizer.base._target_) == ("adam", "torch.optim.Adam")
    assert ref.optimizer.base.lr == ref.optimizer.lr == 2e-3 and ref.optimizer.max_scale is None
    assert ref.model == trial.model and ref.curve == trial.curve  # the rest is the trial's
    assert trial.optimizer.base._target_ == "hpcm.optim.CautiousAdam"  # left as it was
    trial.curve.reference = "balanced"
    assert reference_config(trial).optimizer.base.max_scale == 10.0  # as shipped, not 3.0
    trial.curve.reference = "sgd"
    with pytest.raises(CurveError, match="no optimizer config 'sgd'"):
        reference_config(trial)
