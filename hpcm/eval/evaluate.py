"""Evaluate checkpoints on an image folder with real bitstreams, as R-D curves per group.

Follows the official HPCM test protocol (spec section 9): images in [0, 1], centred zero padding
to a multiple of 256, real ``compress`` and ``decompress``, bpp from the y and z streams over the
ORIGINAL pixels, PSNR on 8-bit images and MS-SSIM (also in dB) averaged per image. Checkpoints
are grouped into R-D curves (by optimizer for project runs, by model name for official weights),
one curve per group and training seed: runs of different seeds are never points of one curve.
Each curve becomes one CompressAI ``eval_model`` JSON (``GROUP.json``, or ``GROUP_seedN.json``
when the group has several seeds) that also carries its seed and its per-image values (for the
bootstrap of ``bdrate.py``), and every image one CSV row.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing
import os
import queue
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from hpcm import codec
from hpcm.codec.bitstream import CodecError
from hpcm.codec.checkpoint import CheckpointError, load_model, read_checkpoint
from hpcm.codec.images import ImageError, find_images, read_image
from hpcm.codec.model import HPCM, MODEL_CONFIGS
from hpcm.codec.numerics import coding_numerics
from hpcm.codec.state_dict import CHECKPOINT_FORMAT, is_hpcm_state_dict, unwrap_state_dict
from hpcm.device import DeviceError, resolve_device
from hpcm.eval.plots import MSSSIM_GROUP_SUFFIX, write_rd_plots
from hpcm.eval.report import training_seed
from hpcm.files import atomic_write
from hpcm.metrics import bpp_from_likelihoods, ms_ssim, ms_ssim_db, psnr_8bit
from hpcm.run_layout import RUN_CHECKPOINTS, RUN_MARKERS, run_checkpoint

# CompressAI's eval_model rounds the reconstruction to 8 bit before MS-SSIM; we keep the official
# HPCM protocol (and its published points) and say so in every JSON (docs/evaluation.md).
MSSSIM_PROTOCOL = (
    "PSNR on 8-bit images; MS-SSIM on the float reconstruction (official HPCM test.py)"
)

CSV_NAME = "per_image.csv"
CSV_FIELDS = (
    "group",
    "seed",
    "checkpoint",
    "lambda",
    "image",
    "bpp",
    "psnr",
    "ms_ssim",
    "ms_ssim_db",
    "enc_time",
    "dec_time",
)


class EvaluationError(Exception):
    """A user-facing problem with the inputs; its message is one line."""


# -- what a checkpoint is ------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    """One checkpoint to evaluate: its model, and for project runs what the trainer's resolved
    config (the checkpoint's ``"config"``) says about the optimizer and lambda."""

    path: Path
    model_name: str
    official: bool
    optimizer: str | None = None
    lmbda: float | None = None
    metric: str | None = None  # distortion: "mse" or "msssim"
    seed: int | None = None  # the training seed (config ``seed``)
    group: str = ""

    @property
    def label(self) -> str:
        """Short name for progress output: the run directory and file."""
        return f"{self.path.parent.name}/{self.path.name}"


def optimizer_of(config: dict) -> str | None:
    """The optimizer's config name (``adam``, ``balanced``, ``balanced_qp``, ...); a config
    without one (older runs) is named from its ``_target_`` class."""
    opt = config.get("optimizer")
    if isinstance(opt, dict):
        if isinstance(opt.get("name"), str):
            return opt["name"].lower()
        opt = opt.get("_target_")
    if not isinstance(opt, str):
        return None
    opt = opt.rsplit(".", 1)[-1].lower()
    return next((known for known in ("balanced", "adam") if known in opt), opt)


def lambda_of(config: dict) -> float | None:
    value = config.get("lmbda", config.get("lambda"))  # conf/lambda/*.yaml set ``lmbda``
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _metric(config: dict) -> str | None:
    value = config.get("metric")  # conf/lambda: "mse" or "ms-ssim"
    if not isinstance(value, str):
        return None
    value = re.sub(r"[^a-z]", "", value.lower())
    return value or None


def read_run_info(path: Path, data: dict, model_name: str, official: bool) -> RunInfo:
    if official:
        return RunInfo(path, model_name, official=True)
    config = data.get("config")
    config = config if isinstance(config, dict) else {}
    return RunInfo(
        path,
        model_name,
        False,
        optimizer_of(config),
        lambda_of(config),
        _metric(config),
        training_seed(config.get("seed")),
    )


# -- finding checkpoints and images --------------------------------------------------------------
def find_checkpoints(paths: Sequence[str | Path]) -> list[Path]:
    """Checkpoint files named by ``paths``: files as given, a run directory's best (else last)
    checkpoint, and for any other directory (a Hydra sweep) those of every run below it."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            own = run_checkpoint(path)
            runs = [own] if own else _sweep_checkpoints(path)
            if not runs:
                names = " or ".join(RUN_CHECKPOINTS)
                raise EvaluationError(f"{path}: no run directory with {names} in it")
            found.extend(runs)
        else:
            raise EvaluationError(f"{path}: no such checkpoint file or directory")
    unique = {p.resolve(): p for p in found}  # the same file named twice is evaluated once
    return list(unique.values())


def _sweep_checkpoints(sweep_dir: Path) -> list[Path]:
    run_dirs = {p.parent for name in RUN_CHECKPOINTS for p in sweep_dir.rglob(name)}
    # A run writes its config first: runs with a config but no checkpoint failed or still train.
    markers = (p for marker in RUN_MARKERS for p in sweep_dir.rglob(marker))
    started = {p.parent for p in markers if p.parent.name != ".hydra"}
    empty = sorted(started - run_dirs, key=_natural_key)
    if empty and run_dirs:
        names = ", ".join(d.name for d in empty[:3]) + (", ..." if len(empty) > 3 else "")
        print(
            f"note: {len(empty)} run(s) in {sweep_dir} have no checkpoint: {names}", file=sys.stderr
        )
    return sorted((run_checkpoint(d) for d in run_dirs), key=_natural_key)


def _natural_key(path: Path) -> list:
    """Sort runs 0, 1, 2, ..., 10 (Hydra numbers them) rather than 0, 1, 10, 2."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def list_images(dataset: str | Path, limit: int | None = None) -> list[Path]:
    root = Path(dataset)
    if not root.is_dir():
        problem = (
            "the dataset is a file, not a folder" if root.exists() else "dataset folder not found"
        )
        raise EvaluationError(f"{root}: {problem}")
    images = find_images(root)
    if not images:
        raise EvaluationError(f"{root}: no images in the dataset folder")
    return images[:limit] if limit else images


# -- reading checkpoints -------------------------------------------------------------------------
def inspect_checkpoint(path: Path, model_name: str | None = None) -> RunInfo:
    """Check that ``path`` loads into a model and say what it is (model, optimizer, lambda).

    The model of an official state dict is ``model_name`` or the one its keys show
    (:func:`hpcm.codec.state_dict.official_model_name`: base, large, phi-context or 1B)."""
    data = read_checkpoint(path)
    if not _is_project(data) and not is_hpcm_state_dict(unwrap_state_dict(data)):
        raise EvaluationError(f"{path}: neither a project checkpoint nor an HPCM state dict")
    try:  # load_model finds the model of a state dict: official keys, else the shapes
        model = load_model(data, name=model_name, update=False)
    except CheckpointError as e:
        raise EvaluationError(f"{path}: {e}") from None
    except (KeyError, TypeError) as e:  # a project dict with missing or unknown fields
        raise EvaluationError(
            f"{path}: malformed {CHECKPOINT_FORMAT} checkpoint ({type(e).__name__}: {e})"
        ) from None
    return read_run_info(path, data, model.name, official=not _is_project(data))


def _is_project(data: dict) -> bool:
    return data.get("format") == CHECKPOINT_FORMAT


def assign_groups(infos: Sequence[RunInfo], forced: str | None = None) -> list[RunInfo]:
    """One R-D curve per group: ``forced``, else the model name for official weights and the
    optimizer (plus ``-msssim`` for MS-SSIM runs) for project runs, prefixed with the model
    name when project runs of several models are evaluated together."""
    models = {i.model_name for i in infos if not i.official}
    out = []
    for info in infos:
        if forced:
            group = forced
        elif info.official:
            group = info.model_name
        else:
            group = info.optimizer or "unknown"
            if info.metric == "msssim":
                group += MSSSIM_GROUP_SUFFIX
            if len(models) > 1:
                group = f"{info.model_name}-{group}"
        out.append(replace(info, group=re.sub(r"[^A-Za-z0-9_.+-]", "_", group)))
    return out


# -- measuring -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageResult:
    bpp: float
    psnr: float
    ms_ssim: float | None  # None when the image is too small for the 5-scale MS-SSIM
    ms_ssim_db: float | None
    enc_time: float
    dec_time: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quality(x: torch.Tensor, x_hat: torch.Tensor, bpp: float, times: tuple) -> ImageResult:
    x, x_hat = x.cpu(), x_hat.float().clamp(0, 1).cpu()
    try:
        ms = ms_ssim(x, x_hat).item()
        ms_db = float(ms_ssim_db(ms))
    except ValueError:
        ms = ms_db = None
    return ImageResult(bpp, psnr_8bit(x, x_hat).item(), ms, ms_db, *times)


class RoundTrip(NamedTuple):
    """One image through the real entropy coder: its rate, reconstruction and the two times."""

    bpp: float  # of the file's y and z streams, over the original pixels
    x_hat: torch.Tensor  # (1, 3, H, W) on the model's device, as decoded (not clamped)
    enc_time: float
    dec_time: float


def round_trip(model: HPCM, x: torch.Tensor, device: torch.device) -> RoundTrip:
    """Real compress + decompress of one (1, 3, H, W) image, each timed (``device``: the
    model's, waited for before each clock reading)."""
    num_pixels = x.shape[-2] * x.shape[-1]
    _sync(device)
    start = time.perf_counter()
    encoded = codec.encode_image(model, x)
    _sync(device)
    mid = time.perf_counter()
    x_hat = codec.decode_image(model, encoded)
    _sync(device)
    end = time.perf_counter()
    return RoundTrip(encoded.num_bytes * 8 / num_pixels, x_hat, mid - start, end - mid)


def code_image(model: HPCM, x: torch.Tensor, device: torch.device) -> ImageResult:
    """Real compress + decompress of one (1, 3, H, W) image, each timed, and its quality."""
    coded = round_trip(model, x, device)
    return _quality(x, coded.x_hat, coded.bpp, (coded.enc_time, coded.dec_time))


def estimate_image(model: HPCM, x: torch.Tensor, device: torch.device) -> ImageResult:
    """Rate from the likelihoods of one forward pass, no entropy coding; the forward time is
    split evenly between encoding and decoding, as CompressAI's eval_model does."""
    height, width = x.shape[-2:]
    _sync(device)
    start = time.perf_counter()
    out = model(codec.pad_to_multiple(x.to(device)))
    _sync(device)
    half = (time.perf_counter() - start) / 2
    bpp = bpp_from_likelihoods(out["likelihoods"], height * width).item()
    return _quality(x, codec.crop_center(out["x_hat"], (height, width)), bpp, (half, half))


# -- averaging and writing -----------------------------------------------------------------------
def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def average(results: Sequence[ImageResult]) -> dict[str, float | None]:
    """Per-checkpoint means under CompressAI's result keys; MS-SSIM dB is the mean of the
    per-image dB values (official protocol), not the dB of the mean."""
    return {
        "bpp": _mean([r.bpp for r in results]),
        "psnr-rgb": _mean([r.psnr for r in results]),
        "ms-ssim-rgb": _mean([r.ms_ssim for r in results]),
        "ms-ssim-db": _mean([r.ms_ssim_db for r in results]),
        "encoding_time": _mean([r.enc_time for r in results]),
        "decoding_time": _mean([r.dec_time for r in results]),
    }


# Per-image values kept in a curve's JSON (``per_image``), for bootstraps over the test images.
PER_IMAGE_KEYS = {
    "bpp": "bpp",
    "psnr-rgb": "psnr",
    "ms-ssim-rgb": "ms_ssim",
    "ms-ssim-db": "ms_ssim_db",
}


def group_json(
    group: str,
    points: Sequence[tuple[RunInfo, dict, Sequence[ImageResult]]],
    description: str,
    images: Sequence[str],
) -> dict:
    """CompressAI eval_model JSON of one curve, every list sorted by bpp. Keys without a value
    for any point (MS-SSIM on small images) are left out rather than written as NaN. Besides
    CompressAI's keys: the training ``seed``, the points' ``lambda`` and checkpoints, and
    ``per_image`` values (``per_image[key][point][image]``, images as in ``per_image.images``)."""
    points = sorted(points, key=lambda p: p[1]["bpp"])
    keys = [k for k in points[0][1] if all(m[k] is not None for _, m, _ in points)]
    per_image: dict[str, Any] = {"images": list(images)}
    for key, field in PER_IMAGE_KEYS.items():
        values = [[getattr(r, field) for r in results] for _, _, results in points]
        if all(v is not None for row in values for v in row):
            per_image[key] = values
    return {
        "name": group,
        "description": description,
        "seed": points[0][0].seed,
        "results": {k: [m[k] for _, m, _ in points] for k in keys},
        "checkpoints": [str(info.path) for info, _, _ in points],
        "lambda": [info.lmbda for info, _, _ in points],
        "per_image": per_image,
    }


def curve_files(points: dict[tuple[str, int | None], list]) -> dict[tuple[str, int | None], str]:
    """File stem of each (group, seed) curve: ``GROUP``, or ``GROUP_seedN`` when the group has
    runs of several seeds."""
    seeds: dict[str, set] = {}
    for group, seed in points:
        seeds.setdefault(group, set()).add(seed)
    return {
        (group, seed): group if len(seeds[group]) == 1 else f"{group}_seed{seed}"
        for group, seed in points
    }


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)  # full precision: bpp is exact


