"""The comparison on tiny-dit-digits: full compute, FORA, TaylorSeer, L2C, HarmoniCa, and
HarmoniCa refined by the search on the true final error.

For each step count (10, 20, 50 DDIM steps): full compute; FORA and TaylorSeer (order 1 and 2)
with intervals 2 and 3; L2C and HarmoniCa trained to the CURs of FORA(2) and FORA(3) at that step
count (so every method is compared at the same CUR); and ``harmonica+search``: the HarmoniCa
schedule refined with ``--refine search --forecast auto`` (its starts: that schedule, FORA,
TaylorSeer and the DP schedule; 32 calibration images from seed 1_000_000_009). Quality from the
same 256 evaluation seeds (seed 1_000_000_007, never used in training or search): final-image MSE
and PSNR against full compute, class accuracy and Frechet distance. Speed: theoretical (FLOPs)
and measured, in torch eager and in ONNX Runtime, cached against full compute in the same run.
Writes results/compare.json, results/compare.md and results/compare_pareto.png.

    python benchmarks/compare.py                 # everything (about 2 h on 2 cores)
    python benchmarks/compare.py --steps 20      # the 20-step table only
    python benchmarks/compare.py --reuse         # keep trained and searched schedules from an earlier run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, write_result

from harmonica_compile import CacheSchedule
from harmonica_compile.api import cached_for_spec
from harmonica_compile.evaluation import evaluate_schedule
from harmonica_compile.exporters.onnx import export_onnx
from harmonica_compile.models.registry import load_model
from harmonica_compile.runtime.bench import bench_engine
from harmonica_compile.training import train_schedule
from harmonica_compile.training.search import refine_schedule

SCHEDULES = RESULTS / "compare_schedules"


def fora_cur(steps: int, interval: int) -> float:
    return 1 - len(range(0, steps, interval)) / steps


def iterations_for(steps: int) -> int:
    """About the same training time at every step count (300 iterations at 20 steps)."""
    return max(120, min(600, round(300 * 20 / steps)))


def measure(spec: Any, schedule: CacheSchedule, images: int, repeat: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cached = cached_for_spec(spec, schedule)
        t0 = time.perf_counter()
        export_onnx(
            cached,
            Path(tmp) / "eng",
            model_name=spec.name,
            sampler=spec.sampler(schedule.num_steps),
            spec=spec,
            max_batch=2 * images,
            check=False,
        )
        export_s = time.perf_counter() - t0
        ort = bench_engine(Path(tmp) / "eng", runtime="ort", images=images, repeat=repeat, threads=threads, write=False)
        eager = bench_engine(
            Path(tmp) / "eng", runtime="torch", images=images, repeat=repeat, threads=threads, write=False
        )
    return {
        "ort_speedup": ort["real_speedup"],
        "torch_speedup": eager["real_speedup"],
        "ort_cached_ms_per_image": ort["cached_ms_per_image"],
        "ort_full_ms_per_image": ort["full_ms_per_image"],
        "torch_cached_ms_per_image": eager["cached_ms_per_image"],
        "torch_full_ms_per_image": eager["full_ms_per_image"],
        "export_seconds": export_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--num", type=int, default=256, help="noise seeds for quality (default 256)")
    parser.add_argument("--images", type=int, default=16, help="images per timed sampling run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="reuse schedules trained by an earlier run")
    parser.add_argument("--no-speed", action="store_true", help="quality only")
    parser.add_argument("--evals", type=int, default=300, help="search evaluations per refined schedule")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_model("tiny-dit-digits")
    SCHEDULES.mkdir(parents=True, exist_ok=True)
    previous = json.loads((RESULTS / "compare.json").read_text())["rows"] if (RESULTS / "compare.json").exists() else []
    rows = [r for r in previous if r["steps"] not in args.steps]
    for steps in args.steps:
        sites = spec.cacheable().site_names
        ts = [float(t) for t in spec.sampler(steps).timesteps]
        targets = [fora_cur(steps, 2), fora_cur(steps, 3)]
        plan: list[tuple[str, Any]] = [("full", CacheSchedule.all_compute(sites, steps, ts, model=spec.name))]
        for n in (2, 3):
            plan.append((f"fora{n}", CacheSchedule.fora(sites, steps, n, ts, model=spec.name)))
            for order in (1, 2):
                plan.append(
                    (f"taylorseer{order}-{n}", CacheSchedule.taylorseer(sites, steps, n, order, ts, model=spec.name))
                )
        for method in ("l2c", "harmonica", "harmonica+search"):
            for target in targets:
                plan.append((method, target))
        trained: dict[tuple[str, float], CacheSchedule] = {}
        for name, item in plan:
            train_s = 0.0
            if isinstance(item, float):
                path = SCHEDULES / f"{steps}_{name}_{item:.3f}.json"
                if args.reuse and path.exists():
                    schedule = CacheSchedule.load(path)
                    train_s = float(schedule.meta.get("train_seconds", 0.0))
                elif name == "harmonica+search":
                    schedule, train_s = searched(spec, trained[("harmonica", item)], steps, ts, item, args.evals)
                    schedule.save(path)
                else:
                    result = train_schedule(
                        spec,
                        method=name,
                        num_steps=steps,
                        target_cur=item,
                        iterations=iterations_for(steps),
                        progress=True,
                    )
                    train_s = result.train_seconds
                    schedule = result.schedule.with_meta(train_seconds=train_s)
                    schedule.save(path)
                trained[(name, item)] = schedule
            else:
                schedule = item
            quality = evaluate_schedule(spec, schedule, num=args.num)
            if name == "full":
                quality["psnr_db"] = None  # identical images: infinite PSNR, which JSON cannot hold
            row = {
                "steps": steps,
                "method": _family(name),
                "label": name if not isinstance(item, float) else f"{name}@{item:.2f}",
                "cur": schedule.cur,
                "theoretical_speedup": quality["theoretical_speedup"],
                "final_mse": quality["final_mse"],
                "psnr_db": quality["psnr_db"],
                "accuracy": quality.get("accuracy"),
                "frechet": quality.get("frechet"),
                "train_seconds": round(train_s, 1),
                "iterations": iterations_for(steps) if isinstance(item, float) else 0,
                "branches": sorted({k for r in schedule.branches for k in r} - {"compute"}),
                "search_start": schedule.meta.get("start"),
                "calibration_mse": schedule.meta.get("calibration_error"),
            }
            if not args.no_speed and name != "full":
                row.update(measure(spec, schedule, args.images, args.repeat, args.threads))
            print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            rows.append(row)
    rows.sort(key=lambda r: (r["steps"], r["cur"], r["method"]))
    write_result(
        "compare",
        {
            "rows": rows,
            "num": args.num,
            "images": args.images,
            "repeat": args.repeat,
            "command": "python benchmarks/compare.py " + " ".join(argv or sys.argv[1:]),
        },
        markdown=to_markdown(rows),
    )
    plot(rows)
    print(to_markdown(rows))


def _family(name: str) -> str:
    return name.split("-")[0].rstrip("0123456789") if not name.startswith("harmonica+") else name


def searched(
    spec: Any, harmonica: CacheSchedule, steps: int, ts: list[float], target: float, evals: int
) -> tuple[CacheSchedule, float]:
    """The trained HarmoniCa schedule refined on the true final error (what --refine search does)."""
    sites = harmonica.sites
    interval = 2 if abs(target - fora_cur(steps, 2)) < 1e-9 else 3
    starts = {
        "harmonica": harmonica,
        "fora": CacheSchedule.fora(sites, steps, interval, ts),
        "taylorseer1": CacheSchedule.taylorseer(sites, steps, interval, 1, ts),
        "taylorseer2": CacheSchedule.taylorseer(sites, steps, interval, 2, ts),
    }
    t0 = time.perf_counter()
    found = refine_schedule(
        spec, starts, target_cur=target, forecast="auto", evaluations=evals, calibration_seed=1_000_000_009
    )
    seconds = time.perf_counter() - t0 + float(harmonica.meta.get("train_seconds", 0.0))
    schedule = found.schedule.with_meta(model=spec.name, method="harmonica+search", train_seconds=seconds)
    return schedule, seconds


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| steps | method | CUR | theoretical | ORT measured | torch measured | final MSE | PSNR dB | accuracy "
        "| Frechet | train s |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        psnr = "inf" if r["method"] == "full" else _fmt(r["psnr_db"], ".2f")
        lines.append(
            f"| {r['steps']} | {r['label']} | {r['cur']:.2f} | {r['theoretical_speedup']:.2f}x | "
            f"{_fmt(r.get('ort_speedup'), '.2f')} | {_fmt(r.get('torch_speedup'), '.2f')} | "
            f"{_fmt(r['final_mse'], '.2e')} | {psnr} | {_fmt(r['accuracy'], '.3f')} | {_fmt(r['frechet'], '.2f')} | "
            f"{r['train_seconds']:.0f} |"
        )
    return head + "\n".join(lines)


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({r["steps"] for r in rows})
    measured = all(r.get("ort_speedup") for r in rows if r["method"] != "full")
    what = "measured speedup, ONNX Runtime (x)" if measured else "theoretical speedup, FLOPs (x)"
    fig, axes = plt.subplots(1, len(steps), figsize=(5 * len(steps), 4), squeeze=False)
    for ax, n in zip(axes[0], steps, strict=True):
        for method, marker in (
            ("fora", "s"),
            ("taylorseer", "D"),
            ("l2c", "^"),
            ("harmonica", "o"),
            ("harmonica+search", "*"),
        ):
            pts = sorted(
                (r.get("ort_speedup") or r["theoretical_speedup"], r["psnr_db"])
                for r in rows
                if r["steps"] == n and r["method"] == method
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=method)
        ax.set_title(f"{n} DDIM steps")
        ax.set_xlabel(what)
        ax.set_ylabel("PSNR vs full compute (dB, higher is better)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"tiny-dit-digits: quality against {what.split(',')[0]} (up and right is better)")
    fig.tight_layout()
    fig.savefig(RESULTS / "compare_pareto.png", dpi=120)


if __name__ == "__main__":
    environment()
    main()
