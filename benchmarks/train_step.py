"""Training-step time of Adam and Balanced R-D (each post-step update mode) in one run.

    python benchmarks/train_step.py                                  # tiny, CPU, batch 8, 256x256
    python benchmarks/train_step.py --model hpcm_base --device cuda  # on a GPU
    python benchmarks/train_step.py --variants adam adam+bf16+cl balanced:exact+bf16+cl

Every variant is a trainer built from the project's configuration (``build_trainer``, as
``train.py`` does) with the same model initialisation, and steps on the same batch on the same
machine. Variants run interleaved, round after round (the order rotates each round), so that
drift of the machine's load hits all of them alike; the first ``--warmup`` rounds are not timed.
Reported: the median, min and max step time of each variant and its ratio to the first
variant (``adam`` by default) three ways: ratio of the medians, median of the per-round ratios
(robust to load changes between rounds) and ratio of the minima (the least disturbed steps, a
fair figure on a shared CPU); the time of each variant's first step (``first s``: with
``+compile`` it holds the compilation, ``compile s`` = first step - median step) and the images/s
the median step consumes (what the data loader must deliver).

fp32 means IEEE fp32: ``--tf32 off`` (the default) turns TF32 off for CUDA matmuls and cuDNN
convolutions (PyTorch's default runs cuDNN convolutions in TF32); ``--tf32 on`` allows it.

A variant is ``OPTIMIZER[:UPDATE_MODE][+OPTION...]``: ``adam`` or ``balanced`` (any
``conf/optimizer`` option), an ``optimizer.balancer.update_mode`` (``exact``, ``subbatch``,
``next_batch``), and speed options ``+bf16`` (trainer.autocast_bf16, CUDA only), ``+cl`` and ``+nchw``
(trainer.channels_last true and false; the default ``auto`` is NHWC on the CPU, NCHW on CUDA) and
``+compile`` (trainer.compile), and ``+tN``: this variant's steps run with N torch CPU threads
(``adam+t1 adam+t2``: one process of 2 threads against the step time one of 2 single-thread
processes would have, as a sweep with ``hydra.launcher.n_jobs=2 trainer.num_threads=1`` runs).

``--profile N`` profiles N more steps of each variant after the timed rounds
(``torch.profiler``) and prints its top operators by self CPU time, grouped by operator and
input shapes, with their share of the profiled time: where the step's time goes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = [
    "adam",
    "balanced:exact",
    "balanced:subbatch",
    "balanced:next_batch",
    "balanced_hier:exact",
    "balanced_qp",
]
OPTIONS = {
    "bf16": "trainer.autocast_bf16=true",
    "cl": "trainer.channels_last=true",
    "nchw": "trainer.channels_last=false",
    "compile": "trainer.compile=true",
}


@dataclass
class Variant:
    name: str
    overrides: list[str]
    times: list[float] = field(default_factory=list)
    threads: int | None = None  # +tN: torch CPU threads of this variant's steps
    first: float = 0.0  # the first step, compilation included
    trainer: Any = None
    profile: list[dict[str, Any]] = field(default_factory=list)


def parse_variant(spec: str) -> Variant:
    """``balanced:subbatch+bf16`` -> the Hydra overrides of that variant."""
    base, *options = spec.split("+")
    optimizer, _, mode = base.partition(":")
    overrides = [f"optimizer={optimizer}"]
    if mode:
        overrides.append(f"optimizer.balancer.update_mode={mode}")
    threads = None
    for option in options:
        if option[:1] == "t" and option[1:].isdigit() and int(option[1:]) > 0:
            threads = int(option[1:])
        elif option in OPTIONS:
            overrides.append(OPTIONS[option])
        else:
            raise SystemExit(
                f"error: unknown option +{option} in {spec!r}; use {list(OPTIONS)} or tN (threads)"
            )
    return Variant(spec, overrides, threads=threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny", help="conf/model option (default tiny)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256, help="training crop size (default 256)")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_VARIANTS,
        metavar="VARIANT",
        help="OPTIMIZER[:MODE][+bf16][+cl][+nchw][+compile][+tN]; the first is the reference of "
        "the ratios "
        f"(default: {' '.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--subbatch-size", type=int, default=2, help="optimizer.balancer.subbatch_size"
    )
    parser.add_argument(
        "--ema-decay", type=float, help="optimizer.balancer.ema_decay (default: config)"
    )
    parser.add_argument(
        "--tf32", choices=("off", "on"), default="off", help="TF32 for CUDA fp32 (default off)"
    )
    parser.add_argument("--lmbda", type=float, default=0.013)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="more Hydra overrides for all"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after timing, profile N steps of each variant and print its top operators",
    )
    parser.add_argument("--profile-rows", type=int, default=15, help="operators listed (15)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from hpcm.configs import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def common_overrides(args: argparse.Namespace, run_dir: str) -> list[str]:
    out = [
        f"model={args.model}",
        "logger=none",
        f"lmbda={args.lmbda}",
        f"trainer.device={args.device}",
        "trainer.progress_bar=false",
        f"data.batch_size={args.batch_size}",
        f"data.crop_size={args.crop}",
        f"data.samples_per_epoch={args.batch_size}",
        f"optimizer.balancer.subbatch_size={args.subbatch_size}",
        "optimizer.balancer.exact_warmup_steps=0",  # next_batch in its steady state from the start
        f"paths.run_dir={run_dir}",
    ]
    if args.ema_decay is not None:
        out.append(f"optimizer.balancer.ema_decay={args.ema_decay}")
    return [*out, *args.set]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hpcm.train.build import build_trainer
    from hpcm.train.speed import SpeedOptions, apply_global_settings

    precision = "tf32" if args.tf32 == "on" else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    variants = [parse_variant(spec) for spec in args.variants]
    with tempfile.TemporaryDirectory() as run_dir:
        common = common_overrides(args, run_dir)
        general = [o for o in common if not o.startswith("optimizer.")]
        # The process-wide settings of train.py (host memory kept; --threads wins over the config).
        apply_global_settings(SpeedOptions.from_config(compose(general).trainer))
        if args.threads:
            torch.set_num_threads(args.threads)
        for variant in variants:
            cfg = compose([*general, *variant.overrides, *balanced_keys(variant, common)])
            variant.trainer = build_trainer(cfg)  # same seed: the same initial weights
        device = variants[0].trainer.device
        batch = next(iter(variants[0].trainer.loaders.train)).to(device)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        threads = torch.get_num_threads()
        rounds = args.warmup + args.steps
        for r in range(rounds):
            shift = r % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                torch.set_num_threads(variant.threads or threads)
                sync()
                start = time.perf_counter()
                values = variant.trainer.train_step(batch)
                sync()
                elapsed = time.perf_counter() - start
                if values is None:
                    print(f"warning: {variant.name} skipped a non-finite step", file=sys.stderr)
                if r == 0:
                    variant.first = elapsed
                if r >= args.warmup:
                    variant.times.append(elapsed)
        for variant in variants if args.profile else []:
            torch.set_num_threads(variant.threads or threads)
            variant.profile = profile_steps(variant.trainer, batch, args.profile, sync)
        torch.set_num_threads(threads)
    return report(args, variants, device, threads)


def profile_steps(trainer: Any, batch: Any, steps: int, sync: Any) -> list[dict[str, Any]]:
    """The operators of ``steps`` training steps (``torch.profiler``, CPU activity), grouped by
    operator and input shapes, by self CPU time (largest first), each with its share."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            trainer.train_step(batch)
            sync()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = [
        {
            "op": e.key,
            "shapes": str(e.input_shapes),
            "calls_per_step": e.count / steps,
            "ms_per_step": e.self_cpu_time_total / 1000.0 / steps,
            "share": e.self_cpu_time_total / total,
        }
        for e in events
    ]
    return sorted(rows, key=lambda row: -row["ms_per_step"])


