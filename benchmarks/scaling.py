"""Scaling: cost against the number of steps and the model size (random weights, speed only).

Reference DiT-S/2 and DiT-B/2 at a 32x32 latent (and tiny-dit-digits), FORA(2) schedules at 10, 20
and 50 steps: ONNX export time (all graphs), per-step ONNX Runtime latency of full compute and of
the schedule (batch 2), folder size against the weights, and the peak memory of the cache (every
cached site value held between two steps, at batch 2) against the weights and against the
activations of one step (the paper reports under 6% extra memory for PixArt-alpha).

    python benchmarks/scaling.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from harmonica_compile import CacheSchedule
from harmonica_compile.api import cached_for_spec
from harmonica_compile.exporters.onnx import export_onnx
from harmonica_compile.models.registry import load_model
from harmonica_compile.runtime.bench import bench_engine


def cache_bytes(cached, batch: int) -> int:
    """Bytes of the cache between two steps at ``batch``: one value per site output."""
    cm = cached.cacheable
    return sum(t.numel() * t.element_size() for t in cm.example_cache(batch).values())


def activation_bytes(cached, batch: int) -> int:
    """Bytes of every intermediate tensor one full-compute step produces at ``batch`` (an upper bound on
    the step's activation memory)."""
    total = 0
    gm = cached.cacheable.graph_module
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op == "call_function" and isinstance(val, torch.Tensor):
            shape = [batch if not isinstance(d, int) else d for d in val.shape]
            total += int(torch.tensor(shape).prod()) * val.element_size()
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-dit-digits", "DiT-S/2", "DiT-B/2"])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        spec = load_model(name)
        weights = sum(t.numel() * t.element_size() for t in spec.model.state_dict().values())
        for steps in args.steps:
            ts = [float(t) for t in spec.sampler(steps).timesteps]
            schedule = CacheSchedule.fora(spec.cacheable().site_names, steps, 2, ts, model=spec.name)
            cached = cached_for_spec(spec, schedule)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                export_onnx(
                    cached,
                    Path(tmp) / "eng",
                    model_name=spec.name,
                    sampler=spec.sampler(steps),
                    spec=spec,
                    max_batch=4,
                    check=False,
                )
                export_s = time.perf_counter() - t0
                folder = sum(p.stat().st_size for p in (Path(tmp) / "eng").iterdir())
                bench = bench_engine(
                    Path(tmp) / "eng",
                    runtime="ort",
                    images=1,
                    repeat=args.repeat,
                    threads=args.threads,
                    cfg_scale=1.5,
                    write=False,
                )
            per_step_full = bench["full_ms_per_image"] / steps
            per_step_cached = bench["cached_ms_per_image"] / steps
            cb, ab = cache_bytes(cached, 2), activation_bytes(cached, 2)
            row = {
                "model": name,
                "parameters": sum(p.numel() for p in spec.model.parameters()),
                "steps": steps,
                "graphs": cached.num_graphs,
                "export_seconds": round(export_s, 2),
                "ort_ms_per_step_full": round(per_step_full, 3),
                "ort_ms_per_step_cached": round(per_step_cached, 3),
                "real_speedup": bench["real_speedup"],
                "theoretical_speedup": bench["theoretical_speedup"],
                "folder_over_weights": folder / weights,
                "cache_bytes_batch2": cb,
                "cache_over_weights": cb / weights,
                "cache_over_step_activations": cb / ab,
            }
            rows.append(row)
            print(row, flush=True)
    md = [
        "| model | params | steps | graphs | export s | ORT ms/step full / cached | real (theor.) | folder / weights "
        "| cache / weights | cache / activations |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['steps']} | {r['graphs']} | {r['export_seconds']:.1f} | "
            f"{r['ort_ms_per_step_full']:.2f} / {r['ort_ms_per_step_cached']:.2f} | {r['real_speedup']:.2f}x "
            f"({r['theoretical_speedup']:.2f}x) | {r['folder_over_weights']:.3f} | {100 * r['cache_over_weights']:.2f}% "
            f"| {100 * r['cache_over_step_activations']:.1f}% |"
        )
    write_result("scaling", {"rows": rows, "command": "python benchmarks/scaling.py"}, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
