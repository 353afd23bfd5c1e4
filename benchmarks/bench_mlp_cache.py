"""Caching every MLP site: measured speedup against the FLOP-ratio speedup (torch eager).

Reference DiT-S/2 at a 32x32 latent, batch 2, random weights. One full-compute step and one step
with every MLP site read from the cache are timed in the same run (round-robin); the script
reports ``measured / theoretical`` (target >= 0.9).

    python benchmarks/bench_mlp_cache.py [--threads 2] [--repeat 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_interleaved, write_result

import harmonica_compile as hc
from harmonica_compile.cacheable import count_flops
from harmonica_compile.models import DiT_models


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DiT_models["DiT-S/2"](input_size=32, num_classes=1000).eval()
    for p in model.parameters():  # random weights: zero-initialised gates would make caching free
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(args.batch, 4, 32, 32)
    t = torch.full((args.batch,), 500)
    y = torch.randint(0, 1000, (args.batch,))
    cm = hc.prepare(model, (x, t, y))
    mask = [s.kind != "mlp" for s in cm.sites]
    full_gm = cm.graph_module
    mlp_gm = cm.specialize(mask)
    inputs = (x, t, y)
    mlp_inputs = cm.step_inputs(mlp_gm, inputs)
    flops_full = count_flops(full_gm, inputs)
    flops_mlp = count_flops(mlp_gm, mlp_inputs)
    with torch.no_grad():
        timings = time_interleaved(
            {
                "eager": lambda: model(*inputs),
                "full": lambda: full_gm(*inputs),
                "mlp_cached": lambda: mlp_gm(*mlp_inputs),
            },
            repeat=args.repeat,
        )
    theoretical = flops_full / flops_mlp
    measured = timings["full"]["median_ms"] / timings["mlp_cached"]["median_ms"]
    result = {
        "model": "DiT-S/2 (random weights)",
        "latent": [4, 32, 32],
        "batch": args.batch,
        "sites": cm.num_sites,
        "mlp_sites_cached": sum(not m for m in mask),
        "flops_full": flops_full,
        "flops_mlp_cached": flops_mlp,
        "theoretical_speedup": theoretical,
        "measured_speedup": measured,
        "ratio_measured_over_theoretical": measured / theoretical,
        "eager_over_captured_full": timings["eager"]["median_ms"] / timings["full"]["median_ms"],
        "timings": timings,
        "threads": args.threads,
        "target_ratio": 0.9,
    }
    md = (
        "| step | median ms | GFLOPs |\n|---|---|---|\n"
        f"| eager module | {timings['eager']['median_ms']:.2f} | {flops_full / 1e9:.2f} |\n"
        f"| captured, full compute | {timings['full']['median_ms']:.2f} | {flops_full / 1e9:.2f} |\n"
        f"| every MLP cached | {timings['mlp_cached']['median_ms']:.2f} | {flops_mlp / 1e9:.2f} |\n\n"
        f"Theoretical speedup {theoretical:.2f}x, measured {measured:.2f}x, ratio {measured / theoretical:.2f} "
        f"(target >= 0.9); DiT-S/2, 32x32 latent, batch {args.batch}, {args.threads} threads.\n"
    )
    write_result("mlp_cache", result, md)
    print(md)
    return result


if __name__ == "__main__":
    main()
