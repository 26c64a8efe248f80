"""Carry the trials of the first CPU study (balanced_bdrate_factorial_cpu: each curve scored
whole against adam's fixed grid) into balanced_bdrate_cpu (Pareto fronts, the reference with
0.001 and 0.0015 added): the trials' runs are the same, only their score changes, so each trial
whose four runs finished is added to the new study with its score under the new objective,
computed from the curve it wrote. Trials killed before their curve was complete are not carried.

    python docs/results/gamma_wlr_study/rescore.py STUDY_DIR

STUDY_DIR is the working directory of both studies (optuna.db, reference_curves/, multirun/).
Run it once, after the new reference's curve.json exists; a second run adds nothing (trials
are matched by the folder they came from).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
from omegaconf import OmegaConf

from hpcm.train.curve_search import CURVE_FILE, score_curve

OLD, NEW = "balanced_bdrate_factorial_cpu", "balanced_bdrate_cpu"
NEW_REFERENCE = "8c016c00f7f755be"  # reference_key of experiment=balanced_bdrate_cpu at bf79b2d
MIN_POINTS = 2  # curve.min_points of the new objective


def trial_folders(study_dir: Path) -> dict[tuple[float, float], Path]:
    """The old study's trial folders with a complete curve, by (gamma, w_lr)."""
    found = {}
    for curve in sorted(study_dir.glob(f"multirun/{OLD}/*/*/{CURVE_FILE}")):
        config = OmegaConf.load(next(curve.parent.glob("lambda_*/config.yaml")))
        balancer = config.optimizer.balancer
        found[(float(balancer.gamma), float(balancer.w_lr))] = curve.parent
    return found


def main(study_dir: Path) -> None:
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    old = optuna.load_study(study_name=OLD, storage=storage)
    new = optuna.create_study(
        study_name=NEW, storage=storage, direction="minimize", load_if_exists=True
    )
    carried = {t.user_attrs.get("folder") for t in new.trials}
    reference = json.loads(
        (study_dir / "reference_curves" / NEW_REFERENCE / CURVE_FILE).read_text()
    )
    folders = trial_folders(study_dir)
    for trial in old.trials:
        key = (trial.params["optimizer.balancer.gamma"], trial.params["optimizer.balancer.w_lr"])
        folder = folders.get(key)
        if folder is None or str(folder.relative_to(study_dir)) in carried:
            continue
        curve = json.loads((folder / CURVE_FILE).read_text())["curve"]
        result, _ = score_curve(curve, reference, MIN_POINTS)  # as train_curve scores
        state = (
            optuna.trial.TrialState.COMPLETE
            if result.value is not None
            else optuna.trial.TrialState.FAIL
        )
        new.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                value=result.value,
                state=state,
                user_attrs={
                    "carried_from": f"{OLD} trial {trial.number}",
                    "folder": str(folder.relative_to(study_dir)),
                    "note": result.note,
                },
            )
        )
        print(f"{OLD} trial {trial.number} {key}: {result.value} {result.note} ({folder.name})")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
