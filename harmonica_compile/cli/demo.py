"""``harmonica-compile demo``: train a HarmoniCa schedule for the default model, export it, benchmark
it and compare samples, through the same library workflows the other commands use."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import DEFAULT_MODEL, add_threads_arg, finite_float, positive_int, set_threads


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="train, export and benchmark a schedule for the default model, end to end")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--target-cur", type=finite_float, default=0.5)
    p.add_argument("--iterations", type=positive_int, default=300)
    p.add_argument("--num", type=positive_int, default=256, help="samples for the quality report")
    p.add_argument("--bench-images", type=positive_int, default=16)
    p.add_argument("--repeat", type=positive_int, default=5)
    p.add_argument("--seed", type=int, default=0)
    add_threads_arg(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from ..io import atomic_write_json
    from ..metrics import DigitsEvaluator, fidelity
    from ..models.registry import load_model
    from ..plots import save_side_by_side
    from ..runtime.bench import bench_engine
    from ..sampling import generate
    from ..training import TrainConfig
    from ..workflows import export_schedule, optimize_to_folder

    threads = set_threads(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    spec = load_model(args.model)  # captured once, shared by every stage below
    print(f"[1/4] training a HarmoniCa schedule: {args.model}, {args.steps} steps, target CUR {args.target_cur}")
    config = TrainConfig(
        method="harmonica", num_steps=args.steps, target_cur=args.target_cur, iterations=args.iterations
    )
    report = optimize_to_folder(
        spec, out / "schedule", config=config, overwrite=True, eval_num=args.num, progress=not args.quiet
    )
    print("[2/4] exporting one ONNX graph per distinct step mask (with the parity gate)")
    t0 = time.perf_counter()
    manifest = export_schedule(out / "schedule", out / "onnx", model=spec, progress=not args.quiet)
    export_s = time.perf_counter() - t0
    print("[3/4] benchmarking cached against full compute (same run)")
    bench = {
        rt: bench_engine(
            out / "onnx",
            runtime=rt,
            images=args.bench_images,
            repeat=args.repeat,
            threads=threads,
            progress=not args.quiet,
        )
        for rt in ("ort", "torch")
    }
    print("[4/4] samples from the same noise: full compute and cached, side by side")
    cached = spec.cached(str(out / "schedule" / "schedule.json"))
    full, labels = generate(spec, num=20, steps=args.steps, seed=args.seed, progress=not args.quiet)
    fast, _ = generate(
        spec,
        spec.denoiser(cached),
        num=20,
        steps=args.steps,
        seed=args.seed,
        progress=not args.quiet,
        progress_label="cached",
    )
    save_side_by_side(
        {"full compute": full, f"HarmoniCa, CUR {report['cur']:.2f}": fast},
        out / "samples.png",
        ncol=10,
        suptitle=f"{spec.name}: {args.steps} DDIM steps, same noise and labels",
    )
    summary = {
        "model": spec.name,
        "steps": args.steps,
        "cur": report["cur"],
        "theoretical_speedup": report.get("theoretical_speedup"),
        "ort_real_speedup": bench["ort"]["real_speedup"],
        "torch_real_speedup": bench["torch"]["real_speedup"],
        "ort_cached_ms_per_image": bench["ort"]["cached_ms_per_image"],
        "torch_cached_ms_per_image": bench["torch"]["cached_ms_per_image"],
        "final_mse": report.get("final_mse"),
        "psnr_db": report.get("psnr_db"),
        "accuracy_cached": report.get("accuracy"),
        "accuracy_full": report.get("accuracy_full"),
        "frechet_cached": report.get("frechet"),
        "frechet_full": report.get("frechet_full"),
        "train_seconds": report["train_seconds"],
        "threads": threads,
        "export_seconds": round(export_s, 2),
        "graphs": len(manifest.graphs),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "sample_psnr_db_20": fidelity(fast, full)["psnr_db"],
    }
    if spec.evaluator == "digits":
        summary["sample_accuracy_20"] = DigitsEvaluator().accuracy(fast, labels)
    atomic_write_json(out / "summary.json", summary)
    rows = [
        ("cache usage ratio (CUR)", f"{summary['cur']:.2f}"),
        ("theoretical speedup (FLOPs)", f"{summary['theoretical_speedup']:.2f}x"),
        ("measured speedup, ONNX Runtime", f"{summary['ort_real_speedup']:.2f}x"),
        ("measured speedup, torch eager", f"{summary['torch_real_speedup']:.2f}x"),
        (
            "ms per image, ORT cached / torch cached",
            f"{summary['ort_cached_ms_per_image']:.2f} / {summary['torch_cached_ms_per_image']:.2f}",
        ),
        ("final-image PSNR vs full compute", f"{summary['psnr_db']} dB (MSE {summary['final_mse']:.2e})"),
    ]
    if summary.get("accuracy_cached") is not None:
        acc = f"{summary['accuracy_cached']:.3f} / {summary['accuracy_full']:.3f}"
        fd = f"{summary['frechet_cached']:.2f} / {summary['frechet_full']:.2f}"
        rows += [("digit accuracy, cached / full", acc), ("Frechet distance, cached / full", fd)]
    rows.append(
        (
            "train / export / total seconds",
            f"{summary['train_seconds']:.0f} / {summary['export_seconds']:.0f} / {summary['total_seconds']:.0f}",
        )
    )
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    print(f"\nwrote {out}/summary.json, samples.png, schedule/ (schedule.json, schedule.png, report.json), onnx/")
    return 0
