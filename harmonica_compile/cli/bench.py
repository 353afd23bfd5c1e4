"""``harmonica-compile bench``: latency of an exported schedule against full compute, in one run."""

from __future__ import annotations

import argparse
from typing import Any

from .common import (
    COMPILE_HELP,
    DTYPE_CHOICES,
    DTYPE_HELP,
    PROVIDERS_HELP,
    add_threads_arg,
    finite_float,
    positive_int,
    provider_list,
    set_threads,
)


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="latency of an exported schedule against full compute, in one run")
    p.add_argument("engine", help="an exported folder")
    p.add_argument("--runtime", default="ort", choices=["torch", "ort", "trt"])
    p.add_argument("--providers", default=None, help=PROVIDERS_HELP)
    p.add_argument("--images", type=positive_int, default=8, help="images per sampling run (default 8)")
    p.add_argument("--model", default=None, help="the model (default: the one the folder was exported from)")
    p.add_argument("--repeat", type=positive_int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each side first (default 1)")
    p.add_argument("--out", default=None, help="result file (default ENG/bench-<runtime>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cfg-scale", type=finite_float, default=None)
    p.add_argument(
        "--compile", action="store_true", help=COMPILE_HELP + " (--runtime torch; compile time reported apart)"
    )
    p.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES, help=DTYPE_HELP + " (--runtime torch)")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.bench import bench_engine, format_bench

    threads = set_threads(args)
    result = bench_engine(
        args.engine,
        runtime=args.runtime,
        images=args.images,
        repeat=args.repeat,
        threads=threads,
        cfg_scale=args.cfg_scale,
        model=args.model,
        providers=provider_list(args.providers),
        warmup=args.warmup,
        out=args.out,
        progress=not args.quiet,
        compile=args.compile,
        dtype=args.dtype,
    )
    print(format_bench(result))
    print(f"wrote {result['file']}")
    return 0
