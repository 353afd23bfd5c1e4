"""``dtype=``: images of bf16/fp16 token matmuls against fp32, and what they cost here, in one run.

The shipped tiny-dit-digits, 20 DDIM steps, 8 images, guidance on (its defaults): full compute and
the FORA(2) schedule (and the learned HarmoniCa@0.50 one when compare.py has trained it), each as
``CachedModel(dtype=...)`` for fp32, bf16 and fp16 (norms, softmax, adaLN and caches fp32; see
``harmonica_compile/passes/lower_precision.py``). Reports the max and mean absolute image
difference (images in [-1, 1]) against the fp32 run of the same schedule and against fp32 full
compute, and the wall time of a sampling run (round-robin, one run). On a CPU without bf16 units
the lowered runs are slower: the numbers here are about images; speed belongs to the GPU check.

Tolerance: each lowered op is within its own rounding bound (``tests/passes/test_lower_precision.py``);
20 steps of a sampler amplify those differences in ways no first-order bound follows, so the image
difference is measured and stated, not bounded: it is set against the schedule's own difference
from full compute, which is what a user already accepts by caching.

    python benchmarks/bench_dtype.py [--images 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, time_interleaved, write_result

from harmonica_compile import CacheSchedule
from harmonica_compile.models.registry import load_model
from harmonica_compile.sampling import generate

DTYPES = ("fp32", "bf16", "fp16")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_model("tiny-dit-digits")
    steps = spec.default_steps
    timesteps = [float(t) for t in spec.sampler(steps).timesteps]
    sites = spec.cacheable().site_names
    schedules = {
        "full": CacheSchedule.all_compute(sites, steps, timesteps),
        "fora2": CacheSchedule.fora(sites, steps, 2, timesteps, model=spec.name),
    }
    learned = RESULTS / "compare_schedules" / f"{steps}_harmonica_0.500.json"
    if learned.exists():
        schedules["harmonica@0.50"] = CacheSchedule.load(learned)

    def run(label: str, dtype: str):
        denoise = spec.denoiser(spec.cached(schedules[label], dtype=dtype))
        return lambda: generate(spec, denoise, num=args.images, steps=steps, seed=0, batch_size=args.images)[0]

    images = {(label, dtype): run(label, dtype)() for label in schedules for dtype in DTYPES}
    timings = time_interleaved(
        {f"{label}/{dtype}": run(label, dtype) for label in schedules for dtype in DTYPES},
        warmup=0,
        repeat=args.repeat,
    )
    rows = []
    for (label, dtype), img in images.items():
        same = (img - images[(label, "fp32")]).abs()
        full = (img - images[("full", "fp32")]).abs()
        rows.append(
            {
                "schedule": label,
                "cur": round(schedules[label].cur, 3),
                "dtype": dtype,
                "max_abs_vs_fp32_same_schedule": float(same.max()),
                "mean_abs_vs_fp32_same_schedule": float(same.mean()),
                "max_abs_vs_fp32_full": float(full.max()),
                "mean_abs_vs_fp32_full": float(full.mean()),
                "run_ms": round(timings[f"{label}/{dtype}"]["median_ms"], 1),
            }
        )
    lines = [
        "| schedule | CUR | dtype | vs fp32, same schedule: max / mean abs | vs fp32 full compute: max / mean abs "
        "| run ms (CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['schedule']} | {r['cur']:.2f} | {r['dtype']} | {r['max_abs_vs_fp32_same_schedule']:.4f} / "
            f"{r['mean_abs_vs_fp32_same_schedule']:.5f} | {r['max_abs_vs_fp32_full']:.4f} / "
            f"{r['mean_abs_vs_fp32_full']:.5f} | {r['run_ms']:.0f} |"
        )
    lines += [
        "",
        f"tiny-dit-digits, {steps} DDIM steps, {args.images} images (guidance on), images in [-1, 1], "
        f"{args.threads} threads, median of {args.repeat} round-robin runs. bf16/fp16: token matmuls "
        "(linears, convolutions, attention) in that dtype; norms, softmax, adaLN and caches fp32 (`dtype=`).",
    ]
    path = write_result(
        "dtype", {"images": args.images, "steps": steps, "threads": args.threads, "rows": rows}, "\n".join(lines)
    )
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
