"""Training: building a run from the Hydra config (``build``), the loop (``loop``), the run's
state (``state``), losses and task vectors (``losses``), data, DDP, speed options, tracking and
the Optuna pieces of sweeps. ``python train.py`` runs :func:`hpcm.train.cli.main`."""
