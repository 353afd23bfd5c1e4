"""``harmonica-compile export``: a schedule to per-step ONNX graphs or TensorRT engines."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import add_threads_arg, positive_int, set_threads


def register(sub: Any) -> None:
    from ..exporters.config import DEFAULT_MAX_BATCH, DEFAULT_OPSET

    p = sub.add_parser("export", help="export a schedule as per-step ONNX graphs or TensorRT engines")
    p.add_argument("schedule", help="an optimize output folder or a schedule.json")
    p.add_argument("--format", default="onnx", choices=["onnx", "tensorrt"])
    p.add_argument("--out", required=True, help="the folder to write (replaced as a whole, atomically)")
    p.add_argument("--model", default=None, help="the model (default: the one the schedule names)")
    p.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=DEFAULT_MAX_BATCH,
        help=f"largest model batch a graph takes, i.e. images x2 with guidance (default {DEFAULT_MAX_BATCH}); "
        "sample --engine and bench split larger runs to fit",
    )
    p.add_argument(
        "--opt-batch", type=positive_int, default=None, help="batch TensorRT optimizes for (default: --max-batch)"
    )
    p.add_argument("--fp16", action="store_true", help="TensorRT 10: build fp16 engines (TensorRT 11: see README)")
    p.add_argument("--tf32", action="store_true", help="TensorRT: let fp32 layers use TF32 (off: fp32 means fp32)")
    p.add_argument("--onnx-dir", default=None, help="TensorRT: reuse an ONNX export instead of exporting again")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity gate")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from ..exporters.config import ExportConfig
    from ..workflows import export_schedule

    set_threads(args)
    config = ExportConfig(
        opset=args.opset, max_batch=args.max_batch, opt_batch=args.opt_batch, fp16=args.fp16, tf32=args.tf32
    )
    t0 = time.perf_counter()
    manifest = export_schedule(
        args.schedule,
        args.out,
        format=args.format,
        model=args.model,
        config=config,
        check=not args.no_check,
        onnx_dir=args.onnx_dir,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - t0
    total = sum(p.stat().st_size for p in Path(args.out).iterdir() if p.is_file())
    print(
        f"wrote {len(manifest.graphs)} graphs for {manifest.num_steps} steps to {args.out} "
        f"({total / 1e6:.2f} MB, {seconds:.1f} s)"
    )
    if "parity" in manifest.data:
        p = manifest.data["parity"]
        print(
            f"parity gate passed: graphs max |diff| {p['graph_max_abs_diff']:.1e}, "
            f"trajectory max |diff| {p.get('trajectory_max_abs_diff', float('nan')):.1e}"
        )
    return 0
