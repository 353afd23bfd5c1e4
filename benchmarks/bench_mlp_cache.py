"""Caching every MLP site: measured speedup against the FLOP-ratio speedup, in torch eager, torch
compiled (inductor) and ONNX Runtime, side by side in one run.

Reference DiT-S/2 at a 32x32 latent, batch 2, random weights. One full-compute step and one step
with every MLP site read from the cache are timed in the same run (round-robin over all six), in
each runtime: the captured graphs eagerly, the same graphs through ``torch.compile`` (as
``CachedModel(compile=True)`` runs them; compile seconds reported apart), and their ONNX export in
ONNX Runtime (CPU provider). Reports ``measured / theoretical`` per runtime (targets: compiled
>= 0.9, and compiled full compute no slower than eager full compute). FLOPs count matmuls,
convolutions and attention (``count_flops``).

    python benchmarks/bench_mlp_cache.py [--threads 2] [--repeat 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import time_interleaved, write_result

import harmonica_compile as hc
from harmonica_compile.cacheable import count_flops
from harmonica_compile.compiling import StepCompiler
from harmonica_compile.exporters.onnx import export_onnx
from harmonica_compile.models import DiT_models
from harmonica_compile.names import INPUT_NAMES
from harmonica_compile.runtime.ort import OrtRunner
from harmonica_compile.sampling.ddim import DDIMSampler


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
    inputs = (x, t, y)
    # A two-step schedule, step 0 full compute and step 1 every MLP cached: graph 0 and graph 1.
    schedule = hc.CacheSchedule([[True] * cm.num_sites, mask], cm.site_names)
    cached = hc.CachedModel(cm, schedule)
    full_gm, mlp_gm = cached.graphs[0], cached.graphs[1]
    full_inputs = list(inputs)
    mlp_inputs = cm.step_inputs(mlp_gm, inputs)
    flops_full = count_flops(full_gm, full_inputs)
    flops_mlp = count_flops(mlp_gm, mlp_inputs)

    compiler = StepCompiler()
    with torch.no_grad():
        compiler.run(0, full_gm, full_inputs)
        compiler.run(1, mlp_gm, mlp_inputs)
    compile_s = {g: r.seconds for (g, _), r in compiler.records.items()}

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_onnx(cached, Path(tmp) / "eng", model_name="DiT-S/2 (random weights)", sampler=DDIMSampler(2))
        export_s = time.perf_counter() - t0
        runner = OrtRunner(Path(tmp) / "eng", threads=args.threads)
        feeds = {}
        for gid, gm, given in ((0, full_gm, full_inputs), (1, mlp_gm, mlp_inputs)):
            by_name = dict(zip(gm.meta[INPUT_NAMES], given, strict=True))
            names = [e["name"] for e in runner._graphs[gid]["inputs"]]
            feeds[gid] = {n: np.ascontiguousarray(by_name[n].numpy()) for n in names}
            runner.session(gid)
        sessions = {gid: runner.session(gid) for gid in feeds}
        with torch.no_grad():
            timings = time_interleaved(
                {
                    "eager_full": lambda: full_gm(*full_inputs),
                    "eager_mlp_cached": lambda: mlp_gm(*mlp_inputs),
                    "compiled_full": lambda: compiler.run(0, full_gm, full_inputs),
                    "compiled_mlp_cached": lambda: compiler.run(1, mlp_gm, mlp_inputs),
                    "ort_full": lambda: sessions[0].run(None, feeds[0]),
                    "ort_mlp_cached": lambda: sessions[1].run(None, feeds[1]),
                    "eager_module": lambda: model(*inputs),
                },
                repeat=args.repeat,
            )
        providers = runner.active_providers
    theoretical = flops_full / flops_mlp
    rows = {}
    for name in ("eager", "compiled", "ort"):
        full_ms, mlp_ms = timings[f"{name}_full"]["median_ms"], timings[f"{name}_mlp_cached"]["median_ms"]
        rows[name] = {
            "full_ms": full_ms,
            "mlp_cached_ms": mlp_ms,
            "measured_speedup": full_ms / mlp_ms,
            "ratio_measured_over_theoretical": full_ms / mlp_ms / theoretical,
        }
    result = {
        "model": "DiT-S/2 (random weights)",
        "latent": [4, 32, 32],
        "batch": args.batch,
        "sites": cm.num_sites,
        "mlp_sites_cached": sum(not m for m in mask),
        "flops_full": flops_full,
        "flops_mlp_cached": flops_mlp,
        "theoretical_speedup": theoretical,
        "runtimes": rows,
        "compiled_full_over_eager_full": rows["eager"]["full_ms"] / rows["compiled"]["full_ms"],
        "compile_seconds": {"full": compile_s.get(0), "mlp_cached": compile_s.get(1)},
        "onnx_export_seconds": export_s,
        "ort_providers": providers,
        "eager_module_ms": timings["eager_module"]["median_ms"],
        "timings": timings,
        "threads": args.threads,
        "torch": torch.__version__,
        "targets": {"compiled_ratio": 0.9, "compiled_full_over_eager_full": 1.0},
    }
    labels = {"eager": "torch eager", "compiled": "torch compiled (inductor)", "ort": "ONNX Runtime (CPU)"}
    md = [
        "| runtime | full compute ms | every MLP cached ms | measured | theoretical | measured / theoretical |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        md.append(
            f"| {labels[name]} | {r['full_ms']:.2f} | {r['mlp_cached_ms']:.2f} | {r['measured_speedup']:.2f}x | "
            f"{theoretical:.2f}x | {r['ratio_measured_over_theoretical']:.2f} |"
        )
    md.append(
        f"\nDiT-S/2, 32x32 latent, batch {args.batch}, {args.threads} threads, {flops_full / 1e9:.2f} / "
        f"{flops_mlp / 1e9:.2f} GFLOPs (matmuls, convolutions, attention). Compiled full compute is "
        f"{result['compiled_full_over_eager_full']:.2f}x eager full compute; compile {compile_s.get(0, 0):.1f} s "
        f"(full) + {compile_s.get(1, 0):.1f} s (MLP cached), not timed above. Targets: compiled ratio >= 0.9, "
        "compiled full no slower than eager full."
    )
    write_result("mlp_cache", result, "\n".join(md))
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
