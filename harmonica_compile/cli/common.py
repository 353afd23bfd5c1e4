"""What the commands share: argument types, the default model, and how results are printed."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = [
    "COMPILE_HELP",
    "DEFAULT_MODEL",
    "DTYPE_CHOICES",
    "DTYPE_HELP",
    "PROVIDERS_HELP",
    "add_sampling_args",
    "add_threads_arg",
    "compile_and_report",
    "finite_float",
    "positive_int",
    "print_json",
    "provider_list",
    "set_threads",
]

DEFAULT_MODEL = "tiny-dit-digits"
PROVIDERS_HELP = (
    "ONNX Runtime execution providers in order, comma-separated (default: CUDAExecutionProvider when "
    "offered, else CPUExecutionProvider; TensorrtExecutionProvider only when named)"
)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def provider_list(text: str | None) -> list[str] | None:
    return None if text is None else [p for p in text.split(",") if p]


def add_sampling_args(p: argparse.ArgumentParser, *, model_default: str | None = DEFAULT_MODEL) -> None:
    p.add_argument(
        "--model",
        default=model_default,
        help=f"model name, checkpoint, diffusers folder or pkg.mod:factory (default {DEFAULT_MODEL})",
    )
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--cfg-scale", type=finite_float, default=None, help="classifier-free guidance scale; 1 disables it")
    p.add_argument("--seed", type=int, default=0)
    add_threads_arg(p)


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads (default: the available cores not busy with other work; printed first)",
    )


def set_threads(args: argparse.Namespace) -> int:
    """Choose the thread count (``--threads`` or what is free), use it, and say so first."""
    import torch

    from ..threads import choose_threads

    threads, why = choose_threads(args.threads)
    torch.set_num_threads(threads)
    print(f"using {why}", flush=True)
    return threads


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


COMPILE_HELP = (
    "run the step graphs through torch.compile (inductor; needs a C++ compiler on the CPU). Compiling costs "
    "seconds per graph (printed; less on later runs, from inductor's on-disk cache), so it pays off on long or "
    "repeated sampling, not on a quick demo"
)


DTYPE_CHOICES = ("fp32", "bf16", "fp16")
DTYPE_HELP = (
    "compute dtype of the token matmuls (linears, convolutions, attention); norms, softmax, the adaLN "
    "modulation and the caches stay fp32. bf16/fp16 pay off on GPUs; on CPUs without bf16 units they are slower"
)


def compile_and_report(cached: Any, example_inputs: Any) -> None:
    """Compile ``cached``'s graphs up front (``--compile``) and print what it cost, on stderr."""
    import sys

    seconds = cached.warmup(example_inputs)
    report = cached.compile_report()
    hits = sum(r["cache_hits"] for r in report)
    fell = [r for r in report if r["fell_back"]]
    breaks = sum(sum(r["graph_breaks"].values()) for r in report)
    line = f"compiled {len(seconds)} step graphs in {sum(seconds.values()):.1f} s ({hits} from inductor's cache"
    line += f", {breaks} graph breaks)" if breaks else ")"
    if fell:
        line += f"; {len(fell)} run eagerly: {fell[0]['fell_back']}"
    print(line, file=sys.stderr)
