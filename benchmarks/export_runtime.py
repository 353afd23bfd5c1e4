"""Exporters and runtimes: export time, folder size, and ONNX Runtime speed against torch eager.

For tiny-dit-digits (FORA(2) and, if compare.py has trained one, the HarmoniCa schedule at CUR 0.5)
and a DiT-S/2-sized reference model with random weights (FORA(2)): 20 steps, CUR 0.5.

- export: seconds of ``torch.onnx.export`` of the full model once, against our export of every
  graph of the schedule (one export of the routed graph plus ONNX-level specialization), both
  without the parity gate, and the gate's own seconds;
- size: the ONNX folder against the model's weights;
- speed (ONNX Runtime CPU, torch eager and torch compiled, 2 threads, one run): per-image
  latency of full compute and of the schedule; ``real_speedup / theoretical_speedup`` (targets:
  ORT >= 0.95, compiled >= 0.9) and ORT cached against torch eager cached; the compile seconds of
  the compiled side (every graph of the schedule, and the one full-compute graph), not timed.

    python benchmarks/export_runtime.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

from harmonica_compile import CacheSchedule
from harmonica_compile.api import cached_for_spec
from harmonica_compile.exporters.onnx import export_onnx
from harmonica_compile.models.registry import load_model
from harmonica_compile.runtime.bench import bench_engine
from harmonica_compile.runtime.parity import check_parity


def full_export_seconds(spec) -> float:
    cm = spec.cacheable()
    dim = torch.export.Dim("batch", min=1, max=64)
    dyn = tuple({0: dim} for _ in cm.captured.example_inputs)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        program = torch.onnx.export(
            cm.graph_module,
            tuple(cm.captured.example_inputs),
            dynamo=True,
            opset_version=18,
            dynamic_shapes=dyn,
            optimize=True,
            report=False,
            verbose=False,
        )
        program.save(str(Path(tmp) / "full.onnx"), external_data=True)
        return time.perf_counter() - t0


def run(spec, schedule: CacheSchedule, label: str, images: int, repeat: int, threads: int) -> dict:
    cached = cached_for_spec(spec, schedule)
    weights = sum(t.numel() * t.element_size() for t in spec.model.state_dict().values())
    full_s = full_export_seconds(spec)
    with tempfile.TemporaryDirectory() as tmp:
        eng = Path(tmp) / "eng"
        t0 = time.perf_counter()
        export_onnx(
            cached,
            eng,
            model_name=spec.name,
            sampler=spec.sampler(schedule.num_steps),
            spec=spec,
            max_batch=2 * images,
            check=False,
        )
        ours_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        check_parity(eng, cached, spec=spec, sampler=spec.sampler(schedule.num_steps))
        gate_s = time.perf_counter() - t0
        folder = sum(p.stat().st_size for p in eng.iterdir())
        ort = bench_engine(eng, runtime="ort", images=images, repeat=repeat, threads=threads, write=False)
        eager = bench_engine(eng, runtime="torch", images=images, repeat=repeat, threads=threads, write=False)
        compiled = bench_engine(
            eng, runtime="torch", images=images, repeat=repeat, threads=threads, write=False, compile=True
        )
        graphs = cached.num_graphs
    return {
        "model": spec.name,
        "schedule": label,
        "cur": schedule.cur,
        "graphs": graphs,
        "steps": schedule.num_steps,
        "images": images,
        "model_batch": ort["model_batch"],
        "full_export_seconds": round(full_s, 2),
        "schedule_export_seconds": round(ours_s, 2),
        "export_ratio": ours_s / full_s,
        "parity_gate_seconds": round(gate_s, 2),
        "weights_bytes": weights,
        "folder_bytes": folder,
        "size_ratio": folder / weights,
        "theoretical_speedup": ort["theoretical_speedup"],
        "ort_full_ms_per_image": ort["full_ms_per_image"],
        "ort_cached_ms_per_image": ort["cached_ms_per_image"],
        "ort_real_speedup": ort["real_speedup"],
        "ort_ratio": ort["ratio_real_over_theoretical"],
        "torch_full_ms_per_image": eager["full_ms_per_image"],
        "torch_cached_ms_per_image": eager["cached_ms_per_image"],
        "torch_real_speedup": eager["real_speedup"],
        "torch_ratio": eager["ratio_real_over_theoretical"],
        "ort_cached_over_torch_cached": ort["cached_ms_per_image"] / eager["cached_ms_per_image"],
        "compiled_full_ms_per_image": compiled["full_ms_per_image"],
        "compiled_cached_ms_per_image": compiled["cached_ms_per_image"],
        "compiled_real_speedup": compiled["real_speedup"],
        "compiled_ratio": compiled["ratio_real_over_theoretical"],
        "compile_seconds_schedule": round(compiled["compile_seconds"]["cached"], 1),
        "compile_seconds_full": round(compiled["compile_seconds"]["full"], 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    tiny = load_model("tiny-dit-digits")
    ts = [float(t) for t in tiny.sampler(20).timesteps]
    plans = [(tiny, CacheSchedule.fora(tiny.cacheable().site_names, 20, 2, ts, model=tiny.name), "fora2")]
    learned = RESULTS / "compare_schedules" / "20_harmonica_0.500.json"
    if learned.exists():
        plans.append((tiny, CacheSchedule.load(learned), "harmonica@0.50"))
    small = load_model("DiT-S/2")
    small_ts = [float(t) for t in small.sampler(20).timesteps]
    plans.append((small, CacheSchedule.fora(small.cacheable().site_names, 20, 2, small_ts, model=small.name), "fora2"))
    for spec, schedule, label in plans:
        images = args.images if spec.name == "tiny-dit-digits" else 1
        rows.append(run(spec, schedule, label, images, args.repeat, args.threads))
        print(rows[-1], flush=True)
    md = [
        "| model | schedule | CUR | graphs | export s (full model once / all graphs) | folder / weights | "
        "theoretical | ORT real (ratio) | torch eager real (ratio) | torch compiled real (ratio) | "
        "cached ms/img ORT / eager / compiled | compile s (schedule / full) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['model']} | {r['schedule']} | {r['cur']:.2f} | {r['graphs']} | {r['full_export_seconds']:.1f} / "
            f"{r['schedule_export_seconds']:.1f} ({r['export_ratio']:.2f}x) | {r['size_ratio']:.3f} | "
            f"{r['theoretical_speedup']:.2f}x | {r['ort_real_speedup']:.2f}x ({r['ort_ratio']:.2f}) | "
            f"{r['torch_real_speedup']:.2f}x ({r['torch_ratio']:.2f}) | "
            f"{r['compiled_real_speedup']:.2f}x ({r['compiled_ratio']:.2f}) | {r['ort_cached_ms_per_image']:.2f} / "
            f"{r['torch_cached_ms_per_image']:.2f} / {r['compiled_cached_ms_per_image']:.2f} | "
            f"{r['compile_seconds_schedule']:.0f} / {r['compile_seconds_full']:.0f} |"
        )
    write_result(
        "export_runtime",
        {"rows": rows, "threads": args.threads, "command": "python benchmarks/export_runtime.py"},
        "\n".join(md),
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