def csv_row(info: RunInfo, image: str, r: ImageResult) -> list[str]:
    values = (r.bpp, r.psnr, r.ms_ssim, r.ms_ssim_db, r.enc_time, r.dec_time)
    seed = "" if info.seed is None else str(info.seed)
    return [info.group, seed, str(info.path), _cell(info.lmbda), image, *map(_cell, values)]


# -- command line --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files, run or sweep dirs")
    parser.add_argument("--dataset", required=True, type=Path, help="folder of test images")
    parser.add_argument(
        "--out",
        "-o",
        "-d",
        "--output_directory",
        type=_out_dir,
        default=Path("outputs/eval"),
        help="output folder: one JSON per group and per_image.csv",
    )
    parser.add_argument("--model", choices=list(MODEL_CONFIGS), help="model of official weights")
    parser.add_argument("--group", help="put every checkpoint into this one group")
    parser.add_argument(
        "--entropy-estimation",
        action="store_true",
        help="rate from the likelihoods of a forward pass (fast, no bitstream)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    # Flags of CompressAI's eval_model, as aliases.
    parser.add_argument(
        "--cuda", dest="device", action="store_const", const="cuda", help="= --device cuda"
    )
    parser.add_argument("--per-image", action="store_true", help="(always on: per_image.csv)")
    parser.add_argument("--limit", type=_positive, help="evaluate the first N images only")
    parser.add_argument(
        "--jobs",
        "-j",
        type=_positive,
        help="processes coding images in parallel (default: the cores on a CPU, 1 on CUDA)",
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        default=1,
        help="torch CPU threads of each process (default: 1); results depend on it, not on --jobs",
    )
    return parser


def _out_dir(text: str) -> Path:
    if text.endswith(".json"):  # CompressAI's -o is a file name; ours is a folder
        raise argparse.ArgumentTypeError(f"{text!r}: give a folder (one JSON per group)")
    return Path(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


Measure = Callable[[HPCM, torch.Tensor, torch.device], ImageResult]
Item = tuple[int, int]  # (checkpoint, image): indices into the evaluation's lists


class Evaluator:
    """Measures one image with one checkpoint per call, loading a checkpoint's model when its
    first image comes: items in checkpoint order load each model once per process."""

    def __init__(
        self,
        infos: Sequence[RunInfo],
        images: Sequence[Path],
        device: torch.device,
        measure: Measure,
    ) -> None:
        self.infos, self.images, self.device, self.measure = infos, images, device, measure
        self._model: HPCM | None = None
        self._loaded: int | None = None

    def name(self, item: Item) -> str:
        """The checkpoint and image of an item, as errors name them."""
        return f"{self.infos[item[0]].path} on {self.images[item[1]].name}"

    def _load(self, checkpoint: int) -> HPCM:
        if checkpoint != self._loaded:
            self._model = None  # the last model goes before the next one is read
            info = self.infos[checkpoint]
            self._model = load_model(read_checkpoint(info.path), info.model_name, self.device)
            self._loaded = checkpoint
            if self.device.type == "cuda":  # keep CUDA start-up out of the first image's times
                with torch.inference_mode(), coding_numerics():
                    self.measure(
                        self._model, read_image(self.images[0])[..., :256, :256], self.device
                    )
        return self._model

    def __call__(self, item: Item) -> ImageResult:
        model = self._load(item[0])
        with torch.inference_mode(), coding_numerics():
            try:
                return self.measure(model, read_image(self.images[item[1]]), self.device)
            except (CodecError, ImageError) as e:
                raise EvaluationError(f"{self.name(item)}: {e}") from None


def default_jobs(device: torch.device) -> int:
    """The cores this process may run on for a CPU evaluation; 1 on CUDA, where the GPU codes."""
    if device.type != "cpu":
        return 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def evaluate_items(
    evaluator: Evaluator,
    items: Sequence[Item],
    jobs: int,
    threads: int,
    done: Callable[[Item, ImageResult], None],
) -> None:
    """Measure every item, in ``jobs`` processes (this one when 1) of ``threads`` torch threads
    each; ``done(item, result)`` in this process as each finishes (in parallel: in any order).

    Each process takes the next item in list order, so items sorted by checkpoint load every
    model at most once per process. The results do not depend on ``jobs``: every process codes
    an item alike, with the same number of threads."""
    jobs = min(jobs, len(items))
    if jobs <= 1:
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for item in items:
                done(item, evaluator(item))
        finally:
            torch.set_num_threads(saved)
        return
    context = _process_context()
    tasks, results = context.Queue(), context.Queue()
    for item in items:
        tasks.put(item)
    for _ in range(jobs):
        tasks.put(None)  # one stop sign per worker
    workers = [
        context.Process(target=_worker, args=(n, evaluator, threads, tasks, results), daemon=True)
        for n in range(jobs)
    ]
    current: dict[int, Item] = {}  # the item each worker is on
    try:
        for worker in workers:
            worker.start()
        for _ in items:
            while True:
                try:
                    kind, n, item, payload = results.get(timeout=1.0)
                except queue.Empty:
                    _check_alive(workers, current, evaluator)
                    continue
                if kind == "error":
                    raise EvaluationError(payload)
                if kind == "start":
                    current[n] = item
                    continue
                done(item, payload)
                break
    finally:  # every item done, or stopped: a worker still running has nothing left to do
        for worker in workers:
            if worker.pid is None:  # interrupted before it started
                continue
            if worker.is_alive():
                worker.terminate()
            worker.join()
        tasks.cancel_join_thread()  # items nobody will take: do not wait to flush them
        tasks.close()
        results.close()


def _worker(n: int, evaluator: Evaluator, threads: int, tasks, results) -> None:
    """Evaluation process ``n``: measures items until the stop sign; says which item it starts
    (to name it if the process dies) and sends each result or a one-line error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the workers
    torch.set_num_threads(threads)
    for item in iter(tasks.get, None):
        results.put(("start", n, item, None))
        try:
            results.put(("done", n, item, evaluator(item)))
        except EvaluationError as e:
            results.put(("error", n, item, str(e)))
            return
        except Exception as e:  # noqa: BLE001 - anything else: one line naming the item
            first_line = (str(e).splitlines() or [""])[0]
            results.put(
                ("error", n, item, f"{evaluator.name(item)}: {type(e).__name__}: {first_line}")
            )
            return


def _check_alive(workers: Sequence, current: dict[int, Item], evaluator: Evaluator) -> None:
    """Raise when a worker died (killed, out of memory) or all stopped with items left."""
    for n, worker in enumerate(workers):
        if worker.exitcode not in (None, 0):
            where = evaluator.name(current[n]) if n in current else "before its first image"
            killed = ", killed: out of memory?" if worker.exitcode == -signal.SIGKILL else ""
            raise EvaluationError(
                f"an evaluation process stopped (exit code {worker.exitcode}{killed}): {where}"
            )
    if all(worker.exitcode is not None for worker in workers):
        raise EvaluationError("the evaluation processes stopped before every image was done")


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the block, and so in the processes started in it (only the main
    thread may change signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _process_context() -> multiprocessing.context.BaseContext:
    """Workers forked from a server process that imported this module once (POSIX), which
    starts them in a fraction of a second and stays up for later evaluations in this process;
    elsewhere fresh interpreters. Never a fork of this process and its torch threads."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # no effect once the server runs
    with _sigint_ignored():  # inherited: Ctrl-C does not break the server's imports
        forkserver.ensure_running()
    return context


def _note_repeated_lambdas(infos: Sequence[RunInfo]) -> None:
    seen = Counter((i.group, i.seed, i.lmbda) for i in infos if i.lmbda is not None)
    for (group, seed, lmbda), count in seen.items():
        if count > 1:
            of_seed = "" if seed is None else f" (seed {seed})"
            print(
                f"note: {count} checkpoints of group {group!r}{of_seed} share lambda {lmbda}; "
                "each is its own point of the curve (use --group to separate runs)",
                file=sys.stderr,
            )


def run(args: argparse.Namespace) -> dict[str, dict]:
    """Check every input, evaluate, write the CSV (row by row) and one JSON per group."""
    device = resolve_device(args.device)
    images = list_images(args.dataset, args.limit)
    for path in images:
        read_image(path)  # a broken image fails now, not after hours of coding
    infos = [inspect_checkpoint(p, args.model) for p in find_checkpoints(args.checkpoints)]
    infos = assign_groups(infos, args.group)
    _note_repeated_lambdas(infos)
    measure = estimate_image if args.entropy_estimation else code_image
    args.out.mkdir(parents=True, exist_ok=True)
    points: dict[tuple[str, int | None], list] = {}
    small: set[str] = set()
    items = [(c, i) for c in range(len(infos)) for i in range(len(images))]
    finished: dict[Item, ImageResult] = {}
    written = 0  # items[:written] are in the CSV
    progress = tqdm(total=len(items), unit="img", dynamic_ncols=True)
    with open(args.out / CSV_NAME, "w", newline="") as f, progress:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        progress.set_description(f"{infos[0].group} {infos[0].label}")

        def done(item: Item, result: ImageResult) -> None:
            """Count an image; write the rows that are complete in list order (the CSV's order
            does not depend on --jobs) and each checkpoint's point after its last image."""
            nonlocal written
            finished[item] = result
            progress.update()
            while written < len(items) and items[written] in finished:
                c, i = items[written]
                info, path, row = infos[c], images[i], finished[items[written]]
                writer.writerow(csv_row(info, path.relative_to(args.dataset).as_posix(), row))
                if row.ms_ssim is None:
                    small.add(path.name)
                written += 1
                if i == len(images) - 1:
                    results = [finished.pop((c, k)) for k in range(len(images))]
                    point = (info, average(results), results)
                    points.setdefault((info.group, info.seed), []).append(point)
                    if c + 1 < len(infos):
                        progress.set_description(f"{infos[c + 1].group} {infos[c + 1].label}")
            f.flush()

        jobs = args.jobs or default_jobs(device)
        evaluator = Evaluator(infos, images, device, measure)
        evaluate_items(evaluator, items, jobs, args.threads, done)
    if small:
        print(
            f"note: MS-SSIM needs both image sides > 160 px; left out for {len(small)} "
            f"image(s) (e.g. {min(small)}) and averaged over the others",
            file=sys.stderr,
        )
    mode = "entropy estimation" if args.entropy_estimation else "ans"
    description = (
        f"Inference ({mode}) on {args.dataset} ({len(images)} images, {device.type}); "
        f"{MSSSIM_PROTOCOL}"
    )
    names = [path.relative_to(args.dataset).as_posix() for path in images]
    stems = curve_files(points)
    curves = {
        stems[key]: group_json(key[0], pts, description, names) for key, pts in points.items()
    }
    for stem, curve in curves.items():
        data = (json.dumps(curve, indent=2) + "\n").encode()
        atomic_write(args.out / f"{stem}.json", data)
    # The seeds of a group in the group's colour, as in the report's plots.
    groups = {stem: curve["name"] for stem, curve in curves.items()}
    rd = {stem: curve["results"] for stem, curve in curves.items()}
    write_rd_plots(rd, args.out, str(args.dataset), groups)
    return curves


def print_summary(curves: dict[str, dict], out: Path) -> None:
    for group, curve in curves.items():
        results = curve["results"]
        print(f"{group}: {out / (group + '.json')}")
        for i, bpp in enumerate(results["bpp"]):
            lmbda = curve["lambda"][i]
            ms = results.get("ms-ssim-db", [math.nan] * len(results["bpp"]))[i]
            print(
                f"  lambda {_cell(lmbda) or '?':>8}  {bpp:.4f} bpp  "
                f"{results['psnr-rgb'][i]:.3f} dB PSNR  {ms:.3f} dB MS-SSIM"
            )
    print(f"per image: {out / CSV_NAME}; plots: {out / 'rd_psnr.png'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        curves = run(args)
    except (EvaluationError, CheckpointError, CodecError, DeviceError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the evaluation processes are stopped already
        print("interrupted: per_image.csv holds the images done so far", file=sys.stderr)
        return 130
    print_summary(curves, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
