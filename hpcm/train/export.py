"""Ship a trained model: ``python -m hpcm.train.export RUN_DIR_OR_CHECKPOINT OUT.pth.tar --half``.

Writes a project checkpoint with the model alone (no optimizer state), optionally in half
precision (half the size; loading casts the weights back to fp32), plus a note of where it came
from. ``hpcm.load_model`` and ``init_from=`` read it like any project checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hpcm.codec.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_model,
    model_checkpoint,
)
from hpcm.run_layout import LAST_CHECKPOINT, run_checkpoint


def export(source: Path, out: Path, half: bool, note: str) -> dict:
    """The model of ``source`` (a checkpoint, or a run directory's best, else last) to ``out``."""
    if source.is_dir():  # neither there: load_model names the missing last checkpoint
        source = run_checkpoint(source) or source / LAST_CHECKPOINT
    model = load_model(source, update=False)
    ckpt = model_checkpoint(model)
    if half:  # the weights only: buffers hold constants such as the likelihood bound 1e-9,
        # which fp16 would flush to 0 (and a zero likelihood is an infinite rate)
        weights = {name for name, _ in model.named_parameters()}
        ckpt["state_dict"] = {
            k: v.half() if k in weights else v for k, v in ckpt["state_dict"].items()
        }
    ckpt["note"] = note or f"exported from {source.name}"
    atomic_torch_save(ckpt, out)
    return ckpt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcm.train.export", description=__doc__)
    parser.add_argument("source", type=Path, help="a checkpoint or a run directory")
    parser.add_argument("out", type=Path, help="the file to write")
    parser.add_argument("--half", action="store_true", help="store the weights in fp16")
    parser.add_argument("--note", default="", help="how the model was made (stored in the file)")
    args = parser.parse_args(argv)
    try:
        ckpt = export(args.source, args.out, args.half, args.note)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    size = args.out.stat().st_size / 1e6
    params = sum(v.numel() for v in ckpt["state_dict"].values() if v.is_floating_point())
    print(f"{args.out}: {ckpt['model_name']}, {params:,} values, {size:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
