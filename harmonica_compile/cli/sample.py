"""``harmonica-compile sample``: samples through full compute, a schedule, or an exported folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import (
    COMPILE_HELP,
    DEFAULT_MODEL,
    DTYPE_CHOICES,
    DTYPE_HELP,
    PROVIDERS_HELP,
    add_sampling_args,
    compile_and_report,
    positive_int,
    provider_list,
    set_threads,
)


def register(sub: Any) -> None:
    p = sub.add_parser("sample", help="generate samples (full compute, a schedule, or an exported engine)")
    add_sampling_args(p, model_default=None)
    p.add_argument("--num", type=positive_int, default=16, help="number of samples")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per call (engines: what fits)")
    p.add_argument("--schedule", default=None, help="schedule.json (or its folder) to sample through a CachedModel")
    p.add_argument("--engine", default=None, help="an exported folder (ONNX or TensorRT) to sample with")
    p.add_argument("--runtime", default="auto", choices=["auto", "ort", "trt"], help="runtime for --engine")
    p.add_argument("--providers", default=None, help=PROVIDERS_HELP)
    p.add_argument(
        "--labels",
        default=None,
        help="class labels, comma-separated, repeated to --num (default: 0, 1, 2, ... balanced over the classes)",
    )
    p.add_argument("--out", required=True, help="output .npz with images (N x C x H x W in [-1, 1]) and labels")
    p.add_argument("--grid", default=None, help="also write a PNG grid of the samples")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP + " (torch only: not with --engine)")
    p.add_argument(
        "--dtype", default="fp32", choices=DTYPE_CHOICES, help=DTYPE_HELP + " (torch only: not with --engine)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from ..models.registry import load_model
    from ..sampling import generate, save_samples

    threads = set_threads(args)
    if args.compile and args.engine:
        raise ConfigError("--compile compiles the torch step graphs; an --engine runs in ONNX Runtime or TensorRT")
    if args.dtype != "fp32" and args.engine:
        raise ConfigError(
            f"--dtype {args.dtype} lowers the torch step graphs; an --engine runs its exported graphs as built "
            "(TensorRT: export with --fp16)"
        )
    if args.engine:
        from ..runtime import open_engine

        providers = provider_list(args.providers)
        if providers and args.runtime == "trt":
            raise ConfigError("--providers chooses ONNX Runtime execution providers; --runtime trt takes none")
        options: dict[str, Any] = {"threads": threads, **({"providers": providers} if providers else {})}
        runner = open_engine(args.engine, runtime=args.runtime, **options)
        spec = load_model(runner.manifest.model_source if args.model is None else args.model)
        runner.check_model(spec.name)
        steps = runner.num_steps if args.steps is None else args.steps
        runner.check_steps(steps)
        denoise: Any = runner
        note = getattr(runner, "provider_note", None)
        if note:
            print(f"note: {note}", file=sys.stderr)
    else:
        spec = load_model(args.model or DEFAULT_MODEL)
        steps = spec.default_steps if args.steps is None else args.steps
        denoise, source = None, "full compute"
        lowered = args.dtype != "fp32"
        if args.schedule is not None or args.compile or lowered:
            from ..schedule import CacheSchedule
            from ..workflows import schedule_file

            if args.schedule is not None:
                schedule: Any = str(schedule_file(args.schedule))
            else:  # full compute, compiled or lowered: the all-compute schedule is one graph
                sites = spec.cacheable().site_names
                schedule = CacheSchedule.all_compute(sites, steps, [float(t) for t in spec.sampler(steps).timesteps])
            cached = spec.cached(schedule, steps=steps, compile=args.compile, dtype=args.dtype)
            if args.schedule is not None:
                source = f"schedule {args.schedule} (CUR {cached.schedule.cur:.2f})"
            if args.compile:
                source += ", compiled"
            if lowered:
                source += f", {args.dtype} matmuls"
            denoise = spec.denoiser(cached)
    cfg = spec.default_cfg_scale if args.cfg_scale is None else args.cfg_scale
    if args.compile:  # compile every graph now, at the model batch generate() will call with
        from ..sampling.guidance import uses_cfg

        per_call = min(args.batch_size, args.num) * (2 if uses_cfg(cfg) else 1)
        compile_and_report(cached, spec.example_inputs(per_call))
    labels = None
    if args.labels is not None:
        import torch

        try:
            given = [int(v) for v in args.labels.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--labels takes integers separated by commas, got {args.labels!r}") from None
        if not given:
            raise ConfigError("--labels names no label")
        labels = torch.tensor([given[i % len(given)] for i in range(args.num)])
    images, labels = generate(
        spec,
        denoise,
        num=args.num,
        steps=steps,
        cfg_scale=cfg,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.quiet,
        labels=labels,
    )
    if args.engine:
        source = f"exported {Path(args.engine).name} on {denoise.describe()}"
        print(f"ran on {denoise.describe()}")
    meta = {
        "model": spec.name,
        "steps": steps,
        "cfg_scale": cfg,
        "seed": args.seed,
        "num": args.num,
        "labels": args.labels,
        "schedule": args.schedule,
        "engine": args.engine,
    }
    out = save_samples(args.out, images, labels, meta)
    if args.grid:
        from ..plots import save_grid

        title = f"{spec.name}, {steps} steps, cfg {cfg:g}: {source}"
        save_grid(images[: min(len(images), 100)], args.grid, ncol=10, title=title)
    print(f"wrote {len(images)} samples to {out}" + (f" and a grid to {args.grid}" if args.grid else ""))
    return 0