def balanced_keys(variant: Variant, common: list[str]) -> list[str]:
    """The update-mode keys of ``common`` for a variant whose optimizer has them (adam's
    config has none)."""
    optimizer = variant.overrides[0].split("=", 1)[1]
    if optimizer == "adam":
        return []
    return [o for o in common if o.startswith("optimizer.")]


def report(
    args: argparse.Namespace, variants: list[Variant], device: Any, threads: int
) -> dict[str, Any]:
    import torch

    reference = variants[0]
    ref_median = statistics.median(reference.times)
    rows = []
    for variant in variants:
        median = statistics.median(variant.times)
        paired = statistics.median(
            t / ref for t, ref in zip(variant.times, reference.times, strict=True)
        )
        rows.append(
            {
                "variant": variant.name,
                "median_ms": 1000.0 * median,
                "min_ms": 1000.0 * min(variant.times),
                "max_ms": 1000.0 * max(variant.times),
                "ratio": median / ref_median,
                "min_ratio": min(variant.times) / min(reference.times),
                "paired_ratio": paired,
                "first_s": variant.first,
                "compile_s": max(variant.first - median, 0.0)
                if "compile" in variant.name
                else None,
                "images_per_s": args.batch_size / median,
            }
        )
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU, {threads} thread(s)"
    header = (
        f"model {args.model}, batch {args.batch_size}x3x{args.crop}x{args.crop}, {where}, "
        f"torch {torch.__version__}; {args.steps} timed rounds after {args.warmup} warm-up; "
        f"TF32 {args.tf32}"
    )
    print(header)
    print(
        f"{'variant':<30} {'median ms':>10} {'min ms':>9} {'max ms':>9} "
        f"{'ratio':>7} {'paired':>7} {'of min':>7} {'first s':>8} {'compile s':>9} {'img/s':>7}"
        f"   (ratios to {reference.name})"
    )
    for row in rows:
        compile_s = "" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
        print(
            f"{row['variant']:<30} {row['median_ms']:>10.1f} {row['min_ms']:>9.1f} "
            f"{row['max_ms']:>9.1f} {row['ratio']:>7.3f} {row['paired_ratio']:>7.3f} "
            f"{row['min_ratio']:>7.3f} {row['first_s']:>8.2f} {compile_s:>9} "
            f"{row['images_per_s']:>7.1f}"
        )
    profiles = {}
    for variant in variants if args.profile else []:
        profiles[variant.name] = variant.profile[: args.profile_rows]
        print(f"\n{variant.name}: top operators by self CPU time, {args.profile} profiled step(s)")
        print(f"{'share':>6} {'ms/step':>9} {'calls':>6}  operator  input shapes")
        for op in profiles[variant.name]:
            print(
                f"{100 * op['share']:>5.1f}% {op['ms_per_step']:>9.1f} "
                f"{op['calls_per_step']:>6.1f}  {op['op']}  {op['shapes']}"
            )
    return {"setup": header, "device": where, "rows": rows, "profiles": profiles}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.profile < 0:
        raise SystemExit("error: --steps >= 1, --warmup >= 0, --batch-size >= 1, --profile >= 0")
    sys.path.insert(0, str(ROOT))
    result = measure(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
