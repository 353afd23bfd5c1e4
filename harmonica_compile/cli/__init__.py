"""The ``harmonica-compile`` command line: one module per command over the library's workflows.

    harmonica-compile demo --out DIR                 train, export, benchmark the default model
    harmonica-compile optimize --model M --steps 20 --method harmonica --target-cur 0.5 --out DIR
    harmonica-compile sample --model M --num 16 [--schedule DIR | --engine ENG] --out s.npz
    harmonica-compile export DIR --format onnx|tensorrt --out ENG
    harmonica-compile bench ENG --runtime torch|ort|trt
    harmonica-compile serve-repo ENG --out REPO       a Triton Inference Server model repository
    harmonica-compile serve ENG|REPO                  the real tritonserver on it, on loopback
    harmonica-compile evaluate samples.npz [--reference full.npz]
    harmonica-compile show [--model M] [--passes] [--schedule S]

Every error we raise on purpose is printed on one line and exits with code 2; ``--debug`` prints the
traceback as well.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ..errors import HarmonicaError
from . import bench, demo, evaluate, export, optimize, sample, serve, show

__all__ = ["build_parser", "main"]

COMMANDS = (show, sample, optimize, export, bench, serve, demo, evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmonica-compile",
        description="Learned feature caching (HarmoniCa) for Diffusion Transformers, compiled per step.",
    )
    parser.add_argument("--debug", action="store_true", help="print tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except HarmonicaError as e:
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(e).split())
        print(f"harmonica-compile {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harmonica-compile: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
