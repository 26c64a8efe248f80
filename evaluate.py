"""Evaluate checkpoints on an image folder with real bitstreams:
``python evaluate.py CHECKPOINTS_OR_DIRS... --dataset DIR [--out DIR]``.

A thin entrypoint; the work is done in ``hpcm.eval.evaluate``.
"""

from hpcm.eval.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
