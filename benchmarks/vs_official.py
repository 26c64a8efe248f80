"""HPCM-Base against the official HPCM code: eval forward, compress, decompress, training step.

    python benchmarks/vs_official.py --official PATH/LIC-HPCM --image KODAK/kodim23.png
    python benchmarks/vs_official.py --image KODAK/kodim23.png      # ours alone

Both models hold the same weights: the official model is built from ``PATH`` with
the weights of ``benchmarks/codec.py`` (Gaussian, std ``--gain / sqrt(fan_in)``, zero
biases), and ours loads its state dict through the official-layout loader
(:func:`hpcm.load_model`). Everything runs in one process with ``--threads`` torch threads;
each round times every task once for each implementation, the official first in even rounds
and ours first in odd ones, so that load changes of the machine hit both alike. The first
``--warmup`` rounds are not timed. Reported per task: the median seconds of each, their
min-max spread, and ours/official as the ratio of the medians and as the median of the
per-round ratios.

Tasks: ``forward`` (eval mode, no grad) of a 256x256 crop and of the whole image,
``compress`` and ``decompress`` of the image (the official ``compress`` / ``decompress`` with its
C++ rANS coder), and the training step (train mode, a batch of ``--batch`` random
``--crop`` x ``--crop`` images: forward, the rate-distortion loss
:class:`hpcm.train.losses.RateDistortionLoss`, backward). Our training model is prepared as
the trainer prepares it with the default ``trainer`` options (conf/trainer/default.yaml).

What the official side needs (nothing is built or copied by this script): a checkout of
https://github.com/lyq133/LIC-HPCM at ``PATH`` (``PATH/src/models/HPCM_Base.py``), ``einops``,
and its entropy-coder extension built for this Python: in
``PATH/src/entropy_models/entropy_coders/unbounded_rans`` run ``python setup.py build_ext
--inplace`` (needs pybind11 and a C++ compiler) and copy the two ``*.so`` it makes into
``PATH/src/entropy_models/``; the official package imports them on import.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hpcm
from hpcm.codec import read_image
from hpcm.codec.entropy import scale_table
from hpcm.configs import CONF_DIR
from hpcm.train.losses import RateDistortionLoss
from hpcm.train.speed import SpeedOptions

sys.path.insert(0, str(ROOT / "benchmarks"))
from codec import non_trivial_weights

# Official parameters that keep their initial values: the adaptive gains (ones), the z prior.
OFFICIAL_KEPT = ("adaptive_params_list", "means_hyper", "scales_hyper", "entropy_estimation")
TASKS = ("forward 256x256", "forward image", "compress", "decompress", "train step")


def official_model(path: Path, gain: float) -> torch.nn.Module:
    """The official HPCM-Base from the checkout at ``path``, with formula weights, coding tables
    built as its test script builds them (scales 0.12 to 64, 60 levels)."""
    if not (path / "src" / "models" / "HPCM_Base.py").is_file():
        raise SystemExit(
            f"error: {path} is not an official HPCM checkout (no src/models/HPCM_Base.py)"
        )
    sys.path.insert(0, str(path))
    try:
        from src.models.HPCM_Base import HPCM as OfficialHPCM
    except ImportError as error:
        raise SystemExit(
            f"error: cannot import the official model from {path} ({error}). It needs einops and "
            "its entropy-coder extension built for this Python: cd "
            f"{path}/src/entropy_models/entropy_coders/unbounded_rans && python setup.py "
            "build_ext --inplace && cp *.so ../../"
        ) from error
    with _CPUFactories():  # its adaptive gains are created with device="cuda"
        model = OfficialHPCM()
    non_trivial_weights(model, gain, skip=OFFICIAL_KEPT)
    model.update(scale_table())
    return model.eval()


class _CPUFactories(TorchFunctionMode):
    """Tensors created inside the block go to the CPU whatever ``device`` they ask for."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Side:
    """One implementation: its eval model, its training model and its task functions."""

    def __init__(self, name: str, model: torch.nn.Module, train_model: torch.nn.Module):
        self.name, self.model, self.train_model = name, model, train_model
        self.times: dict[str, list[float]] = {task: [] for task in TASKS}

    def tasks(self, image: torch.Tensor, batch: torch.Tensor, loss: RateDistortionLoss) -> dict:
        model, train_model = self.model, self.train_model
        encoded = model.compress(image)

        def forward(x: torch.Tensor) -> Callable[[], object]:
            return lambda: _no_grad(model, x)

        def train_step() -> None:
            train_model.zero_grad(set_to_none=True)
            loss(train_model(batch), batch)["loss"].backward()

        return {
            "forward 256x256": forward(image[..., :256, :256]),
            "forward image": forward(image),
            "compress": lambda: _no_grad(model.compress, image),
            "decompress": lambda: _no_grad(model.decompress, encoded["strings"], encoded["shape"]),
            "train step": train_step,
        }


