"""Log evaluation results to the wandb runs they belong to:
``python -m hpcm.eval.wandb_log RESULTS.json... [--table report/bdrate_psnr.csv]``.

Each point of an ``evaluate.py`` JSON names its checkpoint, and a project checkpoint stores the
id of its training run's wandb run (``wandb_run_id``). That run is resumed with the wandb
settings of its run directory's ``config.yaml`` (project, entity, mode, dir: as the training had
them, ``WANDB_*`` variables included) and gets the point as summary values
``eval/<curve>/bpp``, ``eval/<curve>/psnr-rgb`` ... and, with ``--table``, a BD-rate table of
``bdrate.py`` as a wandb Table. Checkpoints without a wandb run (``logger=none``, official
weights) are named in a note and skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hpcm.run_layout import CONFIG, read_config

RESULT_KEYS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "ms-ssim-db")


def points_by_run(curve: dict) -> list[tuple[str, Path, dict[str, float]]]:
    """(wandb run id, run directory, {metric: value}) for the points of an evaluate JSON."""
    from hpcm.codec.checkpoint import read_checkpoint

    out = []
    results = curve["results"]
    for i, checkpoint in enumerate(curve.get("checkpoints", [])):
        run_id = read_checkpoint(checkpoint).get("wandb_run_id")
        if run_id is None:
            print(f"note: {checkpoint} has no wandb run; skipped", file=sys.stderr)
            continue
        values = {k: results[k][i] for k in RESULT_KEYS if k in results}
        out.append((run_id, Path(checkpoint).parent, values))
    return out


def _wandb_settings(run_dir: Path) -> dict:
    config = read_config(run_dir)
    if config is None:
        raise ValueError(f"{run_dir}: no {CONFIG} (its wandb settings)")
    logger = config.get("logger") or {}
    return {
        "project": logger.get("project"),
        "entity": logger.get("entity"),
        "mode": logger.get("mode", "offline"),
        "dir": str(logger.get("dir") or run_dir),
    }


def log_to_runs(curves: dict[str, dict], table: Path | None = None) -> list[str]:
    """Resume every run named by ``curves`` (label -> evaluate JSON); log its point (and the
    table). Returns the ids of the runs logged to."""
    import wandb  # slow to import; only this command needs it

    rows = list(csv.reader(table.open(encoding="utf-8"))) if table else []
    logged = []
    for label, curve in curves.items():
        for run_id, run_dir, values in points_by_run(curve):
            run = wandb.init(id=run_id, resume="allow", **_wandb_settings(run_dir))
            run.summary.update({f"eval/{label}/{k}": v for k, v in values.items()})
            if rows:
                run.log({f"eval/{table.stem}": wandb.Table(columns=rows[0], data=rows[1:])})
            run.finish()
            logged.append(run_id)
    return logged


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcm.eval.wandb_log", description=__doc__)
    parser.add_argument("results", nargs="+", type=Path, help="evaluate.py JSON files")
    parser.add_argument("--table", type=Path, help="a bdrate.py CSV to attach to every run")
    args = parser.parse_args(argv)
    try:
        curves = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in args.results}
        logged = log_to_runs(curves, args.table)
    except (OSError, ValueError, KeyError) as error:  # ValueError: bad JSON, CheckpointError
        print(f"error: cannot log results: {error}", file=sys.stderr)
        return 1
    else:
        print(f"logged to {len(logged)} wandb run(s): {', '.join(logged) or '-'}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
