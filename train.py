"""Train HPCM with Adam or Balanced rate-distortion optimization.

    python train.py                                   # tiny model, embedded photos, a few minutes
    python train.py optimizer=balanced lambda=0.013
    python train.py model=hpcm_base data=folder data.train_dir=DIR data.test_dir=DIR trainer=hpcm
    python train.py hydra.run.dir=runs/OLD_RUN resume=true     # continue an interrupted run

Configuration: conf/train.yaml and its groups (see docs/training.md). The application is
``hpcm.train.cli.main``; it returns the best validation rate-distortion loss, which the Optuna
sweeper minimises.
"""

from hpcm.train.cli import main

if __name__ == "__main__":
    main()