def _no_grad(fn: Callable, *args: object) -> object:
    with torch.no_grad():
        return fn(*args)


def our_models(official: torch.nn.Module | None, gain: float) -> tuple:
    """Our eval model (the codec's policy, as ``load_model`` gives it) and our training model
    (prepared with the default trainer options), with the official model's weights."""
    if official is not None:
        state = official.state_dict()
        model = hpcm.load_model(state, name="hpcm_base")
        train_model = hpcm.load_model(state, name="hpcm_base", update=False)
    else:
        model = hpcm.build_model("hpcm_base")
        non_trivial_weights(model, gain)
        train_model = copy.deepcopy(model)
        model.eval().update()
    trainer_cfg = OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")
    SpeedOptions.from_config(trainer_cfg, torch.device("cpu")).prepare_model(train_model)
    return model, train_model.train()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--official", type=Path, help="official HPCM checkout (LIC-HPCM)")
    parser.add_argument("--image", type=Path, help="image to code (default: random 512x768)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--batch", type=int, default=2, help="training batch (default 2)")
    parser.add_argument("--crop", type=int, default=256, help="training crop (default 256)")
    parser.add_argument("--gain", type=float, default=0.7, help="weight gain (default 0.7)")
    parser.add_argument("--lmbda", type=float, default=0.013)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), metavar="TASK")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.threads < 1:
        raise SystemExit("error: --repeat >= 1, --warmup >= 0, --threads >= 1")
    if args.crop % 256:
        raise SystemExit("error: --crop must be a multiple of 256 (HPCM's size multiple)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    image = read_image(args.image) if args.image else torch.rand(1, 3, 512, 768)
    image = image[..., : image.shape[-2] // 256 * 256, : image.shape[-1] // 256 * 256]
    if image.shape[-1] == 0 or image.shape[-2] == 0:
        raise SystemExit("error: the image must be at least 256x256")
    batch = torch.rand(args.batch, 3, args.crop, args.crop)
    loss = RateDistortionLoss(args.lmbda)

    official = official_model(args.official, args.gain) if args.official else None
    sides = []
    if official is not None:
        sides.append(Side("official", official, copy.deepcopy(official).train()))
    sides.append(Side("ours", *our_models(official, args.gain)))
    fns = [side.tasks(image, batch, loss) for side in sides]

    for r in range(args.warmup + args.repeat):
        for task in args.tasks:
            order = list(range(len(sides)))
            if r % 2:
                order.reverse()
            for i in order:
                elapsed = timed(fns[i][task])
                if r >= args.warmup:
                    sides[i].times[task].append(elapsed)
    report(args, image, sides)
    return 0


def report(args: argparse.Namespace, image: torch.Tensor, sides: list[Side]) -> None:
    h, w = image.shape[-2:]
    print(
        f"hpcm_base, CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
        f"image {h}x{w}, training batch {args.batch}x3x{args.crop}x{args.crop}; seconds, "
        f"median [min-max] of {args.repeat} interleaved rounds after {args.warmup} warm-up"
    )
    header = f"{'task':<18}" + "".join(f"{side.name + ' s':>26}" for side in sides)
    if len(sides) == 2:
        header += f"{'ours/official':>15}{'paired':>8}"
    print(header)
    for task in args.tasks:
        line = f"{task:<18}"
        for side in sides:
            t = side.times[task]
            line += f"{statistics.median(t):>10.3f} [{min(t):.3f}-{max(t):.3f}]".rjust(26)
        if len(sides) == 2:
            ours, theirs = sides[1].times[task], sides[0].times[task]
            paired = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
            line += f"{statistics.median(ours) / statistics.median(theirs):>15.2f}{paired:>8.2f}"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
