"""``harmonica-compile optimize``: learn a cache schedule (or pick FORA's) into a folder.

The training flags are :class:`~harmonica_compile.training.TrainConfig` fields: each flag's
default is the field's default (read from the dataclass, not restated here).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .common import DEFAULT_MODEL, add_threads_arg, finite_float, positive_int, print_json, set_threads

#: (flag, TrainConfig field, argparse type, help)
TRAIN_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--steps", "num_steps", positive_int, "sampling steps of the schedule"),
    ("--target-cur", "target_cur", finite_float, "cache usage ratio to reach, in (0, 1)"),
    ("--beta", "beta", finite_float, "train with this fixed L1 weight instead of a CUR target"),
    ("--interval", "fora_interval", positive_int, "FORA interval (none: the one closest to the target)"),
    ("--iterations", "iterations", positive_int, "training iterations"),
    ("--batch-size", "batch_size", positive_int, "images per iteration"),
    ("--cfg-scale", "cfg_scale", finite_float, "guidance during training (none: the model's)"),
    ("--lr", "lr", finite_float, "learning rate of the router logits"),
    ("--tau", "tau", finite_float, "router threshold: a site computes where sigmoid(logit) > tau"),
    ("--lambda-every", "lambda_every", positive_int, "recompute IEPO's lambda every C iterations"),
    ("--seed", "seed", int, "training seed"),
    ("--checkpoint-every", "checkpoint_every", int, "write a checkpoint every N iterations (0: never)"),
    ("--max-cache-age", "max_cache_age", int, "at most this many consecutive cached steps per site"),
    ("--search-evals", "search_evaluations", int, "evaluations of the refinement search"),
    ("--calibration-num", "calibration_num", positive_int, "calibration images of the search"),
)
_CHOICES = {
    "method": ("harmonica", "l2c", "fora", "taylorseer"),
    "lambda_mode": ("paper", "incremental", "none"),
    "forecast": ("none", "taylor1", "taylor2", "auto"),
    "refine": ("none", "search"),
}
_CHOICE_HELP = {
    "method": "the schedule's method",
    "lambda_mode": "IEPO's lambda",
    "forecast": "read branch of cached entries: reuse (none), a Taylor forecast, or auto (the search picks)",
    "refine": "search: improve the schedule on the true final-image error of a calibration set",
}
#: With --refine search the router trains this long unless --iterations says otherwise: the search
#: on the final error decides the schedule, and training plus search then fit in 10 minutes.
REFINE_ITERATIONS = 150


def _default(field: str) -> Any:
    from ..training import TrainConfig

    return {f.name: f.default for f in dataclasses.fields(TrainConfig)}[field]


def register(sub: Any) -> None:
    p = sub.add_parser("optimize", help="learn a cache schedule (HarmoniCa, L2C) or pick FORA's")
    p.add_argument("--model", default=DEFAULT_MODEL)
    for field, choices in _CHOICES.items():
        flag = "--" + field.replace("_", "-")
        p.add_argument(flag, default=None, choices=choices, help=f"{_CHOICE_HELP[field]} (default {_default(field)})")
    for flag, field, kind, text in TRAIN_FLAGS:
        p.add_argument(flag, dest=field, type=kind, default=None, help=f"{text} (default {_default(field)})")
    p.add_argument("--start", default=None, help="with --refine search: one more start schedule (file or folder)")
    p.add_argument("--soft", action="store_true", help="soft mixing instead of the straight-through estimator")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing schedule in OUT")
    p.add_argument("--eval-num", type=positive_int, default=256, help="samples for the report (default 256)")
    p.add_argument("--eval-seed", type=int, default=None, help="evaluation noise seed (default: EVAL_SEED)")
    p.add_argument("--no-eval", action="store_true", help="skip the quality evaluation")
    add_threads_arg(p)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=run)


def train_config(args: argparse.Namespace) -> Any:
    """The TrainConfig the flags ask for (fields not given keep their defaults)."""
    from ..training import TrainConfig

    options = {field: getattr(args, field) for _, field, _, _ in TRAIN_FLAGS if getattr(args, field) is not None}
    for field in _CHOICES:
        if getattr(args, field) is not None:
            options[field] = getattr(args, field)
    if options.get("refine") == "search" and "iterations" not in options:
        options["iterations"] = REFINE_ITERATIONS
    if args.soft:
        options["ste"] = False
    if args.target_cur is None and args.beta is not None:
        options["target_cur"] = None  # a fixed L1 weight instead of the default CUR target
    return TrainConfig(**options)


def run(args: argparse.Namespace) -> int:

    from ..workflows import optimize_to_folder

    set_threads(args)
    report = optimize_to_folder(
        args.model,
        args.out,
        config=train_config(args),
        resume=args.resume,
        overwrite=args.overwrite,
        evaluate=not args.no_eval,
        eval_num=args.eval_num,
        eval_seed=args.eval_seed,
        progress=not args.quiet,
        start=args.start,
    )
    keys = [
        "method",
        "num_steps",
        "num_sites",
        "cur",
        "theoretical_speedup",
        "final_mse",
        "psnr_db",
        "accuracy",
        "accuracy_full",
        "frechet",
        "frechet_full",
        "train_seconds",
        "start",
        "calibration_mse",
    ]
    print_json({k: report[k] for k in keys if k in report})
    print(f"wrote {Path(args.out)}/schedule.json, routers.safetensors, report.json, schedule.png")
    return 0
